"""Trains the visual base model alone on the base partition; tests it on the test partition.

python -m emojax.main --config=configs/visual.py --workdir=DIR --config.data.dir=TFRECORDS
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.models = ('visual',)
  return config
