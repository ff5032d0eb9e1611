"""emojax.lock: a second run is refused naming the holder; a killed holder's lock is taken over."""

import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from emojax import lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Takes the lock in another process, says so, and keeps it until killed.
_HOLD = """
import sys, time
from emojax import lock
with lock.DirectoryLock(sys.argv[1], purpose='training'):
  print('held', flush=True)
  time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
  """A process holding the lock on tmp_path / 'run'; killed at the end of the test."""
  process = subprocess.Popen(
    [sys.executable, '-c', _HOLD, str(tmp_path / 'run')], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert process.stdout.readline().strip() == 'held'
    yield process
  finally:
    process.kill()
    process.wait()
    process.stdout.close()


def test_a_second_run_is_refused_naming_the_holders_host_and_pid(holder, tmp_path):
  path = tmp_path / 'run' / lock.LOCK_NAME
  host = re.escape(socket.gethostname())
  message = (
    rf'^{path} is held by pid {holder.pid} on host {host} \(training since \d{{4}}-\d\d-\d\dT[^)]+\): wait for it, '
    r'or remove the file if that run is gone\.$'
  )
  with pytest.raises(lock.LockedError, match=message), lock.DirectoryLock(str(tmp_path / 'run')):
    pass
  assert issubclass(lock.LockedError, ValueError)  # emojax.main prints ValueErrors as one line.
  assert json.loads(path.read_text())['pid'] == holder.pid  # The refused run left the lock alone.


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(holder, tmp_path, caplog):
  path = tmp_path / 'run' / lock.LOCK_NAME
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert path.exists()  # A killed run cannot clean up: the file stays, its flock does not.
  with caplog.at_level(logging.WARNING), lock.DirectoryLock(str(tmp_path / 'run')) as taken:
    assert taken.held and json.loads(path.read_text())['pid'] == os.getpid()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f'from pid {holder.pid} on host {socket.gethostname()}' in w for w in warnings), warnings
  assert not path.exists()


def test_a_dead_holder_on_this_host_is_stale_even_while_its_flock_is_held(tmp_path, caplog):
  # A killed holder's forked children keep its flock; its pid is still gone.
  exited = subprocess.run(
    [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True, check=True
  )
  dead_pid = int(exited.stdout)
  path = tmp_path / lock.LOCK_NAME
  path.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead_pid, 'purpose': 'training'}))
  with open(path) as child_fd:
    fcntl.flock(child_fd, fcntl.LOCK_EX)
    with caplog.at_level(logging.WARNING), lock.DirectoryLock(str(tmp_path)) as taken:
      assert taken.held and json.loads(path.read_text())['pid'] == os.getpid()
  assert any('no such process runs on this host' in r.getMessage() for r in caplog.records)


def test_an_unlocked_file_from_another_host_is_stale(tmp_path):
  path = tmp_path / lock.LOCK_NAME
  path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'purpose': 'data_prep'}))
  with lock.DirectoryLock(str(tmp_path), purpose='data_prep'):
    record = json.loads(path.read_text())
  assert record['host'] == socket.gethostname() and record['purpose'] == 'data_prep'


def test_the_lock_file_is_removed_on_exit_and_on_an_exception(tmp_path):
  directory = tmp_path / 'new' / 'workdir'  # Created by the lock.
  path = directory / lock.LOCK_NAME
  with lock.DirectoryLock(str(directory)) as taken:
    assert path.exists() and taken.held
  assert not path.exists() and not taken.held
  with pytest.raises(RuntimeError), lock.DirectoryLock(str(directory)):
    raise RuntimeError('the run failed')
  assert not path.exists()
  assert os.listdir(directory) == []  # No temporary file left either.


def test_only_one_of_two_locks_in_one_process_holds(tmp_path):
  with lock.DirectoryLock(str(tmp_path)), pytest.raises(lock.LockedError, match=f'held by pid {os.getpid()}'):
    lock.DirectoryLock(str(tmp_path)).acquire()


def test_processes_that_do_not_take_the_lock_are_not_refused(tmp_path):
  with lock.DirectoryLock(str(tmp_path)):
    with lock.DirectoryLock(str(tmp_path), take=False) as other:  # Process 1 of a multi-host job.
      assert not other.held
    assert (tmp_path / lock.LOCK_NAME).exists()  # Its exit did not remove process 0's lock.
