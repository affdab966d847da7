"""Run directories: a new run never writes into another run's directory, and one process owns a directory at a time.

- :func:`free_run_name` picks ``name``, or ``name-2``, ``name-3``... past directories that hold another run. A grid or
  a search passes ``resumable``: a directory holding the same experiment is continued, not renamed.
- :func:`owned` holds ``<run dir>/.lock`` with an exclusive ``flock`` while a run writes there; the file records the
  owner's pid and command. The kernel drops the lock when its process dies (a SIGKILL included), so a lock file left
  by a dead run is stale by construction and is taken over; a live owner makes the second process stop with one line.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.io import ConfigError

LOCK_NAME = ".lock"


class RunDirBusy(ConfigError):
    """Another live process writes into this run directory."""


def free_run_name(runs_dir: Path, name: str, resumable: Callable[[Path], bool] | None = None) -> str:
    """``name``, or ``name-2``, ``name-3``... when ``runs_dir/name`` holds another run (its ``config.yaml``): a new
    run (e.g. a second run of ``configs/demo.yaml``, which sets ``name: demo``) never replaces another's files.
    ``resumable(dir)``: whether that directory holds this very experiment, to be continued. Says so when it renames."""
    free, k = name, 1
    while (runs_dir / free / "config.yaml").exists() and not (resumable and resumable(runs_dir / free)):
        k += 1
        free = f"{name}-{k}"
    if free != name:
        print(f"{runs_dir / name} holds another run; this one is {runs_dir / free} (-n NAME to choose)")
    return free


def _owner(lock: Path) -> str:
    try:
        text = lock.read_text(errors="replace").strip()
    except OSError:
        return "another process"
    return text or "another process"


_held: dict[Path, int] = {}  # run directories this process owns, and how many blocks hold each


@contextmanager
def owned(run_dir: Path | str) -> Iterator[Path]:
    """Create ``run_dir`` and hold its lock for the block; :class:`RunDirBusy` if another live process holds it.
    Nested blocks of one process share the lock. A directory made here that holds nothing but the lock when the block
    ends (the run stopped before writing, e.g. on a missing dataset) is removed again."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir] += 1
        try:
            yield run_dir
        finally:
            _held[run_dir] -= 1
        return
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(
                f"{run_dir} is in use by {_owner(lock)}; wait for it to finish, stop it, or choose another -n NAME"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({' '.join(sys.argv[:6])})\n".encode(errors="replace"))
        _held[run_dir] = 1
        try:
            yield run_dir
        finally:
            del _held[run_dir]
            os.ftruncate(fd, 0)  # a finished run leaves an empty, unlocked lock file
            if made and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                lock.unlink()
                run_dir.rmdir()
    finally:
        os.close(fd)  # closing the descriptor drops the flock
