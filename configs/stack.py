"""The thesis's system: audio MLP and visual LSTM on the base partition, stacker on the stack partition.

python -m emojax.main --config=configs/stack.py --workdir=DIR --config.data.dir=TFRECORDS
python -m emojax.main --config=configs/stack.py:smoke ...   # a few epochs of small models
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.models = ('audio', 'visual', 'stacker')
  return config
