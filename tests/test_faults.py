"""Training killed anywhere resumes to the same results; half-written checkpoints are never restored.

`test_killed_anywhere_resumes_to_the_same_report` SIGKILLs `python -m emojax.main` (the smoke
stack, a checkpoint every epoch) again and again in one workdir, restarting it each time,
then lets it finish; its report.json (all but `provenance`) and predictions.csv must equal
those of an uninterrupted run. The kills land at moments found from outside the process, by
watching the workdir (no hook in emojax): while a checkpoint step is being written (its
`.orbax-checkpoint-tmp` directory exists; the step is drawn from a seeded RNG), right after a
stage's DONE file appears (between stages), once the stacker's first feature file appears
(during the feature pass), once provenance.json appears (before the report), and at
EMOJAX_KILL_POINTS (default 1) times drawn from the seeded RNG over the measured duration of
the uninterrupted run. After each
kill, the restart must resume every unfinished stage from its latest complete step, whatever
the kill left half-written.

The runs share a JAX persistent compilation cache, so a restart loads the steps it compiled
before instead of compiling them again: it changes how long a restart takes, not what it
computes.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from configs import stack
from emojax import experiment, fake_records, report, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('audio', 'visual', 'stacker')
TMP_SUFFIX = '.orbax-checkpoint-tmp'
RUN_TIMEOUT_SECS = 300
EPOCHS = 5
NUM_RANDOM_KILLS = int(os.environ.get('EMOJAX_KILL_POINTS', '1'))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('data')), num_actors=4, clips_per_actor=28, min_frames=4, max_frames=16
  )


def config_arguments(data_dir: str) -> list[str]:
  return [
    '--config=configs/stack.py:smoke',
    f'--config.data.dir={data_dir}',
    f'--config.num_epochs={EPOCHS}',
    '--config.patience=100',  # Every epoch runs: more checkpoints to be killed in.
    '--config.data.max_frames=16',
    '--config.data.time_bucket=16',
    '--config.checkpoint_every_secs=0',  # A checkpoint every epoch.
    '--config.log_every_secs=1000',
  ]


def start(workdir: str, data_dir: str, log_path: str, cache_dir: str) -> subprocess.Popen:
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])),
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='3',
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  env.pop('XLA_FLAGS', None)
  with open(log_path, 'w') as log:  # A file, not a pipe: nobody reads while the test watches the workdir.
    return subprocess.Popen(
      [sys.executable, '-m', 'emojax.main', f'--workdir={workdir}', *config_arguments(data_dir)],
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
    )


# ----------------------------------------------------------------------------- the workdir seen from outside


def _entries(directory: str) -> list[str]:
  try:
    return os.listdir(directory)
  except FileNotFoundError:
    return []


def _mtime(path: str) -> int | None:
  try:
    return os.stat(path).st_mtime_ns
  except FileNotFoundError:
    return None


def half_written_steps(workdir: str) -> set[tuple[str, int]]:
  """(stage, step) of every checkpoint step being (or left half-) written."""
  return {
    (stage, int(name.split('.')[0]))
    for stage in STAGES
    for name in _entries(os.path.join(workdir, stage, 'checkpoints'))
    if TMP_SUFFIX in name
  }


def done(workdir: str, stage: str) -> bool:
  return os.path.exists(os.path.join(workdir, stage, train.DONE_FILENAME))


def complete_steps(workdir: str) -> dict[str, int]:
  """Stage -> its latest complete checkpoint step, for the stages with one and no DONE file."""
  latest = {}
  for stage in STAGES:
    steps = [int(name) for name in _entries(os.path.join(workdir, stage, 'checkpoints')) if name.isdigit()]
    if steps and not done(workdir, stage):
      latest[stage] = max(steps)
  return latest


def _watched(workdir: str) -> list[str]:
  return [
    *(os.path.join(workdir, stage, train.DONE_FILENAME) for stage in STAGES),
    os.path.join(workdir, 'features', 'stack_train.npz'),
    os.path.join(workdir, report.PROVENANCE_FILENAME),
  ]


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """What the workdir held when a run started: a trigger fires on what changes after."""

  half_written: frozenset
  mtimes: dict
  training: str | None  # The first stage without a DONE file.

  @classmethod
  def of(cls, workdir: str) -> 'Snapshot':
    return cls(
      frozenset(half_written_steps(workdir)),
      {path: _mtime(path) for path in _watched(workdir)},
      next((stage for stage in STAGES if not done(workdir, stage)), None),
    )

  def changed(self, path: str) -> bool:
    now = _mtime(path)
    return now is not None and now != self.mtimes.get(path)


@dataclasses.dataclass(frozen=True)
class Moment:
  """Where to kill: `fires(workdir, snapshot, seconds since start)`; `ahead(workdir)`: can it still happen."""

  kind: str
  name: str
  fires: Callable[[str, Snapshot, float], bool]
  ahead: Callable[[str], bool]


def saving(min_step: int) -> Moment:
  """While step `min_step` or a later one of the stage in training is written (or any step of the next stage)."""

  def fires(workdir, snapshot, seconds):
    started = half_written_steps(workdir) - snapshot.half_written
    return any(step >= min_step or stage != snapshot.training for stage, step in started)

  return Moment('save', f'during the save of a step >= {min_step}', fires, lambda w: not done(w, 'stacker'))


def between_stages() -> Moment:
  def fires(workdir, snapshot, seconds):
    return any(snapshot.changed(os.path.join(workdir, stage, train.DONE_FILENAME)) for stage in STAGES)

  return Moment('between stages', 'between stages (a DONE file written)', fires, lambda w: not done(w, 'stacker'))


def feature_pass() -> Moment:
  def fires(workdir, snapshot, seconds):
    return snapshot.changed(os.path.join(workdir, 'features', 'stack_train.npz'))

  def ahead(workdir):
    return not os.path.exists(os.path.join(workdir, 'features'))

  return Moment('feature pass', "during the stacker's feature pass", fires, ahead)


def before_report() -> Moment:
  def fires(workdir, snapshot, seconds):
    return snapshot.changed(os.path.join(workdir, report.PROVENANCE_FILENAME))

  return Moment('report', 'before the report (provenance.json written)', fires, lambda w: True)


def at(kill_seconds: float) -> Moment:
  return Moment(
    'random', f'at {kill_seconds:.1f} s', lambda w, snapshot, seconds: seconds >= kill_seconds, lambda w: True
  )


def run_until(workdir: str, data_dir: str, log_path: str, cache_dir: str, fires=lambda *_: False) -> tuple[int, float]:
  """Starts a run and SIGKILLs it when `fires(workdir, snapshot, seconds)`; (return code, seconds it ran)."""
  snapshot = Snapshot.of(workdir)
  process = start(workdir, data_dir, log_path, cache_dir)
  began = time.monotonic()
  while process.poll() is None:
    seconds = time.monotonic() - began
    if fires(workdir, snapshot, seconds):
      process.send_signal(signal.SIGKILL)
      break
    if seconds > RUN_TIMEOUT_SECS:
      process.kill()
      pytest.fail(f'A run did not finish in {RUN_TIMEOUT_SECS} s; see {log_path}.')
    time.sleep(0.002)
  return process.wait(), time.monotonic() - began


def resumed_steps(log_path: str) -> dict[str, int]:
  """Stage -> the epoch a run's log says it resumed after, 0 for a stage it trained from scratch."""
  with open(log_path) as f:
    log = f.read()
  started = {stage: 0 for stage in re.findall(r"Stage '(\w+)': training \d+ member\(s\) from scratch", log)}
  return started | {
    stage: int(epoch) for stage, epoch in re.findall(r"Stage '(\w+)': resuming after epoch (\d+)\.", log)
  }


def check_resumed(log_path: str, complete: dict[str, int]) -> None:
  """Every stage the run reached and that had a complete step resumed from it, not from another step or scratch."""
  resumed = resumed_steps(log_path)
  wrong = {stage: (resumed[stage], step) for stage, step in complete.items() if resumed.get(stage, step) != step}
  assert not wrong, f'{log_path}: stage -> (resumed after, latest complete step): {wrong}'


def tail(log_path: str) -> str:
  with open(log_path) as f:
    return f.read()[-3000:]


def results(workdir: str) -> tuple[dict, str]:
  """report.json without its provenance (dates, wall times), and predictions.csv."""
  with open(os.path.join(workdir, report.REPORT_FILENAME)) as f:
    content = json.load(f)
  with open(os.path.join(workdir, report.PREDICTIONS_FILENAME)) as f:
    return {key: value for key, value in content.items() if key != 'provenance'}, f.read()


@pytest.mark.slow
def test_killed_anywhere_resumes_to_the_same_report(data_dir, tmp_path):
  cache_dir = str(tmp_path / 'compilation_cache')
  reference = str(tmp_path / 'uninterrupted')
  began = time.time()
  code, _ = run_until(reference, data_dir, str(tmp_path / 'uninterrupted.log'), cache_dir)
  assert code == 0, tail(str(tmp_path / 'uninterrupted.log'))
  duration = os.stat(os.path.join(reference, report.REPORT_FILENAME)).st_mtime - began

  rng = np.random.default_rng(0)
  # In this order each moment is normally still ahead when its run starts. A trigger that a
  # slow poll missed, or a random time past the end, lets a run finish: then its results are
  # checked, and the moments it passed are skipped; every kind must still be hit once.
  plan = [
    saving(int(rng.integers(1, EPOCHS))),
    *[at(rng.uniform(0.2, 0.5) * duration) for _ in range(NUM_RANDOM_KILLS)],
    between_stages(),
    feature_pass(),
    before_report(),
  ]
  workdir = str(tmp_path / 'killed')
  lines, killed, expected_resume = [], [], {}
  for index, moment in enumerate(plan):
    if not moment.ahead(workdir):
      lines.append(f'{moment.name}: skipped, passed already')
      continue
    log_path = str(tmp_path / f'run_{index}.log')
    code, seconds = run_until(workdir, data_dir, log_path, cache_dir, moment.fires)
    # The run before was killed with these complete steps, whatever it left half-written: it resumed from them.
    check_resumed(log_path, expected_resume)
    if code == 0:
      assert results(workdir) == results(reference)
      lines.append(f'{moment.name}: the run finished first ({seconds:.1f} s), with the same results')
      expected_resume = {}
      continue
    assert code == -signal.SIGKILL, f'{moment.name}: the run failed with code {code}; see {log_path}'
    half_written = sorted(half_written_steps(workdir))
    expected_resume = complete_steps(workdir)
    killed.append((moment.kind, bool(half_written)))
    lines.append(
      f'{moment.name}: killed at {seconds:.1f} s; done {[stage for stage in STAGES if done(workdir, stage)]}, '
      f'complete steps {expected_resume}, half-written {half_written}'
    )

  final_log = str(tmp_path / 'final.log')
  code, _ = run_until(workdir, data_dir, final_log, cache_dir)
  assert code == 0, tail(final_log)
  check_resumed(final_log, expected_resume)
  assert resumed_steps(final_log).keys() >= expected_resume.keys()
  assert results(workdir) == results(reference)
  print(f'\nuninterrupted run {duration:.1f} s; {len(plan)} kill points tried, {len(killed)} killed, all matched:')
  print('\n'.join(f'  {line}' for line in lines))
  assert {kind for kind, _ in killed} >= {'save', 'between stages', 'feature pass', 'report'}, lines
  # Some kill hit a checkpoint step mid-write and left it for the restart to skip.
  assert any(half_written for kind, half_written in killed if kind == 'save'), lines


# ----------------------------------------------------------------------------- a planted half-written step


def tiny_config(data_dir: str, **overrides):
  config = stack.get_config('smoke')
  config.models = ('audio',)
  config.data.dir = data_dir
  config.data.max_frames = 16
  config.data.time_bucket = 16
  config.num_epochs = 4
  config.patience = 100
  config.checkpoint_every_secs = 0.0
  config.log_every_secs = 1e6
  config.update(overrides)
  return config


def test_a_half_written_step_is_ignored_not_restored(data_dir, tmp_path, monkeypatch):
  uninterrupted = experiment.run(tiny_config(data_dir), str(tmp_path / 'uninterrupted'))
  workdir = str(tmp_path / 'killed')
  real_fit = train.fit

  def stop_in_epoch_3(config, stage, mesh):
    evaluations = []

    def counting_val_batches():
      evaluations.append(1)
      if len(evaluations) == 3:  # After epoch 3's training, before its checkpoint.
        raise KeyboardInterrupt
      return stage_val_batches()

    stage_val_batches = stage.val_batches
    return real_fit(config, dataclasses.replace(stage, val_batches=counting_val_batches), mesh)

  monkeypatch.setattr(train, 'fit', stop_in_epoch_3)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(tiny_config(data_dir), workdir)
  monkeypatch.undo()

  # What a kill in the middle of saving step 3 leaves: its temporary directory, with meta
  # that claims epoch 3 and a state cut short. Restoring it would skip epoch 3, or fail.
  checkpoints = os.path.join(workdir, 'audio', 'checkpoints')
  assert sorted(os.listdir(checkpoints)) == ['2']
  planted = os.path.join(checkpoints, '3' + TMP_SUFFIX)
  shutil.copytree(os.path.join(checkpoints, '2'), planted)
  os.remove(os.path.join(planted, 'commit_success.txt'))
  with open(os.path.join(planted, 'meta', 'metadata')) as f:
    meta = json.load(f)
  meta['epoch'] = 3
  with open(os.path.join(planted, 'meta', 'metadata'), 'w') as f:
    json.dump(meta, f)
  for root, _, files in os.walk(os.path.join(planted, 'state')):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)

  with train._checkpoint_manager(os.path.join(workdir, 'audio'), read_only=True) as manager:
    assert manager.latest_step() == 2  # orbax does not list it.
  resumed = experiment.run(tiny_config(data_dir), workdir)
  assert {k: v for k, v in resumed.items() if k != 'provenance'} == {
    k: v for k, v in uninterrupted.items() if k != 'provenance'
  }
  assert resumed['training']['audio']['epochs_run'] == 4
  assert not os.path.exists(planted)  # Removed when training opened the checkpoints again.
  assert sorted(os.listdir(checkpoints)) == ['4']
