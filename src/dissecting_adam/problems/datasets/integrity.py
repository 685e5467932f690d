"""The errors of every data set, and what its downloads and manifests build on.

This module holds the data errors (:class:`DataError` and its kinds, :class:`DataWarning`),
:class:`RemoteFile` (one original download), the optional local mirror of original downloads
(``$DATA_MIRROR``), md5 and sha256 checks, atomic writes and the lock that lets processes
sharing a data root take turns. :mod:`.download` (downloads with timeouts and retries) and
:mod:`.manifest` (the ``MANIFEST.json`` of extracted files) build on it.

Every original download is verified by md5 whichever way it arrived (download, mirror or a
previous run): copies from the mirror are checked before they are staged, and files already
in the download cache are checked before they are used. Files are written under a temporary
name and renamed once complete, so a partial file never stays behind under its final name.

Every failure names the file and says how to fix it: a wrong data set must never be used
silently, and a missing one is never replaced by synthetic data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5

try:  # advisory locks between processes preparing the same data root (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: Environment variable naming the local mirror (a folder of original downloads).
MIRROR_ENV = "DATA_MIRROR"


class DataError(RuntimeError):
    """A data set is missing, corrupt or unreadable; the message says how to fix it."""


class ChecksumError(DataError):
    """A file's md5 differs from the one its data set publishes."""


class MissingDataError(DataError):
    """A file is neither in the mirror nor downloadable (no network)."""


class DownloadError(MissingDataError):
    """A download failed on its last attempt (or with an error that retrying cannot fix).

    ``url``, ``attempts`` (made) and ``last_error`` say what happened; the message also says
    how to stage the file by hand.
    """

    def __init__(self, message: str, url: str = "", attempts: int = 0, last_error=None):
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.last_error = last_error


class DataWarning(UserWarning):
    """A damaged data file was found and regenerated from its verified download."""


@dataclass(frozen=True)
class RemoteFile:
    """One original download: its name, md5 and home URL."""

    name: str
    md5: str
    url: str


def resolve_mirror(mirror: str | os.PathLike | None) -> Path | None:
    """The mirror folder: ``mirror`` if given, else ``$DATA_MIRROR``, else None (download).

    A mirror that is named but does not exist is an error, not a silent fall-back to the
    network: on an air-gapped machine that fall-back would only hide the typo.
    """
    if mirror is None or str(mirror) == "":
        mirror = os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return None
    path = Path(mirror).expanduser()
    if not path.is_dir():
        raise MissingDataError(
            f"Data mirror {path} does not exist (set by data.mirror or ${MIRROR_ENV}). Create "
            "it with one folder per data set holding the original downloads (fashion-mnist/, "
            "war-and-peace/, cifar-10/, cifar-100/; see docs/problems.md), or unset "
            f"${MIRROR_ENV} to download from the original sources."
        )
    return path


def verify_md5(path: Path, md5: str, fix: str) -> None:
    """Raise ChecksumError naming ``path``, the expected and actual md5 and ``fix``."""
    actual = calculate_md5(path)
    if actual != md5:
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected md5 {md5}, got {actual}. {fix}"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing files atomically -------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(target: Path) -> Iterator:
    """A binary file object whose content replaces ``target`` only if the block succeeds.

    It is written under a hidden temporary name in the same folder and renamed over
    ``target`` at the end; on any error (or interrupt) the temporary file is removed.
    """
    target = Path(target)
    # open(..., "xb") rather than mkstemp: the file gets the umask's permissions, not 0600.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        with open(tmp, "xb") as out:
            yield out
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def data_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s data set (``.<name>.lock`` beside it).

    Processes that prepare or load the same data root at once take turns, so none reads a
    file that another is regenerating. Where no lock file can be made (read-only root,
    Windows) the data is used without one.
    """
    folder = Path(folder)
    handle = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            folder.parent.mkdir(parents=True, exist_ok=True)
            handle = open(folder.parent / f".{folder.name}.lock", "a+b")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


# --- the mirror and the download cache ----------------------------------------------------


def stage_from_mirror(mirror: Path, folder: str, files: list[RemoteFile], dest: Path) -> None:
    """Copy verified originals from ``mirror/folder/`` into ``dest`` (the download cache).

    Files already in ``dest`` with the right md5 are kept; the copies are written under a
    temporary name and renamed, so an interrupted copy never looks like a cached original.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        src = mirror / folder / f.name
        if not src.is_file():
            raise MissingDataError(
                f"{src} is missing from the data mirror {mirror}. Stage it: download {f.url} "
                f"on a machine with network access (md5 {f.md5}) and copy it to {src}."
            )
        verify_md5(
            src,
            f.md5,
            f"The mirror's copy is corrupt or a different file: replace {src} with a fresh "
            f"download of {f.url}.",
        )
        target = dest / f.name
        if target.is_file() and calculate_md5(target) == f.md5:
            continue
        with open(src, "rb") as source, atomic_write(target) as out:
            shutil.copyfileobj(source, out, 1 << 20)


def check_cached(dest: Path, files: list[RemoteFile]) -> None:
    """Verify the originals already in the cache ``dest``; absent ones are fine (downloaded)."""
    for f in files:
        path = dest / f.name
        if path.is_file():
            verify_md5(
                path,
                f.md5,
                "The file is truncated or corrupt: delete it and rerun "
                "`python scripts/prepare_data.py` to fetch it again.",
            )


def download_failed(files: list[RemoteFile], dest: Path, folder: str, err: Exception) -> DataError:
    """The error for a download that failed, saying exactly how to stage the files by hand."""
    listing = "\n".join(f"  {f.name}  md5 {f.md5}  from {f.url}" for f in files)
    stage = (
        f"either into <mirror>/{folder}/ and set {MIRROR_ENV}=<mirror> (or data.mirror), "
        f"or directly into {dest}."
    )
    if isinstance(err, DownloadError):
        return DownloadError(
            f"Could not download the {folder} data. {err}\nAll original files of {folder}:\n"
            f"{listing}\nWithout network access, stage them {stage}",
            err.url,
            err.attempts,
            err.last_error,
        )
    return DownloadError(
        f"Could not download the {folder} data ({type(err).__name__}: {err}). Without network "
        f"access, stage the original files:\n{listing}\n{stage}",
        last_error=err,
    )
