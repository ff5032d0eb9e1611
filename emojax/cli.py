"""What makes `python -m emojax.main` pleasant: one-line flag errors, `--help`, a quiet start-up.

`emojax.main` defines the flags and calls one function; the rest of the command line lives here:
  - `parse_flags`, the flag parser for `app.run(main, flags_parser=parse_flags)`: a mistyped
    config file, config field or value is one line on stderr naming it and the nearest valid
    choice (exit status 1) instead of ml_collections' traceback, and `--help` exits 0 and
    lists every config field with its default.
  - `filter_start_up_noise` and `hide_gpus_from_tensorflow`: on a machine without GPU drivers,
    importing TensorFlow prints a dozen native lines (oneDNN, CUDA stubs, a failed cuInit),
    JAX logs that it found no libtpu, and orbax warns each time a checkpoint is opened
    read-only, which eval does on purpose. Those lines, matched exactly, are dropped; every
    other line, real warnings included, still reaches stderr.
"""

import contextlib
import difflib
import glob
import logging as std_logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import flags
from absl import logging as absl_logging

CONFIG_FLAG = 'config'
CONFIG_DOCS = 'configs/default.py'
_HELP_ARGUMENTS = ('--help', '-help', '--helpshort', '-helpshort', '-?', '-h')
_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def fail(message: str) -> NoReturn:
  """Prints `emojax: error: message` on stderr and exits with status 1."""
  print(f'emojax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


# ----------------------------------------------------------------------------- flags


def parse_flags(argv: list[str]) -> list[str]:
  """Parses `flags.FLAGS` from `argv` as absl does, with one-line errors for the user's mistakes.

  Errors that a bug in a config file raises (not a mistyped path, field or value) keep
  their traceback.

  Returns:
    `argv[:1]`: main takes no positional arguments.
  """
  if any(argument in _HELP_ARGUMENTS for argument in argv[1:]):
    print(help_text())
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:
    fail(_diagnose(argv) or _describe_flag_error(error, argv))
  except (AttributeError, KeyError, OSError):
    # ml_collections raises these, not flags.Error, for an override of a field the config lacks.
    message = _diagnose(argv)
    if message is None:
      raise
    fail(message)
  config = flags.FLAGS[CONFIG_FLAG].value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers an unreadable config file's error to the first use of the config.
    fail(_diagnose(argv) or _load_error(config))
  if len(remaining) > 1:
    fail(f'unexpected arguments {remaining[1:]}: every setting is a --flag (see --help).')
  return remaining[:1]


def config_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every field of `config` as a dotted name ('data', 'data.protocol', ...), depth first."""
  fields = []
  for key, value in config.items():
    name = f'{prefix}{key}'
    fields.append(name)
    if isinstance(value, ml_collections.ConfigDict):
      fields += config_fields(value, f'{name}.')
  return fields


def unknown_field_message(config: ml_collections.ConfigDict, field: str) -> str | None:
  """None when `config` has the dotted `field`; else the error naming the nearest field."""
  node = config
  for part in field.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      break
    node = node[part]
  else:
    return None
  nearest = difflib.get_close_matches(field, config_fields(config), n=1)
  hint = f"did you mean '{nearest[0]}'?" if nearest else f'--help lists the fields, {CONFIG_DOCS} documents them.'
  return f"config has no field '{field}'; {hint}"


def missing_config_file_message(path: str) -> str:
  """The error for a `--config` path that is not a file, naming the nearest config file."""
  directory = os.path.dirname(path)
  if os.path.isdir(directory or '.'):
    candidates = [os.path.join(directory, os.path.basename(p)) for p in glob.glob(os.path.join(directory, '*.py'))]
  else:  # A mistyped directory: look among emojax's own configs.
    candidates = [os.path.relpath(p) for p in glob.glob(os.path.join(_CONFIGS_DIR, '*.py'))]
  candidates = sorted(c for c in candidates if not os.path.basename(c).startswith('_'))
  nearest = difflib.get_close_matches(path, candidates, n=1, cutoff=0.5)
  if nearest:
    return f"config file '{path}' does not exist; did you mean '{nearest[0]}'?"
  return f"config file '{path}' does not exist; emojax's config files are in {os.path.relpath(_CONFIGS_DIR)}."


def help_text() -> str:
  """Usage, the flags of the main module, and every config field with its default."""
  from configs import default  # Only --help needs it.

  main_module = sys.modules.get('__main__')
  lines = [(getattr(main_module, '__doc__', None) or '').strip(), '', flags.FLAGS.main_module_help(), '']
  lines += [
    f'Config fields and their defaults in {CONFIG_DOCS}, which explains each (configs/stack.py, audio.py',
    'and visual.py set `models`; the argument smoke or demo, as in stack.py:smoke, shrinks the run).',
    'Override any with --config.FIELD=VALUE:',
  ]

  def add(config, prefix=''):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        add(value, f'{prefix}{key}.')
      else:
        lines.append(f'  {prefix}{key} = {value!r}')

  add(default.get_config())
  return '\n'.join(lines)


def _config_argument(argv: Sequence[str]) -> str | None:
  """The value of the last `--config` (`--config=X` or `--config X`) in `argv`, as absl reads it."""
  value = None
  for index, argument in enumerate(argv[1:], start=1):
    match = re.fullmatch(rf'--?{CONFIG_FLAG}(?:=(.*))?', argument, re.DOTALL)
    if match:
      value = match.group(1) if match.group(1) is not None else (argv[index + 1] if index + 1 < len(argv) else None)
  return value


def _overridden_fields(argv: Sequence[str]) -> list[str]:
  """The dotted fields of every `--config.FIELD[=VALUE]` / `--noconfig.FIELD` in `argv`."""
  pattern = rf'--?(?:no)?{CONFIG_FLAG}\.([^=]+)(?:=.*)?'
  return [m.group(1) for m in (re.fullmatch(pattern, argument, re.DOTALL) for argument in argv[1:]) if m]


def _load_config(argv: Sequence[str]) -> ml_collections.ConfigDict | None:
  """The config `--config` names, loaded again to explain an error; None if that fails too."""
  argument = _config_argument(argv)
  if argument is None:
    return None
  try:
    config = flags.FLAGS[CONFIG_FLAG].parser.parse(argument)
  except Exception:  # noqa: BLE001  Whatever the config file raises, the caller falls back to absl's error.
    return None
  return config if isinstance(config, ml_collections.ConfigDict) else None


def _diagnose(argv: Sequence[str]) -> str | None:
  """A missing config file or an unknown config field in `argv`, as one sentence; None if neither."""
  argument = _config_argument(argv)
  if argument is None:
    return None
  path = argument.split(':', 1)[0]
  if not os.path.isfile(path):
    return missing_config_file_message(path)
  fields = _overridden_fields(argv)
  config = _load_config(argv) if fields else None
  if config is None:
    return None
  for field in fields:
    message = unknown_field_message(config, field)
    if message:
      return message
  return None


_TYPE_NAMES = {int: 'an integer', float: 'a number', bool: 'true or false', str: 'a string', tuple: 'a tuple'}


def _describe_flag_error(error: flags.Error, argv: Sequence[str]) -> str:
  """One sentence for absl's error about a flag's value (or any other flag mistake)."""
  text = str(error)
  if 'Error whilst parsing config file' in text:
    # config_flags packs the config file's traceback into the message; its last line is the error.
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    return re.sub(r'^\w+(Error|Exception): ', '', last)
  match = re.match(rf'flag --(?:no)?{CONFIG_FLAG}\.([\w.]+)=(.*?): ', text, re.DOTALL)
  config = _load_config(argv) if match else None
  if match and config is not None:
    field, value = match.groups()
    *parents, leaf = field.split('.')
    try:
      node = config
      for part in parents:
        node = node[part]
      field_type = node.get_type(leaf)
    except (AttributeError, KeyError, TypeError):
      field_type = None
    if field_type is not None:
      expected = _TYPE_NAMES.get(field_type, f'a value of type {getattr(field_type, "__name__", field_type)}')
      return f"config field '{field}' expects {expected}; got {value!r}."
  return f'{text.splitlines()[0]} (see --help).'


def _load_error(error_config) -> str:
  """The error that kept config_flags from loading the config file, from its stand-in object."""
  try:
    error_config.to_dict()  # The stand-in raises the deferred error on any use.
  except OSError as error:
    cause = error.__cause__ or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__
  return 'the config file could not be loaded.'


# ----------------------------------------------------------------------------- start-up noise

# (level, source file, message start) of the native lines TensorFlow prints at start-up.
_TENSORFLOW_NOISE = (
  ('I', 'port.cc', 'oneDNN custom operations are on.'),
  ('I', 'cudart_stub.cc', 'Could not find cuda drivers on your machine'),
  ('I', 'cpu_feature_guard.cc', 'This TensorFlow binary is optimized to use available CPU instructions'),
)
# A failed cuInit is expected, and harmless, only where TensorFlow found no CUDA driver at all.
_NO_CUDA_DRIVER = _TENSORFLOW_NOISE[1]
_CUINIT_FAILED = ('E', 'cuda_platform.cc', 'failed call to cuInit:')
_ABSL_PRE_INIT = 'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR'
_CPU_GUARD_SECOND_LINE = 'To enable the following instructions:'
# "I0000 00:00:1795790778.555663   11236 port.cc:153] message"
_NATIVE_LOG_LINE = re.compile(r'([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] (.*)', re.DOTALL)
_ORBAX_READ_ONLY = ('CheckpointManagerOptions.read_only=True, setting ', 'Given directory is read only=')


def _is(line: str, pattern: tuple[str, str, str]) -> bool:
  match = _NATIVE_LOG_LINE.fullmatch(line.rstrip('\n'))
  return (
    bool(match)
    and match.group(1) == pattern[0]
    and match.group(2) == pattern[1]
    and match.group(3).startswith(pattern[2])
  )


def drop_start_up_noise(lines: Sequence[str]) -> list[str]:
  """`lines` of native stderr output without TensorFlow's known start-up noise on a machine without GPUs.

  Dropped: absl's notice that logging is not initialised, TensorFlow's oneDNN, CUDA-stub
  and CPU-instruction INFO lines, and the failed cuInit, the last only when TensorFlow also
  said it found no CUDA driver (with a driver, a failed cuInit is a real error).
  """
  no_driver = any(_is(line, _NO_CUDA_DRIVER) for line in lines)
  kept, after_cpu_guard = [], False
  for line in lines:
    noise = (
      line.rstrip('\n') == _ABSL_PRE_INIT
      or any(_is(line, pattern) for pattern in _TENSORFLOW_NOISE)
      or (no_driver and _is(line, _CUINIT_FAILED))
      or (after_cpu_guard and line.startswith(_CPU_GUARD_SECOND_LINE))
    )
    after_cpu_guard = _is(line, _TENSORFLOW_NOISE[2])
    if not noise:
      kept.append(line)
  return kept


@contextlib.contextmanager
def filtered_native_stderr(keep: Callable[[list[str]], list[str]] = drop_start_up_noise):
  """Captures what is written to file descriptor 2 in the block, then writes `keep(lines)` to stderr.

  Native libraries write to the descriptor directly, past Python's `sys.stderr`, so only a
  capture there can filter them. Lines appear once the block ends, in their order.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode('utf-8', errors='replace').splitlines(keepends=True)
      sys.stderr.write(''.join(keep(lines)))
      sys.stderr.flush()


def hide_gpus_from_tensorflow() -> None:
  """Imports TensorFlow and hides the GPUs from it, without its start-up noise on stderr.

  TensorFlow only reads the records; left alone it would reserve GPU memory that JAX needs.
  Its start-up lines come from native code before its logging is set up, which no
  environment variable silences in TensorFlow 2.21, hence the capture.
  """
  with filtered_native_stderr():
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')


class StartUpNoiseFilter(std_logging.Filter):
  """Drops orbax's INFO lines and read-only notices and JAX's "no libtpu" line from the absl log."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' in record.pathname:
      # A dozen INFO lines per checkpoint save; the read-only warnings come from eval, which
      # opens the checkpoints read-only on purpose.
      return record.levelno >= std_logging.WARNING and not record.getMessage().startswith(_ORBAX_READ_ONLY)
    if record.name.startswith('jax') and record.levelno < std_logging.WARNING:
      message = record.getMessage()
      return not (message.startswith("Unable to initialize backend 'tpu'") and 'libtpu.so' in message)
    return True


def filter_start_up_noise() -> None:
  """Adds `StartUpNoiseFilter` to absl's log handler (call it in main, once absl set logging up)."""
  absl_logging.get_absl_handler().addFilter(StartUpNoiseFilter())
