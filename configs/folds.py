"""Subject-independent cross-validation of the whole stack: EmoBox's six actor folds x 3 seeds.

python -m emojax.main --config=configs/folds.py --workdir=DIR --config.data.dir=TFRECORDS

Every fold's test actors are never seen in training; the other actors are split, by actor
and gender-balanced, into base (2/3) and stack (1/3) partitions. All 18 members of a stage
(6 folds x 3 seeds) train together in one compiled program. Overrides:
  --config.data.classes=ravdess8   8 classes (calm kept; needs TFRecords built with --include_calm)
  --config.data.protocol=loso      leave one actor out: 24 folds
  --config.data.protocol=random_folds --config.data.num_folds=5   the thesis' random split, 5 times
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.models = ('audio', 'visual', 'stacker')
  config.data.protocol = 'actor_folds'
  config.seeds = (0, 1, 2)
  return config
