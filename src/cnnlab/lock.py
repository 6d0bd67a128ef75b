"""One process at a time per run folder: an OS lock that a killed process cannot leave held.

The lock is `flock` on `.cnnlab.lock` inside the run folder, taken without waiting. The kernel
releases it when its holder exits in any way (even `kill -9`), so it can never be left stuck;
the file only records who holds it (pid, host, command, start time) for the message another
process prints. The holder removes the file when it releases the lock.

    >>> with lock_run_folder(Path("runs/demo")):
    ...     train into it
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from cnnlab.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = ".cnnlab.lock"
MAX_HOLDER_BYTES = 4096


class RunLock:
    """A held run-folder lock; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder = folder
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:  # removed while still held, so a waiting process never takes a stale file
            if same_file(self.fd, self.folder / LOCK_FILE):
                os.unlink(self.folder / LOCK_FILE)
        except OSError:
            pass  # the folder was removed or renamed with the file in it
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_folder(folder: Path, command: str | None = None) -> RunLock:
    """Take `folder`'s lock (the folder must exist) or raise `ConfigError` naming the holder."""
    folder = Path(folder)
    if fcntl is None:
        return RunLock(folder, None)
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise ConfigError(f"cannot lock run folder {folder}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"run folder {folder} is in use by another cnnlab process ({holder}); wait for "
                f"it to finish or stop it, then run this again"
            ) from None
        except OSError as err:  # a file system without locks
            os.close(fd)
            raise ConfigError(f"cannot lock run folder {folder}: {err.strerror or err}") from None
        if same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock
    write_holder(fd, command)
    return RunLock(folder, fd)


def same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def write_holder(fd: int, command: str | None) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or shlex.join(["cnnlab", *sys.argv[1:]]),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
    data = json.dumps(holder).encode()[:MAX_HOLDER_BYTES]
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # only the message of a refused process loses its details


def read_holder(fd: int) -> str:
    """'pid 123 on host h since 2025-01-01T12:00:00: cnnlab train ...', or what is known."""
    try:
        holder = json.loads(os.pread(fd, MAX_HOLDER_BYTES, 0))
        return (
            f"pid {int(holder['pid'])} on {str(holder['host'])[:100]} since "
            f"{str(holder['started'])[:40]}: {str(holder['command'])[:300]}"
        )
    except (OSError, ValueError, TypeError, KeyError):
        return "it is just starting"
