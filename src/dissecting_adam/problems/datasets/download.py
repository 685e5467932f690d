"""Downloads of original files, with timeouts, retries, back-off and progress.

A download goes to a temporary name in its folder, with connect and read timeouts, a
deadline for the whole attempt and a minimum average rate (so a server that trickles a byte
at a time cannot keep it alive for hours), and a bounded number of attempts (exponential
back-off in between), and gets its final name only once its md5 is right: a partial or wrong
file never stays behind under the final name. Large downloads show progress (a tqdm bar on a
terminal, else INFO log lines). A download that fails for good raises
:class:`~.integrity.DownloadError`, which says how to stage the file by hand in the mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from .integrity import MIRROR_ENV, DataError, DownloadError, RemoteFile, atomic_write

log = logging.getLogger(__name__)

#: Environment variables overriding the download timeout (seconds), number of attempts,
#: deadline per attempt (seconds) and minimum average rate (bytes per second).
TIMEOUT_ENV = "DISSECTING_ADAM_DOWNLOAD_TIMEOUT"
ATTEMPTS_ENV = "DISSECTING_ADAM_DOWNLOAD_ATTEMPTS"
DEADLINE_ENV = "DISSECTING_ADAM_DOWNLOAD_DEADLINE"
MIN_RATE_ENV = "DISSECTING_ADAM_DOWNLOAD_MIN_RATE"
#: Seconds allowed to connect and for every read of a download (not for the whole file).
DOWNLOAD_TIMEOUT = 30.0
#: Seconds allowed for a whole attempt, connecting included (checked after every read, so it
#: can be overshot by at most one read timeout). At the minimum rate below, the largest files
#: (the CIFAR-10 and CIFAR-100 archives, 170 MB) take 3400 s: the deadline is a backstop for
#: a download that starts fast and then slows to a crawl, whose average stays above the floor.
DOWNLOAD_DEADLINE = 3600.0
#: Minimum average rate of an attempt in bytes per second (received bytes over the time since
#: the attempt started), enforced once ``DOWNLOAD_RATE_GRACE`` seconds have passed. 50 kB/s
#: (0.4 Mbit/s) finishes every file of the project within ``DOWNLOAD_DEADLINE`` (Fashion-MNIST's
#: 26 MB in 9 min) and stops a trickling server after about a minute.
DOWNLOAD_MIN_RATE = 50_000.0
#: Seconds of an attempt before the minimum rate applies (connection set-up, slow start).
DOWNLOAD_RATE_GRACE = 60.0
#: Attempts per file before giving up.
DOWNLOAD_ATTEMPTS = 3
#: Seconds slept before the second attempt, doubled before every further one.
DOWNLOAD_BACKOFF = 2.0
#: Downloads at least this large show progress: a tqdm bar where stderr is a terminal, else a
#: log line (INFO) every ``PROGRESS_LOG_BYTES``.
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_LOG_BYTES = 8 << 20
USER_AGENT = "dissecting-adam/1 (Python urllib)"
_CHUNK = 1 << 16


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


def download_deadline() -> float:
    """Seconds allowed for a whole attempt: ``$DISSECTING_ADAM_DOWNLOAD_DEADLINE`` or
    ``DOWNLOAD_DEADLINE``."""
    return _positive_env(DEADLINE_ENV, DOWNLOAD_DEADLINE, float)


def download_min_rate() -> float:
    """Minimum average rate in bytes per second: ``$DISSECTING_ADAM_DOWNLOAD_MIN_RATE`` or
    ``DOWNLOAD_MIN_RATE``."""
    return _positive_env(MIN_RATE_ENV, DOWNLOAD_MIN_RATE, float)


class _BadDownload(Exception):
    """The server answered, but not with the published file (short or wrong bytes)."""


class DownloadTooSlow(TimeoutError):
    """An attempt ran past its deadline or below the minimum average rate (retried)."""


def _amount(n: float) -> str:
    """``n`` bytes for people: ``7 B``, ``48.8 kB``, ``169.0 MB``."""
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _check_pace(
    received: int,
    declared: int | None,
    elapsed: float,
    deadline: float,
    min_rate: float,
    grace: float,
) -> None:
    """Raise :class:`DownloadTooSlow` if the attempt is past ``deadline`` or, after ``grace``
    seconds, its average rate is below ``min_rate``."""
    if elapsed > deadline:
        limit = f"past the deadline of {deadline:g} s per attempt"
    elif elapsed > grace and received < min_rate * elapsed:
        limit = (
            f"below the minimum average rate of {_amount(min_rate)}/s (enforced after {grace:g} s)"
        )
    else:
        return
    of = f" of {declared}" if declared is not None else ""
    raise DownloadTooSlow(
        f"received {received}{of} bytes in {elapsed:.1f} s "
        f"({_amount(received / max(elapsed, 1e-9))}/s on average), {limit}"
    )


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


def _fetch_once(
    file: RemoteFile,
    target: Path,
    timeout: float,
    deadline: float = math.inf,
    min_rate: float = 0.0,
    grace: float = 0.0,
) -> None:
    """One attempt: stream into a temporary file, check length and md5, rename to ``target``.

    After every read the attempt's deadline and minimum average rate are checked; ``read1``
    returns whatever one read of the socket brings, so a trickle cannot hide in a buffered
    read that waits for a whole chunk.
    """
    request = urllib.request.Request(file.url, headers={"User-Agent": USER_AGENT})
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    start = time.monotonic()
    with atomic_write(target) as out:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.strip().isdigit() else None
            with _progress(file, declared) as update:
                while chunk := response.read1(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    update(len(chunk))
                    elapsed = time.monotonic() - start
                    _check_pace(received, declared, elapsed, deadline, min_rate, grace)
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
    deadline: float | None = None,
    min_rate: float | None = None,
    rate_grace: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``file.url`` to ``dest/file.name`` and verify its md5; return that path.

    Each attempt has ``timeout`` seconds (default: ``download_timeout()``) to connect and for
    every read, so a server that accepts and never answers fails in about ``timeout`` seconds.
    A whole attempt has ``deadline`` seconds (default ``download_deadline()``) and, once
    ``rate_grace`` seconds (default ``DOWNLOAD_RATE_GRACE``) have passed, must average at
    least ``min_rate`` bytes per second (default ``download_min_rate()``; ``0`` turns the
    check off), so a server that trickles bytes fails too (:class:`DownloadTooSlow`).
    Up to ``attempts`` attempts (default ``download_attempts()``), sleeping ``backoff``,
    ``2 * backoff``, ... seconds (default ``DOWNLOAD_BACKOFF``) in between; short, wrong or
    too slow bytes count as a failed attempt. Only a verified file gets the final name.
    Raises :class:`DownloadError` naming the URL, the attempts, the last error and the fix
    (stage the file by hand in ``<mirror>/<folder>/``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    timeout = download_timeout() if timeout is None else float(timeout)
    attempts = download_attempts() if attempts is None else max(1, int(attempts))
    backoff = DOWNLOAD_BACKOFF if backoff is None else float(backoff)
    deadline = download_deadline() if deadline is None else float(deadline)
    min_rate = download_min_rate() if min_rate is None else float(min_rate)
    grace = DOWNLOAD_RATE_GRACE if rate_grace is None else float(rate_grace)
    target = dest / file.name
    last: Exception | None = None
    made = 0
    for attempt in range(1, attempts + 1):
        made = attempt
        try:
            _fetch_once(file, target, timeout, deadline, min_rate, grace)
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
    slow = isinstance(last, DownloadTooSlow)
    if made < attempts:
        gave_up = "the error is not one that retrying can fix"
    elif slow:
        gave_up = (
            f"limits: {deadline:g} s per attempt, at least {_amount(min_rate)}/s on average "
            f"after {grace:g} s"
        )
    else:
        gave_up = f"timeout {timeout:g} s to connect and per read"
    if slow:
        tune = (
            f"on a slow but steady network, lower the minimum rate with "
            f"{MIN_RATE_ENV}=<bytes per second> or raise the deadline with "
            f"{DEADLINE_ENV}=<seconds>"
        )
    else:
        tune = f"on a slow network, raise the timeout with {TIMEOUT_ENV}=<seconds>"
    mirror = f"<mirror>/{folder}/{file.name}" if folder else f"<mirror>/<data set>/{file.name}"
    raise DownloadError(
        f"Could not download {file.url} after {made} attempt{'s' if made > 1 else ''} "
        f"({gave_up}); last error: {type(last).__name__}: {last}. Fix: "
        f"{'retry later, when the server or network is faster; or ' if slow else ''}on a "
        f"machine with network access, download {file.url} (md5 {file.md5}) by hand into "
        f"{mirror} and set {MIRROR_ENV}=<mirror> (or data.mirror), or copy it to {target}; "
        f"{tune}.",
        file.url,
        made,
        last,
    )
