"""One run per directory: a lock file that a second run is refused by and a dead run cannot leave behind.

A training workdir or a data_prep output directory is written by one run at a time: a second
run started there by mistake would interleave its checkpoints or shards with the first's.

  with lock.DirectoryLock(workdir, purpose='training'):
    ...

takes `workdir/emojax.lock` or raises `LockedError` (a ValueError, so `emojax.main` prints it
as one line) naming the run that holds it. The file records that holder (host, pid, start
time, purpose, command line) and is removed when the block ends, also on an exception.

How a run that is gone is told from one that is alive: the holder keeps an flock on the
file, which the kernel drops when the process ends however it ends (SIGKILL, the OOM killer),
and on the holder's own host a pid that no longer exists says the same (it also covers
children forked by a killed holder, which inherit its flock). Such a stale lock is taken
over, with an absl WARNING naming the old holder.

Multi-host jobs: the processes of one job share the workdir (e.g. over NFS), so only
process 0 takes the lock; the others pass `take=False`, which makes the lock a no-op:

  with lock.DirectoryLock(workdir, take=jax.process_index() == 0):

`emojax.experiment.run` takes it on process 0 and hands the outcome to the other processes,
so when a second job's process 0 is refused, all of that job's processes stop with the same
error before they write anything.

On NFS, an flock is a lock on the server (Linux clients since 2.6.12, with NFSv4 or
NFSv3's lockd), so it holds across hosts. A mount with `local_lock=flock`, `local_lock=all`
or `nolock` keeps locks on each client: there a live holder on another host looks stale,
and a second job would take the lock over (with the warning), so do not rely on the lock
across hosts on such mounts.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
import time
from typing import Self

from absl import logging

LOCK_NAME = 'emojax.lock'
# Tries to take the lock when other runs keep replacing it (each stale takeover is one).
_ATTEMPTS = 5
# How long a refused run waits for a takeover in progress to finish before believing the holder is alive.
_TAKEOVER_GRACE_SECONDS = 0.1


class LockedError(ValueError):
  """Another run, alive, holds the directory's lock."""


def _pid_alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)  # Signal 0 only checks that the process exists.
  except ProcessLookupError:
    return False
  except PermissionError:  # It exists, under another user.
    return True
  return True


def _try_flock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def _read_holder(fd: int) -> dict:
  """The record in the lock file open as `fd`; {} when it cannot be read (then only the flock tells)."""
  try:
    holder = json.loads(os.pread(fd, 1 << 16, 0).decode())
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


class DirectoryLock:
  """An exclusive lock on a directory for one run, as a context manager.

  Attributes:
    path: the lock file, `directory/name`.
    purpose: what the holder does there ('training', 'data_prep', ...), recorded and shown
      to a refused run.
  """

  def __init__(self, directory: str, name: str = LOCK_NAME, purpose: str = 'training', *, take: bool = True):
    """Prepares the lock; nothing happens on disk until `acquire` (or `with`).

    Args:
      directory: the directory to lock (created if missing).
      name: the lock file's name inside it.
      purpose: recorded in the lock file and named to a refused run.
      take: False makes the lock a no-op, for the processes of a multi-host job other than
        process 0 (which takes it for the whole job).
    """
    self.directory = directory
    self.path = os.path.join(directory, name)
    self.purpose = purpose
    self.take = take
    self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> Self:
    """Takes the lock, taking over a stale one.

    The lock file appears atomically with its record and its flock in place: it is written
    and flocked under a temporary name, then hard-linked to `path`, which fails if `path`
    exists (also on NFS), so no run ever sees a lock file that is empty or unlocked.

    Raises:
      LockedError: a live run holds the lock (naming its pid, host, purpose and start).
    """
    if not self.take or self._fd is not None:
      return self
    os.makedirs(self.directory, exist_ok=True)
    host = socket.gethostname()
    record = {
      'host': host,
      'pid': os.getpid(),
      'purpose': self.purpose,
      'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'command': ' '.join(sys.argv),
    }
    pending = os.path.join(self.directory, f'.{os.path.basename(self.path)}.{host}.{os.getpid()}.tmp')
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)  # Nobody else knows this file yet: immediate.
      os.write(fd, (json.dumps(record, indent=2) + '\n').encode())
      os.fsync(fd)
      for _ in range(_ATTEMPTS):
        try:
          os.link(pending, self.path)
        except FileExistsError:
          self._remove_if_stale()  # Raises LockedError if the holder is alive.
          continue
        self._fd = fd
        return self
      raise LockedError(
        f'{self.path} changed hands {_ATTEMPTS} times while this run tried to take it: other runs are starting in '
        f'{self.directory}; start only one.'
      )
    finally:
      os.unlink(pending)
      if self._fd is None:
        os.close(fd)

  def _remove_if_stale(self) -> None:
    """Removes the lock file if its holder is gone; raises LockedError if it is alive; returns if it changed."""
    try:
      fd = os.open(self.path, os.O_RDWR)
    except FileNotFoundError:  # Released meanwhile.
      return
    try:
      holder = _read_holder(fd)
      flock_free = _try_flock(fd)
      if not flock_free:
        time.sleep(_TAKEOVER_GRACE_SECONDS)  # Another run may be taking over a stale lock right now.
      if not _same_file(fd, self.path):
        return
      host, pid = holder.get('host', 'an unknown host'), holder.get('pid', '?')
      dead_here = host == socket.gethostname() and not _pid_alive(pid)
      if not (flock_free or dead_here):
        raise LockedError(
          f'{self.path} is held by pid {pid} on host {host} ({holder.get("purpose", "unknown purpose")} since '
          f'{holder.get("started", "an unknown time")}): wait for it, or remove the file if that run is gone.'
        )
      logging.warning(
        'Taking over %s from pid %s on host %s (%s since %s, command %r): %s.',
        self.path,
        pid,
        host,
        holder.get('purpose'),
        holder.get('started'),
        holder.get('command'),
        'its lock was free, so that run is gone' if flock_free else 'no such process runs on this host',
      )
      # Holding the old flock keeps a concurrent taker from removing the lock this run puts
      # in its place; only two takeovers of a dead holder whose forked children still hold
      # its flock can race here.
      os.unlink(self.path)
    finally:
      os.close(fd)

  def release(self) -> None:
    """Removes the lock file (if it is still this run's) and drops the flock."""
    if self._fd is None:
      return
    try:
      if _same_file(self._fd, self.path):
        os.unlink(self.path)
      else:
        logging.warning('%s was taken over by another run while this one held it; leaving that lock alone.', self.path)
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> Self:
    return self.acquire()

  def __exit__(self, *exc_info) -> bool:
    self.release()
    return False
