"""The command line as users run it: config files, overrides, eval from a workdir, errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from emojax import fake_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Start-up lines that read as failures on a CPU-only machine (TensorFlow, JAX, orbax).
NOISE = ('cuInit', 'cuda drivers', 'oneDNN', 'absl::InitializeLog', 'libtpu', 'read only', 'read_only=True')


def _run(*args, cwd, quiet_env=True, **environ):
  # PYTHONPATH: the code of this checkout, wherever the cwd is and whichever emojax is installed.
  python_path = os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')]))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu', PYTHONPATH=python_path, **environ)
  if not quiet_env:  # As a user runs it: TensorFlow and JAX print whatever they print by default.
    for name in ('TF_CPP_MIN_LOG_LEVEL', 'JAX_PLATFORMS'):
      env.pop(name)
  return subprocess.run(
    [sys.executable, '-m', 'emojax.main', *args],
    check=False,
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('data')), num_actors=4, clips_per_actor=28, min_frames=4, max_frames=16
  )


def test_train_then_eval_from_the_workdir_config(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  overrides = ['--config.num_epochs=2', f'--config.data.dir={data_dir}', '--config.data.max_frames=16']
  # Run from outside the repository: the config path and the package must not depend on the cwd.
  trained = _run(
    f'--config={REPO}/configs/audio.py:smoke', f'--workdir={workdir}', *overrides, cwd=str(tmp_path), quiet_env=False
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'audio' in trained.stdout and 'test WA' in trained.stdout
  with open(os.path.join(workdir, 'report.json')) as f:
    report = f.read()
  with open(os.path.join(workdir, 'config.json')) as f:
    assert '"num_epochs": 2' in f.read()  # The overrides were applied and saved.

  os.remove(os.path.join(workdir, 'report.json'))
  evaluated = _run(
    f'--config={REPO}/configs/from_workdir.py:{workdir}',
    f'--workdir={workdir}',
    '--config.mode=eval',
    cwd=REPO,
    quiet_env=False,
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(workdir, 'report.json')) as f:
    assert f.read() == report
  # Nothing on stderr looks broken on a CPU-only machine: no CUDA or TPU probing, no orbax read-only notices.
  for line in (trained.stderr + evaluated.stderr).splitlines():
    assert not any(noise in line for noise in NOISE), line


@pytest.mark.parametrize(
  'args, error',
  [
    (
      ['--config=configs/stack.py', '--config.data.protocl=actor'],
      "emojax: error: config has no field 'data.protocl'; did you mean 'data.protocol'?",
    ),
    (
      ['--config=configs/stak.py'],
      "emojax: error: config file 'configs/stak.py' does not exist; did you mean 'configs/stack.py'?",
    ),
    (
      ['--config=configs/stack.py', '--config.batch_size=abc'],
      "emojax: error: config field 'batch_size' expects an integer; got 'abc'.",
    ),
  ],
)
def test_config_mistakes_are_one_line_naming_the_nearest(args, error, tmp_path):
  result = _run(*args, f'--workdir={tmp_path}/run', cwd=REPO)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [error]
  assert not os.path.exists(tmp_path / 'run')


def test_help_exits_0_and_lists_the_config_fields():
  result = _run('--help', cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert 'configs/default.py' in result.stdout
  assert "  data.protocol = 'random'" in result.stdout.splitlines()
  assert '--workdir' in result.stdout


def test_a_wrong_data_path_is_one_line_naming_it(tmp_path):
  missing = str(tmp_path / 'no-such-dir')
  result = _run(
    '--config=configs/stack.py:smoke', f'--workdir={tmp_path}/run', f'--config.data.dir={missing}', cwd=REPO
  )
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith('emojax: error:')]
  assert len(errors) == 1 and missing in errors[0]
  assert 'Traceback' not in result.stderr


def _errors(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith('emojax: error:')]


# Every jit compile logs a line with this: a refusal must come before the first.
COMPILING = {'JAX_LOG_COMPILES': '1'}


@pytest.fixture(scope='module')
def audio_workdir(data_dir, tmp_path_factory):
  """(workdir, its config overrides) of a finished one-epoch audio run."""
  workdir = str(tmp_path_factory.mktemp('audio') / 'run')
  overrides = [
    f'--config={REPO}/configs/audio.py:smoke',
    f'--config.data.dir={data_dir}',
    '--config.num_epochs=1',
    '--config.data.max_frames=16',
  ]
  result = _run(f'--workdir={workdir}', *overrides, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, overrides


def test_a_batch_size_the_devices_do_not_divide_is_one_line(data_dir, tmp_path):
  result = _run(
    '--config=configs/stack.py:smoke',
    f'--workdir={tmp_path}/run',
    f'--config.data.dir={data_dir}',
    '--config.batch_size=15',
    cwd=REPO,
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    **COMPILING,
  )
  assert result.returncode == 1
  assert _errors(result) == [
    'emojax: error: config.batch_size 15 is not divisible by the 2 devices of the data axis: use a multiple of 2.'
  ]
  assert 'Compiling' not in result.stderr and 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_a_workdir_of_another_config_is_refused_naming_the_field(audio_workdir):
  workdir, overrides = audio_workdir
  with open(os.path.join(workdir, 'config.json')) as f:
    before = f.read()
  result = _run(
    f'--workdir={workdir}', *overrides, '--config.model.audio.hidden_sizes=(128, 32)', cwd=REPO, **COMPILING
  )
  assert result.returncode == 1, result.stderr[-3000:]
  (error,) = _errors(result)
  assert error.startswith(f'emojax: error: {workdir} was trained with another config (')
  assert 'model.audio.hidden_sizes: [64, 32] there, [128, 32] now' in error
  assert 'use a new --workdir, or the config of that run' in error
  assert 'Compiling' not in result.stderr and 'Traceback' not in result.stderr
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == before  # The refused run recorded nothing.


def test_eval_of_a_workdir_with_no_finished_stage_says_to_finish_training(audio_workdir, tmp_path):
  workdir = str(tmp_path / 'killed')
  shutil.copytree(audio_workdir[0], workdir)
  os.remove(os.path.join(workdir, 'audio', 'DONE'))  # As a run killed before its first stage finished leaves it.
  os.remove(os.path.join(workdir, 'report.json'))
  result = _run(
    f'--config={REPO}/configs/from_workdir.py:{workdir}', f'--workdir={workdir}', '--config.mode=eval', cwd=REPO
  )
  assert result.returncode == 1
  assert _errors(result) == [
    (
      f'emojax: error: No stage of {workdir} has finished training (no DONE file in audio): finish it by rerunning '
      'the same train command, which resumes from the latest checkpoints, then evaluate.'
    )
  ]
  assert not os.path.exists(os.path.join(workdir, 'report.json'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['mode'] == 'train'  # Eval writes no record.
