"""One writer per run folder: an advisory lock on RUN/.lock that dies with its process.

`tokenize`, `train` (rank 0 under torchrun) and `export` into a run hold it while they run;
commands that only add result files (eval/, explore.html, decode.yaml) take none. The lock is
the operating system's (flock), not the file's presence, so a killed holder never blocks the
next command. The file names its holder (process id, command, start time) for the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mha.data.files import DataError

NAME = ".lock"


class RunBusyError(DataError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    """`with run_lock(run_dir, "train"):` holds the run folder's lock, or raises RunBusyError.

    The lock file names the holder. A command that ends in an error leaves the folder as it
    found it: the lock file's bytes and times back, or the file (and a folder it made) gone.
    """
    folder = Path(run_dir)
    new_folder = not folder.exists()
    path = folder / NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, created = _locked(path)
    except (FileExistsError, NotADirectoryError, PermissionError) as error:
        raise DataError(f"run_dir {folder} cannot hold a run: {error.strerror} (expected a "
                        "folder this user can write)") from error
    try:
        before = None if created else (path.read_bytes(), os.stat(path))
        _write(fd, json.dumps({"pid": os.getpid(), "command": command,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        try:
            yield
        except BaseException:
            if before is None:  # unlinked while held: a process that opened it finds it gone
                path.unlink(missing_ok=True)
            else:  # its bytes and times as they were
                _write(fd, before[0])
                os.utime(fd, ns=(before[1].st_atime_ns, before[1].st_mtime_ns))
            raise
    finally:
        os.close(fd)  # releases the lock
        if new_folder and not path.exists():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when the failed command left it empty


def _locked(path: Path) -> tuple[int, bool]:
    """(a descriptor holding the lock on `path`, whether this call created the file)."""
    while True:
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(path, os.O_RDWR), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(f"run folder {path.parent} is in use by {_holder(path)}; wait for "
                               "it to end or stop it (one writer per run folder)") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd, created
        os.close(fd)  # a failed holder removed the file we opened: lock the one there now


def _holder(path: Path) -> str:
    """Who holds the lock, as the lock file tells it."""
    try:
        info = json.loads(path.read_text())
        return f"`mha {info['command']}` (process {info['pid']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it is starting)"


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
