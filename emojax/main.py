"""Trains and evaluates emojax: `python -m emojax.main --config=configs/stack.py --workdir=DIR`.

Flags only; everything else is in `emojax.experiment`. Examples:

  python -m emojax.main --config=configs/stack.py --workdir=/tmp/run --config.data.dir=/data/tfrecords
  python -m emojax.main --config=configs/stack.py:smoke --workdir=/tmp/smoke --config.data.dir=...
  python -m emojax.main --config=configs/stack.py --workdir=/tmp/run --config.data.dir=... --config.mode=eval

Multi-host: start the same command on every host with `--multihost`; it calls
`jax.distributed.initialize()` with no arguments, which finds the coordinator, the number of
processes and this process's id on Cloud TPU, SLURM and Open MPI (elsewhere set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every process reads the whole
(small) dataset and feeds its slice of each global batch; process 0 writes the reports.
"""

import logging as std_logging
import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from emojax import experiment

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events, features and report.json.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (one process per host).')
config_flags.DEFINE_config_file(
  'config', None, 'Training configuration file (e.g. configs/stack.py).', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops orbax's INFO lines (a dozen per checkpoint save) so our own per-epoch lines stay readable."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  logging.get_absl_handler().addFilter(_OrbaxInfoFilter())
  # TensorFlow only parses records; without this it would reserve GPU memory JAX needs.
  tf.config.set_visible_devices([], 'GPU')
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info('JAX process %d of %d; devices: %s', jax.process_index(), jax.process_count(), jax.devices())
  try:
    experiment.run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as error:
    # Our checks speak in one sentence; the traceback stays in the log at --verbosity=1.
    logging.debug('Stopped by an error.', exc_info=True)
    print(f'emojax: error: {error}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
