"""One run at a time in a run directory: `<run>/run.lock`.

The lock is an exclusive `flock` on that file, which the kernel drops when the holding process ends however it ends,
so a lock is never left held by a dead process. The file says who holds it ({"pid", "host", "since", "command"}):
a second run is refused in one line naming the holder's pid and host, and a run that finds the file of a process that
is gone (crashed, killed) takes it over with a note. A run that ends removes the file, and the directories it created
for it when nothing else was written there. Where the file system has no flock (some network mounts), the file alone
decides: held while its pid runs on this host.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from wubugen.errors import UserError, os_error_message
from wubugen.train.distributed import DistInfo, broadcast_object

LOCK_FILE = "run.lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _read(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


class RunLock:
    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None
        self._created: list[Path] = []
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "command": " ".join(["wubugen", *sys.argv[1:]])[:500]}

    def _refuse(self, holder: dict[str, Any]) -> UserError:
        return UserError(f"run dir {self.run_dir} is in use by another run ({_describe(holder)}): wait for it to end "
                         f"or stop it, or give another --checkpoint_dir")

    def acquire(self, log: Callable[[str], Any] = print) -> "RunLock":
        d = self.run_dir.absolute()
        while not d.exists() and d != d.parent:  # what this lock creates, removed again if the run leaves it empty
            self._created.append(d)
            d = d.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                flocked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            try:  # a run that was ending may have removed the file between our open and our lock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(fd)
        if not flocked and previous.get("pid") not in (None, os.getpid()):
            if previous.get("host") != self.record["host"] or _pid_alive(int(previous["pid"])):
                os.close(fd)
                raise self._refuse(previous)
        if previous.get("pid") not in (None, os.getpid()):
            log(f"note: took over the lock of {self.run_dir} from a run that is gone ({_describe(previous)})")
        try:
            data = (json.dumps(self.record) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """True: we hold the flock. False: this file system has none. A held flock is refused (UserError)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refuse(_read(fd)) from None
        except OSError as e:
            if e.errno in _NO_FLOCK:
                return False
            raise
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:  # gone already, or the directory became unwritable: the flock still ends with the fd
            pass
        os.close(self.fd)
        self.fd = None
        for d in self._created:  # a run that stopped before writing anything leaves no directory behind
            try:
                d.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def hold_run_lock(run_dir: str | os.PathLike[str], dist: DistInfo, log: Callable[[str], Any] = print) -> Iterator[None]:
    """Rank 0 takes the run dir's lock for the block; every rank raises the same one-line UserError when it cannot
    (another run holds it, or the directory cannot be created or written)."""
    lock, problem = None, ""
    if dist.is_main:
        try:
            lock = RunLock(run_dir).acquire(log)
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot lock run dir {run_dir}: {os_error_message(e, str(run_dir))}"
    problem = broadcast_object(problem, dist)
    if problem:
        raise UserError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
