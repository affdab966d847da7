"""Errors, atomic writes and the code version: the small I/O helpers every layer uses.

``M3SError`` is the base of every error m3s raises on purpose (bad config, bad store, bad weights...): the scripts'
``main_guard`` turns any of them into one line on stderr and exit status 2.
"""

from __future__ import annotations

import csv
import errno
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parents[1]


class M3SError(Exception):
    """An error raised on purpose; its message says what is wrong and how to fix it."""


class ConfigError(M3SError, ValueError):
    """A bad config value or key, or data that does not fit the config; the message says what is valid."""


class Interrupted(M3SError):
    """Ctrl-C or SIGTERM: the message says what was kept and how to go on (scripts exit with status 130)."""


class StoreError(M3SError, RuntimeError):
    """A feature store is missing, corrupt, or does not match what the caller expects."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp gives 0600


TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: Path | str, suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` in one step (same directory, so
    ``os.replace`` is atomic), on failure it is removed. Readers ignore its name (``.<name>.<pid>-<random><suffix>``:
    the writer's pid says whose it is, so ``remove_stale_temps`` never deletes another live process's file).
    The file gets the mode of any new file (``0666`` minus the umask), not ``mkstemp``'s private ``0600``. The file
    is fsynced before the rename and its directory after it, so a power cut leaves the complete old or new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)  # the content is on disk before the name points at it: a crash leaves the old or the new file
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself is on disk when we return
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(directory: Path | str) -> list[Path]:
    """Delete the temporary files that ``atomic_write`` left in ``directory`` when its writer was killed: those whose
    writer process is gone (or this very process, which writes nothing at the time it cleans). Another running
    writer's files are left alone. Returns what was removed."""
    removed = []
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}") if Path(directory).is_dir() else []:
        owner = tmp.name.rsplit(".", 2)[-2].split("-")[0] if tmp.name.count(".") >= 3 else ""
        if not owner.isdigit() or int(owner) == os.getpid() or not _alive(int(owner)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def ensure_writable(directory: Path | str) -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before hours of work depend on it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".m3s-probe.{os.getpid()}-", suffix=TEMP_SUFFIX):
            pass
    except OSError as err:
        raise M3SError(f"cannot write to {directory} ({err.strerror or err}); choose another --features_dir") from None
    return directory


def out_of_space(err: BaseException, directory: Path | str) -> bool:
    """Whether a write failed because ``directory``'s file system is full (h5py and torch.save wrap ENOSPC in
    their own errors, so the message and the free space are checked too)."""
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
        return True
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def write_text(path: Path | str, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: Path | str, header: list[str], rows: Iterable[list]) -> None:
    """A CSV written atomically in valid UTF-8, so any CSV reader opens it: an id from a file name that is not valid
    UTF-8 (``caf\\xe9.mp4``) is written with its bad bytes escaped, as ``caf\\xe9``."""
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([escape_bytes(v) if isinstance(v, str) else v for v in row] for row in rows)


def escape_bytes(text: str) -> str:
    """``text`` with the bytes of a name that is not valid UTF-8 (surrogate escapes from ``os.fsdecode``) written as
    ``\\xNN``: printable and writable anywhere."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_csv(path: Path | str) -> list[dict[str, str]]:
    """The rows of a CSV written by :func:`write_csv`, as dicts keyed by its header."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_json(path: Path | str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (recorded in stores and checkpoints).
    Computed once per process: it is asked for at every checkpoint."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
