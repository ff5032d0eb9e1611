"""Trains and evaluates emojax: `python -m emojax.main --config=configs/stack.py --workdir=DIR`.

Flags only; everything else is in `emojax.experiment`. Examples:

  python -m emojax.main --config=configs/stack.py --workdir=/tmp/run --config.data.dir=/data/tfrecords
  python -m emojax.main --config=configs/stack.py:smoke --workdir=/tmp/smoke --config.data.dir=...
  python -m emojax.main --config=configs/stack.py --workdir=/tmp/run --config.data.dir=... --config.mode=eval

Every field of the config can be overridden as --config.FIELD=VALUE (e.g. --config.data.protocol=actor);
`--help` lists them with their defaults, and configs/default.py explains each.

Multi-host: start the same command on every host with `--multihost`; it calls
`jax.distributed.initialize()`, which finds the coordinator, the number of processes and this
process's id on Cloud TPU, SLURM and Open MPI (elsewhere set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every process reads the whole (small) dataset and feeds
its slice of each global batch; process 0 writes the reports and takes every decision that
depends on files or on the clock, which the others follow. CPU processes need nothing more:
jax 0.10.2 gives a distributed CPU client gloo collectives over TCP by default
(`jax_cpu_collectives_implementation`), which is how tests/test_multihost.py runs two
processes on one machine.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from emojax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events, features and report.json.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (one process per host).')
config_flags.DEFINE_config_file(
  'config', None, 'Training configuration file (e.g. configs/stack.py).', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed(environ) -> None:
  """`jax.distributed.initialize()`, told the job's layout by JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.

  jax finds the layout itself on Cloud TPU, SLURM and Open MPI; elsewhere these variables
  give it, and jax 0.10.2 reads only the first of them on its own.
  """
  layout = {}
  for variable, argument, kind in (
    ('JAX_COORDINATOR_ADDRESS', 'coordinator_address', str),
    ('JAX_NUM_PROCESSES', 'num_processes', int),
    ('JAX_PROCESS_ID', 'process_id', int),
  ):
    if environ.get(variable):
      try:
        layout[argument] = kind(environ[variable])
      except ValueError:
        cli.fail(f'{variable}={environ[variable]!r} is not a whole number: set it to the {argument.replace("_", " ")}.')
  jax.distributed.initialize(**layout)


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments.
  cli.filter_start_up_noise()
  cli.hide_gpus_from_tensorflow()
  # Imported here, after TensorFlow (which it imports through clu) started with its noise filtered,
  # and so that a mistyped flag is reported before seconds of imports.
  from emojax import experiment

  if FLAGS.multihost:
    initialize_distributed(os.environ)
  logging.info('JAX process %d of %d; devices: %s', jax.process_index(), jax.process_count(), jax.devices())
  try:
    experiment.run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as error:
    # Our checks speak in one sentence; the traceback stays in the log at --verbosity=1.
    logging.debug('Stopped by an error.', exc_info=True)
    cli.fail(str(error))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
