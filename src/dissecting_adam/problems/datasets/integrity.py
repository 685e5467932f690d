"""Checksums, downloads, the optional local mirror, manifests, and the errors of every data set.

Longer than ~300 lines: every data set's path from a URL or a mirror to verified files on
disk (staging, download with retries, md5, the manifest of extracted files, and the
errors that name the fix) is one chain that the tests patch at its joints; splitting it
into download and manifest modules is planned.

Data is verified at every level it is used:

- every original download is verified by md5 whichever way it arrived (download, mirror or a
  previous run). A download goes to a temporary name in its folder, with connect and read
  timeouts and a bounded number of attempts, and gets its final name only once its md5 is
  right: a partial or wrong file never stays behind under the final name;
- the files extracted or preprocessed from the verified downloads are recorded in a
  ``MANIFEST.json`` (sha256 of every file) when they are produced, and checked against it on
  every load. A file that does not match is regenerated from the verified download (with a
  :class:`DataWarning` naming it), or, where the download is gone, a :class:`DataError`
  names the file and the fix. The manifest's short hash is the data's fingerprint.

Every failure names the file and says how to fix it: a wrong data set must never be used
silently, and a missing one is never replaced by synthetic data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets.utils import calculate_md5

try:  # advisory locks between processes preparing the same data root (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

#: Environment variable naming the local mirror (a folder of original downloads).
MIRROR_ENV = "DATA_MIRROR"
#: Environment variables overriding the download timeout (seconds) and number of attempts.
TIMEOUT_ENV = "DISSECTING_ADAM_DOWNLOAD_TIMEOUT"
ATTEMPTS_ENV = "DISSECTING_ADAM_DOWNLOAD_ATTEMPTS"
#: Seconds allowed to connect and for every read of a download (not for the whole file).
DOWNLOAD_TIMEOUT = 30.0
#: Attempts per file before giving up.
DOWNLOAD_ATTEMPTS = 3
#: Seconds slept before the second attempt, doubled before every further one.
DOWNLOAD_BACKOFF = 2.0
#: Downloads at least this large show progress: a tqdm bar where stderr is a terminal, else a
#: log line (INFO) every ``PROGRESS_LOG_BYTES``.
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_LOG_BYTES = 8 << 20
USER_AGENT = "dissecting-adam/1 (Python urllib)"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 16


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


# --- downloads ------------------------------------------------------------------------------


def _positive_env(name: str, default, kind):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not (value > 0 and math.isfinite(value)):
        raise DataError(f"${name}={raw!r} is not a positive number: set it to e.g. {default}.")
    return value


def download_timeout() -> float:
    """Connect/read timeout of downloads in seconds: ``$DISSECTING_ADAM_DOWNLOAD_TIMEOUT``
    or ``DOWNLOAD_TIMEOUT``."""
    return _positive_env(TIMEOUT_ENV, DOWNLOAD_TIMEOUT, float)


def download_attempts() -> int:
    """Attempts per file: ``$DISSECTING_ADAM_DOWNLOAD_ATTEMPTS`` or ``DOWNLOAD_ATTEMPTS``."""
    return _positive_env(ATTEMPTS_ENV, DOWNLOAD_ATTEMPTS, int)


class _BadDownload(Exception):
    """The server answered, but not with the published file (short or wrong bytes)."""


def _retryable(err: Exception) -> bool:
    """Whether another attempt can help: not for 4xx answers, unknown hosts or bad URLs."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in (408, 425, 429) or err.code >= 500
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        if isinstance(reason, socket.gaierror):
            return reason.errno != socket.EAI_NONAME  # the name does not exist: final
        return isinstance(reason, OSError)  # not "unknown url type" and the like
    return not isinstance(err, ValueError)


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def _progress(file: RemoteFile, total: int | None) -> Iterator[Callable[[int], None]]:
    """``update(n_bytes)``: a tqdm bar on a terminal, else an INFO log line every few MB."""
    if total is not None and total < PROGRESS_MIN_BYTES:
        yield lambda n: None
        return
    if _stderr_is_terminal():
        from tqdm import tqdm

        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=file.name, leave=False
        ) as bar:
            yield bar.update
        return
    size = f"{total / 2**20:.1f} MB" if total is not None else "size unknown"
    log.info("Downloading %s (%s)", file.url, size)
    state = {"done": 0, "next": PROGRESS_LOG_BYTES}

    def update(n: int) -> None:
        state["done"] += n
        if state["done"] >= state["next"]:
            state["next"] += PROGRESS_LOG_BYTES
            log.info("%s: %.1f MB of %s", file.name, state["done"] / 2**20, size)

    yield update


def _fetch_once(file: RemoteFile, target: Path, timeout: float) -> None:
    """One attempt: stream into a temporary file, check length and md5, rename to ``target``."""
    request = urllib.request.Request(file.url, headers={"User-Agent": USER_AGENT})
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    with atomic_write(target) as out:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.strip().isdigit() else None
            with _progress(file, declared) as update:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    update(len(chunk))
        if declared is not None and received != declared:
            raise _BadDownload(f"truncated: received {received} of {declared} bytes")
        if md5.hexdigest() != file.md5:
            raise _BadDownload(
                f"md5 mismatch: expected {file.md5}, got {md5.hexdigest()} ({received} bytes)"
            )


def download_url(
    file: RemoteFile,
    dest: str | os.PathLike,
    folder: str = "",
    *,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``file.url`` to ``dest/file.name`` and verify its md5; return that path.

    Each attempt has ``timeout`` seconds (default: ``download_timeout()``) to connect and for
    every read, so a server that accepts and never answers fails in about ``timeout`` seconds.
    Up to ``attempts`` attempts (default ``download_attempts()``), sleeping ``backoff``,
    ``2 * backoff``, ... seconds (default ``DOWNLOAD_BACKOFF``) in between; short or wrong
    bytes count as a failed attempt. Only a verified file gets the final name. Raises
    :class:`DownloadError` naming the URL, the attempts, the last error and the fix (stage
    the file by hand in ``<mirror>/<folder>/``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    timeout = download_timeout() if timeout is None else float(timeout)
    attempts = download_attempts() if attempts is None else max(1, int(attempts))
    backoff = DOWNLOAD_BACKOFF if backoff is None else float(backoff)
    target = dest / file.name
    last: Exception | None = None
    made = 0
    for attempt in range(1, attempts + 1):
        made = attempt
        try:
            _fetch_once(file, target, timeout)
            return target
        except (OSError, http.client.HTTPException, ValueError, _BadDownload) as err:
            last = err
            if not _retryable(err) or attempt == attempts:
                break
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "Download of %s failed (attempt %d of %d: %s: %s); retrying in %.1f s",
                file.url, attempt, attempts, type(err).__name__, err, delay,
            )  # fmt: skip
            sleep(delay)
    gave_up = (
        "the error is not one that retrying can fix"
        if made < attempts
        else f"timeout {timeout:g} s to connect and per read"
    )
    mirror = f"<mirror>/{folder}/{file.name}" if folder else f"<mirror>/<data set>/{file.name}"
    raise DownloadError(
        f"Could not download {file.url} after {made} attempt{'s' if made > 1 else ''} "
        f"({gave_up}); last error: {type(last).__name__}: {last}. Fix: on a machine with "
        f"network access, download {file.url} (md5 {file.md5}) by hand into {mirror} and set "
        f"{MIRROR_ENV}=<mirror> (or data.mirror), or copy it to {target}; on a slow network, "
        f"raise the timeout with {TIMEOUT_ENV}=<seconds>.",
        file.url,
        made,
        last,
    )


# --- manifests of extracted and preprocessed files ----------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The sha256 of every file a data set's loader reads, recorded when they were produced.

    ``files`` maps paths relative to the manifest's folder to sha256; ``sources`` maps the
    verified downloads they came from to md5; ``preprocessing`` holds settings that shape the
    data beyond the files (tolstoi's line deletions).
    """

    dataset: str
    files: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over the data set's name, file hashes and preprocessing settings:
        the same data gives the same value on every machine and under every data root."""
        blob = json.dumps(
            {"dataset": self.dataset, "files": self.files, "preprocessing": self.preprocessing},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, folder: Path, names: Sequence[str], dataset: str, sources, preprocessing):
        files = {name: sha256_file(Path(folder) / name) for name in names}
        return cls(dataset, files, dict(sources), json.loads(json.dumps(preprocessing)))

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``; None if absent or unreadable (then it is rebuilt)."""
        path = Path(folder) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                return None
            return cls(raw["dataset"], raw["files"], raw["sources"], raw["preprocessing"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            warnings.warn(f"{path} is unreadable: rebuilding it.", DataWarning, stacklevel=3)
            return None

    def write(self, folder: Path) -> None:
        path = Path(folder) / MANIFEST_NAME
        content = {"format": MANIFEST_FORMAT, "algorithm": "sha256", **dataclasses.asdict(self)}
        try:
            with atomic_write(path) as out:
                out.write((json.dumps(content, indent=1, sort_keys=True) + "\n").encode())
        except OSError as err:
            raise DataError(f"Cannot write {path} ({err}): is the data root writable?") from err

    def mismatches(self, folder: Path) -> list[tuple[str, str, str | None]]:
        """(name, recorded sha256, actual sha256 or None if missing) of every differing file."""
        bad = []
        for name, recorded in self.files.items():
            path = Path(folder) / name
            actual = sha256_file(path) if path.is_file() else None
            if actual != recorded:
                bad.append((name, recorded, actual))
        return bad


def _existing(paths: dict[str, Path]) -> set[str]:
    return {str(p) for p in paths.values() if Path(p).is_file()}


def verify_or_rebuild(
    folder: Path,
    names: Sequence[str],
    *,
    dataset: str,
    sources: dict[str, str],
    downloads: dict[str, Path],
    fetch: Callable[[], None],
    rebuild: Callable[[list[str]], None],
    preprocessing: dict | None = None,
) -> Manifest:
    """Check the files ``names`` in ``folder`` against its manifest; rebuild them if needed.

    ``downloads`` maps each name to the verified original it comes from (md5-checked by the
    caller when present), ``fetch()`` obtains the missing ones (raising DataError),
    ``rebuild(some_names)`` produces those files (at least) from their downloads. Without a
    current manifest (first use, or different sources or settings) the files are rebuilt from
    the downloads and recorded.
    With one, files that differ are rebuilt with a DataWarning naming them; if a download is
    gone, a DataError names the files and the fix. Returns the (verified) manifest.
    """
    folder = Path(folder)
    preprocessing = dict(preprocessing or {})
    manifest = Manifest.read(folder)
    current = (
        manifest is not None
        and manifest.dataset == dataset
        and manifest.sources == sources
        and manifest.preprocessing == json.loads(json.dumps(preprocessing))
        and set(manifest.files) == set(names)
    )
    if not current:
        fetch()
        rebuild(list(names))
        fresh = Manifest.build(folder, names, dataset, sources, preprocessing)
        fresh.write(folder)
        return fresh
    bad = manifest.mismatches(folder)
    if not bad:
        return manifest
    listing = "\n".join(
        f"  {folder / name}: sha256 {actual or '(missing)'}, recorded {recorded}"
        for name, recorded, actual in bad
    )
    missing = sorted({str(downloads[name]) for name, _, _ in bad} - _existing(downloads))
    if missing:
        raise DataError(
            f"The {dataset} data under {folder} does not match its manifest "
            f"{folder / MANIFEST_NAME}:\n{listing}\nand the verified download it is produced "
            f"from is not there to regenerate it ({', '.join(missing)}). "
            f"Fix: delete {folder} and rerun `python scripts/prepare_data.py` (with network "
            f"access, or with {MIRROR_ENV}=<mirror> holding the original downloads)."
        )
    for name, recorded, actual in bad:
        warnings.warn(
            f"{folder / name} does not match its recorded checksum in {folder / MANIFEST_NAME} "
            f"(sha256 {actual or '(missing)'}, recorded {recorded}): regenerating it from the "
            f"verified download {downloads[name]}.",
            DataWarning,
            stacklevel=3,
        )
    rebuild([name for name, _, _ in bad])
    fresh = Manifest.build(folder, names, dataset, sources, preprocessing)
    if fresh.files != manifest.files:
        # Rebuilt from md5-verified downloads, so the files are right and the manifest was
        # not (edited, or written by a different extractor): record the truth.
        warnings.warn(
            f"{folder / MANIFEST_NAME} did not match the files regenerated from the verified "
            "downloads: rewriting it.",
            DataWarning,
            stacklevel=3,
        )
        fresh.write(folder)
    return fresh
