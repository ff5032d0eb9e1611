"""The command line as users run it: config files, overrides, eval from a workdir, errors."""

import os
import subprocess
import sys

import pytest

from emojax import fake_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Start-up lines that read as failures on a CPU-only machine (TensorFlow, JAX, orbax).
NOISE = ('cuInit', 'cuda drivers', 'oneDNN', 'absl::InitializeLog', 'libtpu', 'read only', 'read_only=True')


def _run(*args, cwd, quiet_env=True):
  # PYTHONPATH: the code of this checkout, wherever the cwd is and whichever emojax is installed.
  python_path = os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')]))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu', PYTHONPATH=python_path)
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
