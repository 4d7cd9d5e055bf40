"""A training workdir: a usable directory, held by one run at a time.

    with workdir.locked("runs/w"):      # a second run on runs/w gets a one-line WorkdirError
        ...

The lock is an exclusive `flock` on WORKDIR/train.lock, so the operating system releases it when its
process dies (a SIGKILLed run never blocks its own resume). This module imports nothing heavy: train.py
takes the lock before JAX starts, so that a second run exits within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from collections.abc import Iterator

from lsjax.errors import InputError

LOCK_FILE = "train.lock"

_held: dict[Path, list[int]] = {}  # resolved workdir -> [lock file descriptor, nesting depth] in this process


class WorkdirError(InputError):
    """The workdir cannot be used (a file, under a file, not writable, or held by another run)."""


def prepare(path) -> Path:
    """The workdir, created if needed; a one-line WorkdirError when it is a file, lies under a file or cannot
    be written (checked here, before a run computes anything it could not save)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise WorkdirError(f"--workdir {path}: lies under {blocker}, which is a file") from None
    except OSError as err:
        raise WorkdirError(f"--workdir {path}: cannot be created ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {path}: not writable")
    return path


@contextlib.contextmanager
def locked(path) -> Iterator[Path]:
    """Holds the workdir's lock (re-entrant within a process: train.py and `lsjax.train.run` both take it)."""
    path = prepare(path)
    key = path.resolve()
    if key not in _held:
        _held[key] = [_acquire(path), 0]
    _held[key][1] += 1
    try:
        yield path
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            os.close(_held.pop(key)[0])  # closing the descriptor releases the flock


def _acquire(path: Path) -> int:
    """A descriptor of WORKDIR/train.lock holding an exclusive flock, with this process's id written in it."""
    file = path / LOCK_FILE
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise WorkdirError(f"--workdir {path}: cannot create {LOCK_FILE} ({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise WorkdirError(f"--workdir {path}: another run (pid {holder or '?'}) is training in it; wait for it to "
                           f"finish or stop it, or use another workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
