"""The command line's helpers in-process: flag diagnoses, the start-up noise filters."""

import logging
import os

import pytest

from configs import default
from emojax import cli

# What TensorFlow 2.21 printed on stderr when imported on this CPU-only machine, verbatim.
TENSORFLOW_START_UP = [
  'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n',
  (
    'I0000 00:00:1795790778.555663   11236 port.cc:153] oneDNN custom operations are on. You may see slightly '
    'different numerical results due to floating-point round-off errors from different computation orders. To turn '
    'them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n'
  ),
  (
    'I0000 00:00:1795790778.556701   11236 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will '
    'not be used.\n'
  ),
  (
    'I0000 00:00:1795791530.819778    4252 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use '
    'available CPU instructions in performance-critical operations.\n'
  ),
  (
    'To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild '
    'TensorFlow with the appropriate compiler flags.\n'
  ),
  (
    'E0000 00:00:1795790781.370343   11236 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed '
    'call to cuInit: UNKNOWN ERROR (303)\n'
  ),
]
CUINIT = TENSORFLOW_START_UP[-1]


def test_start_up_noise_is_dropped_and_real_lines_kept():
  real_warning = 'W0000 00:00:1795790781.4   11236 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n'
  python_line = 'Traceback (most recent call last):\n'
  assert cli.drop_start_up_noise([*TENSORFLOW_START_UP, real_warning, python_line]) == [real_warning, python_line]
  # With a CUDA driver present (no "Could not find cuda drivers"), a failed cuInit is a real error.
  assert cli.drop_start_up_noise([TENSORFLOW_START_UP[1], CUINIT]) == [CUINIT]
  # Only the line after the CPU-instructions notice is its continuation.
  assert cli.drop_start_up_noise([TENSORFLOW_START_UP[4]]) == [TENSORFLOW_START_UP[4]]


def test_filtered_native_stderr_replays_what_is_not_noise(capfd):
  with cli.filtered_native_stderr():
    for line in (TENSORFLOW_START_UP[0], 'kept line\n', TENSORFLOW_START_UP[2]):
      os.write(2, line.encode())
  assert capfd.readouterr().err == 'kept line\n'


def _record(name, pathname, level, message):
  return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_log_filter_drops_only_the_known_lines():
  noise_filter = cli.StartUpNoiseFilter()
  orbax = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  dropped = [
    _record('absl', orbax, logging.WARNING, 'CheckpointManagerOptions.read_only=True, setting create=False.'),
    _record('absl', orbax, logging.WARNING, 'Given directory is read only=/run/audio/checkpoints'),
    _record('absl', orbax, logging.INFO, 'Saving checkpoint at step 3'),
    _record(
      'jax._src.xla_bridge',
      '/venv/site-packages/jax/_src/xla_bridge.py',
      logging.INFO,
      "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot open shared object",
    ),
  ]
  kept = [
    _record('absl', orbax, logging.WARNING, 'Waiting for previous save to complete took 12 s.'),
    _record('jax._src.xla_bridge', '/venv/jax/_src/xla_bridge.py', logging.WARNING, 'An NVIDIA GPU may be present'),
    _record('absl', '/repo/emojax/train.py', logging.INFO, "Stage 'audio' epoch 1: train loss 2.2"),
  ]
  assert [noise_filter.filter(record) for record in dropped] == [False] * len(dropped)
  assert [noise_filter.filter(record) for record in kept] == [True] * len(kept)


def test_unknown_field_names_the_nearest():
  config = default.get_config()
  assert cli.unknown_field_message(config, 'data.protocol') is None
  assert cli.unknown_field_message(config, 'optimizer.learning_rate') is None
  assert cli.unknown_field_message(config, 'data.protocl') == (
    "config has no field 'data.protocl'; did you mean 'data.protocol'?"
  )
  assert "did you mean 'model.visual.lstm_sizes'?" in cli.unknown_field_message(config, 'model.visual.lstm_size')
  assert 'configs/default.py' in cli.unknown_field_message(config, 'zzzzzz')
  assert 'data.feature_dims.audio_embedding' in cli.config_fields(config)


@pytest.mark.parametrize(
  'path, nearest',
  [('configs/stak.py', 'configs/stack.py'), ('configs/vsual.py', 'configs/visual.py'), ('config/audio.py', None)],
)
def test_missing_config_file_names_the_nearest(path, nearest, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  message = cli.missing_config_file_message(path)
  assert message.startswith(f"config file '{path}' does not exist; ")
  if nearest:
    assert message.endswith(f"did you mean '{nearest}'?")
  else:  # A mistyped directory: the nearest of emojax's own configs.
    assert message.endswith("did you mean 'configs/audio.py'?")
