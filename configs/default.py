"""Shared base config: data, partitions, the three models, Adamax, the loop.

`configs/stack.py`, `configs/audio.py` and `configs/visual.py` import this and
change a few fields. Every field can be overridden on the command line, e.g.
`--config.data.dir=/data/ravdess-tfrecords --config.data.protocol=actor`.

`get_config('smoke')` (as `--config=configs/stack.py:smoke`) shrinks the run
to a few epochs of small models, for tests on a laptop CPU; `get_config('demo')`
keeps the thesis' model sizes but caps the epochs, for `./launch.sh demo`.
Neither gives numbers worth reporting.
"""

import ml_collections

from emojax import partitions, schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the base config; `arg='smoke'` gives the tiny variant."""
  config = ml_collections.ConfigDict()

  # Which models to train, in stage order; the stacker needs both base models.
  config.models = ('audio', 'visual', 'stacker')
  config.mode = 'train'  # 'train' | 'eval' (restore best checkpoints, rewrite report.json).
  config.seed = 0  # Draws the partitions; also the training seed when `seeds` is empty.
  # Training seeds (initial weights, dropout, batch order): each fold is trained once per
  # seed, all in one compiled program. Empty: just `seed`.
  config.seeds = ()

  config.data = ml_collections.ConfigDict()
  config.data.dir = ml_collections.config_dict.placeholder(str)  # Shards + dataset_info.json.
  # What the data must have been written with; checked against dataset_info.json.
  config.data.schema_version = schema.SCHEMA_VERSION
  config.data.feature_dims = ml_collections.ConfigDict(dict(schema.FEATURE_DIMS))
  # 'thesis7' (calm dropped, as the thesis) or 'ravdess8' (calm kept, as most later papers).
  config.data.classes = 'thesis7'
  # 'random': stratified by emotion, as the thesis (actors shared across partitions).
  # 'actor': whole actors to each partition, balanced by gender (unseen people at test).
  # 'actor_folds', 'loso', 'random_folds': k-fold cross-validation (see emojax/partitions.py).
  config.data.protocol = 'random'
  config.data.fractions = (0.5, 0.25, 0.25)  # base / stack / test ('random').
  config.data.actor_split = (12, 6, 6)  # Actors for base / stack / test ('actor').
  config.data.folds = partitions.EMOBOX_FOLDS  # Test actors of each fold ('actor_folds').
  config.data.num_folds = 5  # 'random_folds'.
  # In the fold protocols, the share of the non-test actors (clips for 'random_folds') that
  # trains the stacker; the rest trains the base models.
  config.data.stack_fraction = 1 / 3
  config.data.only_folds = ()  # Fold indices to run (empty: all), e.g. to spread folds over machines.
  # Taken from each training partition (base, stack) for early stopping: this fraction of its
  # clips, stratified by emotion, or of its actors with val_by_actor.
  config.data.val_fraction = 0.15
  config.data.val_by_actor = False
  # RAVDESS clips are at most ~5.3 s: 240 frames at 45 fps. Longer clips are cut (logged).
  config.data.max_frames = 256
  # Each batch's time axis is cut to its longest clip rounded up to this: few recompiles.
  config.data.time_bucket = 32
  # > 0: training batches are cut from length-sorted chunks of this many batches, so the LSTM
  # steps through less padding (faster); 0: random batches, as Keras' fit (the thesis).
  config.data.length_chunk = 0
  # How embeddings (and the stacker's inputs) are scaled, with statistics of each stage's
  # training partition only: 'none' (raw, as the thesis), 'global' (one mean and std per
  # stream, which keeps the dimensions' relative scale) or 'per_dim' (a z-score per dimension).
  config.data.normalize = 'none'

  config.model = ml_collections.ConfigDict()
  config.model.audio = ml_collections.ConfigDict()
  config.model.audio.hidden_sizes = (512, 256)  # Thesis Table 1.
  config.model.audio.dropout_rate = 0.5
  config.model.audio.num_audio_frames = 5  # VGGish rows used: 5 x 0.96 s.
  config.model.visual = ml_collections.ConfigDict()
  config.model.visual.lstm_sizes = (200, 100)
  config.model.visual.dropout_rate = 0.0  # None in the thesis.
  config.model.stacker = ml_collections.ConfigDict()
  config.model.stacker.hidden_sizes = (256,)
  config.model.stacker.dropout_rate = 0.5

  # Keras Adamax defaults, as the thesis.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-7

  config.batch_size = 32  # Per member, global; must be divisible by the devices of the data axis.
  config.num_epochs = 200
  config.patience = 20  # Epochs without a lower validation loss before stopping.
  # The latest state (best parameters included) is saved at most this often, and at the end
  # of a stage; a killed run replays the epochs since, exactly.
  config.checkpoint_every_secs = 30.0

  # Devices: a ('members', 'data') mesh; the members of a stage can be split over devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.member_shards = 1
  # Members that stopped early leave the compiled steps: an epoch runs only the active ones
  # (their count rounded up to a power of two: a few recompiles per stage). The same results up
  # to float rounding, without the arithmetic of stopped members, which on a CPU cost as much
  # as training ones.
  config.compact_stopped_members = True

  # Logging.
  config.log_every_secs = 60.0  # steps/s from clu's ReportProgress.

  if arg == 'smoke':
    # Minutes on a laptop CPU; the higher learning rate lets small models learn in few epochs.
    config.num_epochs = 12
    config.patience = 4
    config.batch_size = 16
    config.optimizer.learning_rate = 3e-3
    config.model.audio.hidden_sizes = (64, 32)
    config.model.visual.lstm_sizes = (32, 16)
    config.model.stacker.hidden_sizes = (32,)
    config.log_every_secs = 5.0
  elif arg == 'demo':
    # The thesis' model sizes on the demo's few hundred synthetic clips: a few minutes on 2 CPUs.
    # The demo's untrained stand-in extractors give embeddings whose differences between clips
    # are tiny next to their common offset: only a per-dimension z-score makes them learnable.
    config.data.normalize = 'per_dim'
    config.num_epochs = 60
    config.patience = 8
    config.log_every_secs = 10.0
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}: use none, "smoke" or "demo".')
  return config
