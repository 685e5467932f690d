"""Crash-safe files for the results store: atomic writes, strict JSON, one writer per run.

- Atomic writes go through a temp file in the same folder and a rename, so a killed
  process never leaves a file that reads as complete; files get the mode the process umask
  gives (0644 under the usual 022), so collaborators on a shared file system can read them.
- JSON is strict: non-finite floats are written as the strings "NaN", "Infinity" and
  "-Infinity" (standard JSON has no such numbers) and read back as floats.
- A file that cannot be read is a ``CorruptRecord`` naming the path and what is wrong;
  ``move_aside`` keeps it under another name (never deleted) so the run can be redone.
- ``RunLock``: an exclusive ``flock`` on ``<run>/.lock`` held for the life of a training
  session; a second copy of the same run gets a clear error naming the holder (host, PID,
  since when). The operating system releases the lock when its process dies, so a lock
  left by a killed process is simply taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ResultsError(RuntimeError):
    """A problem with the results directory; the message says how to fix it."""


class CorruptRecord(ResultsError):
    """A record file that cannot be read."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class RunLocked(ResultsError):
    """Another process is training this run."""


#: The errors of a write that found no room: the disk is full, or the quota is spent.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


def _no_room(err: BaseException | None) -> OSError | None:
    """The error in ``err``'s chain (it, or what it was raised from) that found no room."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return err
        err = err.__cause__ or err.__context__
    return None


def disk_full(err: BaseException | None) -> BaseException | None:
    """``err`` if it (or an error it was raised from) says the disk had no room, else None."""
    return err if _no_room(err) is not None else None


class DiskFull(ResultsError):
    """A write found no room; the message names the disk and how to go on."""

    def __init__(self, err: BaseException, folder: Path | None = None):
        where = getattr(_no_room(err), "filename", None) or folder
        free = ""
        if where is not None:
            try:
                usage = shutil.disk_usage(Path(where).parent)
                free = f", {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB"
            except OSError:
                pass
        super().__init__(
            f"No space left on the disk holding {where or 'the results'}{free}. Nothing "
            "finished was touched and the run's checkpoints are kept: free some space (or "
            "choose results_root=<dir> on another disk), then rerun to resume the run."
        )


# --- modes and atomic writes ----------------------------------------------------------
def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_path(path: Path) -> Path:
    """A new temp file beside ``path`` (same file system, so the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, file_mode())  # mkstemp creates 0600 whatever the umask
    return Path(tmp)


def atomic_write(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename over ``path``; the temp file never survives."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:  # reports hold ±, §: not the locale's
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def check_writable(root: Path) -> Path:
    """Create ``root`` if needed and prove it writable, or raise a ResultsError with the fix."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ResultsError(
            f"Cannot write to the results directory {root} ({err.strerror or err}). "
            "Fix its permissions or choose another one with results_root=<dir>. "
            "No results were touched."
        ) from err
    return root


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temp files of writes that a killed process left in ``folder``."""
    gone = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<UTC time>`` (kept for inspection, never deleted)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = Path(path).with_name(f"{Path(path).name}.corrupt-{stamp}")
    os.replace(path, target)
    return target


# --- strict JSON ----------------------------------------------------------------------
def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _restore(obj):
    if isinstance(obj, str) and obj in _NON_FINITE:
        return _NON_FINITE[obj]
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """Standard JSON (no NaN or Infinity literals); non-finite floats become strings."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def loads(text: str):
    """The inverse of ``dumps`` (older files with NaN literals read as well)."""
    return _restore(json.loads(text))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    """The JSON in ``path``; FileNotFoundError if it is missing, CorruptRecord if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise CorruptRecord(path, f"not text ({err})") from err
    try:
        return loads(text)
    except json.JSONDecodeError as err:
        raise CorruptRecord(path, f"not valid JSON ({err})") from err


# --- one writer per run ---------------------------------------------------------------
class RunLock:
    """An exclusive, non-blocking lock on ``<folder>/.lock`` (a context manager)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is being trained by another process ({holder}). Wait "
                "for it to finish (a rerun then finds the result), or stop that process."
            ) from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a later reader sees no stale holder
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
