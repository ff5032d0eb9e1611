"""data_prep/build_tfrecords.py under faults: killed anywhere, started twice, fanned out at once.

The builds run the command line on a few SYNTHETIC clips with the offline stand-in
extractors, and end compared with one uninterrupted build (`reference`): shards byte for
byte, dataset_info.json apart from its 'run' timings.

Kill points (SIGKILL), each followed by a rerun of the same build that must complete with the
reference's outputs: one while a shard is being written, one while dataset_info.json is
being written, and EMOJAX_KILL_POINTS (default 1) at seeded random times drawn over the
measured duration of an uninterrupted build from the command line. The build killed while
writing dataset_info.json is also the live build a second one is refused by; two tasks of a
--num_tasks=2 fan-out start at once into one directory and must end with what one task builds.
"""

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from data_prep import build_tfrecords, synthetic
from data_prep import write as write_lib
from emojax import lock, schema

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, 'data_prep', 'build_tfrecords.py')
NUM_CLIPS = NUM_SHARDS = 4  # One clip per shard: most of a build's clip time is spent inside an open shard.
KILL_SEED = 10
NUM_RANDOM_KILLS = int(os.environ.get('EMOJAX_KILL_POINTS', '1'))
# Runs the build's command line, except that dataset_info.json stops halfway through being
# written: the build says so on stdout and waits there to be killed.
_STALL_IN_DATASET_INFO = """
import json, sys, time
from absl import app
from data_prep import build_tfrecords, write

class StallingJson:
  def __getattr__(self, name):
    return getattr(json, name)

  def dump(self, obj, f, **kwargs):
    text = json.dumps(obj, **kwargs)
    if 'run' in obj:  # Only dataset_info.json has a 'run' section.
      f.write(text[: len(text) // 2])
      f.flush()
      print('writing dataset_info.json', flush=True)
      time.sleep(300)
    f.write(text)

write.json = StallingJson()
build_tfrecords._define_flags()
app.run(build_tfrecords.main, argv=['build_tfrecords.py'] + sys.argv[1:])
"""

# Holds the lock argv[2] on directory argv[1] for argv[3] seconds, then says whether file
# argv[4] appeared meanwhile.
_HOLD = """
import os, sys, time
from emojax import lock
with lock.DirectoryLock(sys.argv[1], name=sys.argv[2]):
  print('held', flush=True)
  time.sleep(float(sys.argv[3]))
  print('appeared' if os.path.exists(sys.argv[4]) else 'absent', flush=True)
"""


def _settings(cache_dir):
  return {
    'vgg16_weights': 'random',
    'vggish_handle': 'random',
    'cache_dir': str(cache_dir),
    'num_shards': NUM_SHARDS,
    'num_workers': 0,
    'progress': False,
  }


def _command(input_dir, output_dir, settings, script=(SCRIPT,)):
  flags = [f'--{k}' if v is True else f'--no{k}' if v is False else f'--{k}={v}' for k, v in settings.items()]
  return [sys.executable, *script, f'--input_dir={input_dir}', f'--output_dir={output_dir}', *flags]


def _start(command):
  # The repo on the path for the stalling build, which is not the script and does not find it itself.
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _run(command):
  process = _start(command)
  stdout, stderr = process.communicate(timeout=300)
  return process.returncode, stdout, stderr


def _outputs(output_dir):
  """({shard name: bytes}, dataset_info without its 'run' section or None)."""
  shards = {}
  for k in range(NUM_SHARDS):
    path = os.path.join(output_dir, schema.shard_name(k, NUM_SHARDS))
    if os.path.exists(path):
      with open(path, 'rb') as f:
        shards[os.path.basename(path)] = f.read()
  info_path = os.path.join(output_dir, schema.DATASET_INFO)
  info = write_lib.read_json(info_path) if os.path.exists(info_path) else None
  if info is not None:
    del info['run']
  return shards, info


def _leftovers(output_dir):
  """Temporary and lock files in the output dir: a finished build leaves none."""
  names = os.listdir(output_dir) + os.listdir(os.path.join(output_dir, write_lib.SHARD_INFO_DIR))
  return sorted(n for n in names if n.startswith(write_lib.TMP_PREFIX) or n.endswith('.lock'))


def _phase(output_dir):
  """Where a build stood when it was killed, in words, read from what it left on disk."""
  if not os.path.exists(os.path.join(output_dir, write_lib.SETTINGS_FILE)):
    return 'starting (no settings.json yet)'
  complete = sum(write_lib.is_complete(str(output_dir), k, NUM_SHARDS) for k in range(NUM_SHARDS))
  if any(n.startswith(write_lib.TMP_PREFIX + 'ravdess-') for n in os.listdir(output_dir)):
    return f'mid-shard ({complete} of {NUM_SHARDS} complete)'
  if complete < NUM_SHARDS:
    return f'between shards ({complete} of {NUM_SHARDS} complete)'
  if not os.path.exists(os.path.join(output_dir, schema.DATASET_INFO)):
    return 'after the last shard'
  return f'after {schema.DATASET_INFO}'


@pytest.fixture(scope='module')
def reference(tmp_path_factory, stand_in_extractors, cache_dir):
  """The outputs of an uninterrupted build (`build` in this process: it is what the command line runs)."""
  del stand_in_extractors  # Built here first, so no timed build pays for building the VGGish stand-in.
  input_dir = tmp_path_factory.mktemp('ravdess_tiny')
  synthetic.generate(
    str(input_dir), num_actors=1, width=160, height=120, seconds=1.0, max_clips=NUM_CLIPS, emotion_codes=(1, 3, 4, 5)
  )
  output_dir = tmp_path_factory.mktemp('reference')
  settings = _settings(cache_dir)
  build_tfrecords.build(str(input_dir), str(output_dir), **settings)
  shards, info = _outputs(output_dir)
  assert len(shards) == NUM_SHARDS and info['num_clips'] == NUM_CLIPS and info['num_skipped'] == 0
  return {'input_dir': input_dir, 'output_dir': output_dir, 'settings': settings, 'shards': shards, 'info': info}


def _check_like_reference(output_dir, reference):
  shards, info = _outputs(output_dir)
  assert shards == reference['shards']
  assert info == reference['info']
  assert _leftovers(output_dir) == []


def _check_killed_state(output_dir, reference):
  """What a killed build leaves: every file that looks finished is the reference's, byte for byte."""
  shards, info = _outputs(output_dir)
  assert {name: reference['shards'][name] for name in shards} == shards
  assert info in (None, reference['info'])  # Written last, and only whole.


@pytest.fixture(scope='module')
def stalled(reference, tmp_path_factory):
  """A build from the command line that wrote every shard and stopped halfway through dataset_info.json, alive.

  It ran uninterrupted up to its very last write, so its 'seconds' are how long a build takes
  from the command line, and 'work_seconds' how much of that came after settings.json (the
  shards and the merge, once TensorFlow and the extractors are loaded): the spans random kill
  times are drawn from.
  """
  output_dir = tmp_path_factory.mktemp('stalled')
  start, wall_start = time.perf_counter(), time.time()
  process = _start(_command(reference['input_dir'], output_dir, reference['settings'], ('-c', _STALL_IN_DATASET_INFO)))
  try:
    line = process.stdout.readline()
    assert line == 'writing dataset_info.json\n', process.stderr.read() if not line else line
    assert _outputs(output_dir)[0] == reference['shards']
    seconds = time.perf_counter() - start
    work_seconds = seconds - (os.stat(output_dir / write_lib.SETTINGS_FILE).st_mtime - wall_start)
    yield {'process': process, 'output_dir': output_dir, 'seconds': seconds, 'work_seconds': work_seconds}
  finally:
    process.kill()
    process.communicate()


def test_a_second_build_on_a_live_builds_dir_is_refused_naming_it(reference, stalled, tmp_path):
  output_dir, holder = stalled['output_dir'], stalled['process']
  returncode, stdout, stderr = _run(_command(reference['input_dir'], output_dir, reference['settings']))
  lock_path = os.path.join(output_dir, write_lib.task_lock_name(0, 1))
  assert returncode == 1 and stdout == ''
  assert stderr.startswith(
    f'build_tfrecords: error: {lock_path} is held by pid {holder.pid} on host {socket.gethostname()} '
    f'({build_tfrecords.LOCK_PURPOSE} since '
  )
  assert len(stderr.splitlines()) == 1 and stderr.endswith('wait for it, or remove the file if that run is gone.\n')

  settings = reference['settings']
  with pytest.raises(lock.LockedError, match=f'held by pid {holder.pid} '):
    build_tfrecords.build(str(reference['input_dir']), str(output_dir), overwrite=True, **settings)
  assert _outputs(output_dir)[0] == reference['shards']  # --overwrite deleted nothing.
  with pytest.raises(build_tfrecords.BuildError, match=rf'--num_tasks=1 is running .* pid {holder.pid} '):
    build_tfrecords.build(str(reference['input_dir']), str(output_dir), num_tasks=2, task_index=1, **settings)
  assert not os.path.exists(os.path.join(output_dir, write_lib.task_lock_name(1, 2)))
  assert holder.poll() is None  # Refusing others did not disturb the holder.


def test_killed_while_writing_dataset_info_the_rerun_completes(reference, stalled):
  output_dir, process = stalled['output_dir'], stalled['process']
  process.send_signal(signal.SIGKILL)
  process.communicate()
  half = output_dir / (write_lib.TMP_PREFIX + schema.DATASET_INFO)
  with pytest.raises(json.JSONDecodeError):
    json.loads(half.read_text())  # Killed halfway through the file ...
  _check_killed_state(output_dir, reference)  # ... which no reader sees.
  assert _phase(output_dir) == 'after the last shard'

  returncode, stdout, stderr = _run(_command(reference['input_dir'], output_dir, reference['settings']))
  assert returncode == 0, stderr
  _check_like_reference(output_dir, reference)
  for name in (write_lib.task_lock_name(0, 1), write_lib.SHARED_FILES_LOCK):
    assert f'Taking over {output_dir / name} from pid {process.pid} ' in stderr
  assert '(0 built now, 4 kept from an earlier run)' in stdout


def test_a_task_ending_while_another_writes_dataset_info_waits_its_turn(reference, tmp_path):
  output_dir = shutil.copytree(reference['output_dir'], tmp_path / 'out')
  info_path = output_dir / schema.DATASET_INFO
  info_path.unlink()  # As if the other tasks had just completed the last shards.
  command = [sys.executable, '-c', _HOLD, str(output_dir), write_lib.SHARED_FILES_LOCK, '1.5', str(info_path)]
  other_task = _start(command)
  assert other_task.stdout.readline() == 'held\n'
  info = build_tfrecords.build(str(reference['input_dir']), str(output_dir), merge_only=True, **reference['settings'])
  assert other_task.communicate(timeout=60)[0] == 'absent\n'  # Nothing was written while the other held the lock.
  assert info['run']['shards_kept'] == NUM_SHARDS
  _check_like_reference(output_dir, reference)


def _kill_and_rerun(reference, output_dir, kill_when, caplog):
  """Starts the build, SIGKILLs it once `kill_when(seconds)` is true, reruns it; returns where it was killed."""
  process = _start(_command(reference['input_dir'], output_dir, reference['settings']))
  start = time.perf_counter()
  while process.poll() is None and not kill_when(time.perf_counter() - start):
    time.sleep(0.005)
  killed = process.poll() is None
  process.send_signal(signal.SIGKILL)
  process.communicate()
  seconds = time.perf_counter() - start
  if not killed:
    _check_like_reference(output_dir, reference)
    return f'{seconds:.1f} s: ended before the kill'
  phase = _phase(output_dir)
  _check_killed_state(output_dir, reference)
  locks_left = [n for n in (write_lib.task_lock_name(0, 1), write_lib.SHARED_FILES_LOCK) if (output_dir / n).exists()]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    # The rerun runs here rather than as a second process, which would import TensorFlow again.
    build_tfrecords.build(str(reference['input_dir']), str(output_dir), **reference['settings'])
  _check_like_reference(output_dir, reference)
  takeovers = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Taking over')]
  assert len(takeovers) == len(locks_left), (locks_left, takeovers)
  assert all(f'from pid {process.pid} ' in m for m in takeovers), takeovers
  return f'{seconds:.1f} s: {phase}'


def test_killed_mid_shard_the_rerun_is_byte_identical(reference, tmp_path, caplog):
  output_dir = tmp_path / 'out'
  writing_second_shard = output_dir / (write_lib.TMP_PREFIX + schema.shard_name(1, NUM_SHARDS))
  where = _kill_and_rerun(reference, output_dir, lambda _: writing_second_shard.exists(), caplog)
  assert where.endswith(f'mid-shard (1 of {NUM_SHARDS} complete)'), where


def _after_settings(output_dir, delay):
  """A kill condition: `delay` seconds after the build wrote settings.json, however long its start took."""
  seen_at = []

  def kill_when(seconds):
    if not seen_at and (output_dir / write_lib.SETTINGS_FILE).exists():
      seen_at.append(seconds)
    return bool(seen_at) and seconds >= seen_at[0] + delay

  return kill_when


def test_killed_at_random_times_the_rerun_is_byte_identical(reference, stalled, tmp_path, caplog):
  """Every other kill point falls anywhere in a build; the others in its work after the start.

  Loading TensorFlow and the extractors takes most of a build of a few clips, so kill times
  over the whole build mostly land in the start; times counted from settings.json land
  among the shards and the merge, whatever the load on the machine made the start cost.
  """
  rng = random.Random(KILL_SEED)
  points = []
  for i in range(NUM_RANDOM_KILLS):
    output_dir = tmp_path / f'out{i}'
    if i % 2 == 0:
      kill_at = rng.uniform(0, stalled['seconds'])
      kill_when = lambda seconds, kill_at=kill_at: seconds >= kill_at
    else:
      kill_when = _after_settings(output_dir, rng.uniform(0, stalled['work_seconds']))
    points.append(_kill_and_rerun(reference, output_dir, kill_when, caplog))
  print(
    f'\n{len(points)} kill points (build {stalled["seconds"]:.1f} s, {stalled["work_seconds"]:.1f} s after its start),',
    'each rerun like the reference:',
    *points,
    sep='\n  ',
  )
  assert len(points) == NUM_RANDOM_KILLS


def test_two_tasks_started_together_build_what_one_task_builds(reference, tmp_path):
  output_dir = tmp_path / 'out'
  settings = dict(reference['settings'], num_tasks=2)
  tasks = [_start(_command(reference['input_dir'], output_dir, dict(settings, task_index=i))) for i in range(2)]
  outputs = [task.communicate(timeout=300) for task in tasks]
  assert [task.returncode for task in tasks] == [0, 0], [stderr for _, stderr in outputs]
  _check_like_reference(output_dir, reference)
  assert write_lib.read_json(output_dir / schema.DATASET_INFO)['run']['num_tasks'] == 2
  # Each task built its own half; the one that ended last (or both, ending together) merged.
  merged = [stdout for stdout, _ in outputs if stdout.startswith(f'Found {NUM_CLIPS} clips')]
  waited = [stdout for stdout, _ in outputs if 'of other tasks still missing' in stdout]
  assert len(merged) >= 1 and len(merged) + len(waited) == 2, outputs
  assert all('(2 built now' in stdout or 'built 2 shards' in stdout for stdout, _ in outputs), outputs
  print(f'\n{len(merged)} of the 2 tasks wrote {schema.DATASET_INFO}')
