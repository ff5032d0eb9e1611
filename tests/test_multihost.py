"""`--multihost` for real: two JAX processes on this machine train the smoke stack as one process does.

Two `python -m emojax.main --multihost` processes (one CPU device each, gloo collectives, a
coordinator on a free localhost port) share one workdir; a single process with two CPU
devices trains the same config in another. Both have the same global batch and mesh, so
their reports and predictions must be equal, to the bit. (With two devices per process
against four in one, the cross-process all-reduce sums in another order than the in-process
one, so losses agree to about 1e-9 only.) Every subprocess has a timeout: a hang (one process
waiting in a collective the other skipped) fails the test instead of blocking it.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from emojax import fake_records, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECS = 420


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir: str, data_dir: str, *, devices: int, layout: dict | None = None) -> subprocess.Popen:
  """`python -m emojax.main` on the smoke stack, with `devices` CPU devices; `layout` makes it one of a multihost job."""
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])),
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='3',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  args = [
    '--config=configs/stack.py:smoke',
    f'--workdir={workdir}',
    f'--config.data.dir={data_dir}',
    '--config.num_epochs=2',
    '--config.data.max_frames=16',
    '--config.data.time_bucket=16',
    '--config.checkpoint_every_secs=0',  # A collective save every epoch.
    '--config.log_every_secs=1000',
  ]
  if layout is not None:
    env.update(layout)
    args.append('--multihost')
  return subprocess.Popen(
    [sys.executable, '-m', 'emojax.main', *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
  """(returncode, stdout, stderr) of each process; all are killed, and the test fails, past `TIMEOUT_SECS` in all."""
  outputs = []
  deadline = time.monotonic() + TIMEOUT_SECS
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
      outputs.append((process.returncode, stdout, stderr))
  except subprocess.TimeoutExpired:
    for process in processes:
      process.kill()
    tails = [process.communicate()[1][-2000:] for process in processes]
    pytest.fail(f'A process hung past {TIMEOUT_SECS} s; stderr tails: {tails}')
  return outputs


def read(workdir: str) -> tuple[dict, str]:
  with open(os.path.join(workdir, report.REPORT_FILENAME)) as f:
    content = json.load(f)
  with open(os.path.join(workdir, report.PREDICTIONS_FILENAME)) as f:
    return content, f.read()


@pytest.mark.slow
def test_two_processes_train_the_stack_as_one_process_does(tmp_path):
  data_dir = fake_records.write_fake_dataset(
    str(tmp_path / 'data'), num_actors=4, clips_per_actor=28, min_frames=4, max_frames=16
  )
  port = free_port()
  multihost = [
    start(
      str(tmp_path / 'two'),
      data_dir,
      devices=1,
      layout={
        'JAX_COORDINATOR_ADDRESS': f'localhost:{port}',
        'JAX_NUM_PROCESSES': '2',
        'JAX_PROCESS_ID': str(process_id),
      },
    )
    for process_id in range(2)
  ]
  single = start(str(tmp_path / 'one'), data_dir, devices=2)
  (code_0, out_0, err_0), (code_1, out_1, err_1), (code, _, err) = finish([*multihost, single])
  assert code_0 == 0 and code_1 == 0, (err_0[-3000:], err_1[-3000:])
  assert code == 0, err[-3000:]
  assert 'JAX process 1 of 2' in err_1  # A real two-process job, not two single-process runs.
  # Process 0 alone writes the report (and prints it); process 1 only trains.
  assert 'Wrote ' in out_0 and 'Wrote ' not in out_1

  two, two_predictions = read(str(tmp_path / 'two'))
  one, one_predictions = read(str(tmp_path / 'one'))
  assert len(two['provenance']['devices']) == len(one['provenance']['devices']) == 2
  assert {key: value for key, value in two.items() if key != 'provenance'} == {
    key: value for key, value in one.items() if key != 'provenance'
  }
  assert two_predictions == one_predictions
  assert two['training']['audio']['epochs_run'] == 2
