"""Data faults: hanging, failing and lying download servers, and damaged extracted files.

Every server is a thread on 127.0.0.1 started and stopped by the test; every data set is
generated (``datasets.synthetic``). Timeouts and back-offs are set short, so each test takes
at most a couple of seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dissecting_adam import problems
from dissecting_adam.problems.datasets import download, images, synthetic, tolstoi
from dissecting_adam.problems.datasets.download import (
    ATTEMPTS_ENV,
    DEADLINE_ENV,
    MIN_RATE_ENV,
    TIMEOUT_ENV,
    download_url,
)
from dissecting_adam.problems.datasets.integrity import (
    MIRROR_ENV,
    DataError,
    DataWarning,
    DownloadError,
    MissingDataError,
    RemoteFile,
)
from dissecting_adam.problems.datasets.manifest import MANIFEST_NAME

TEXT = "".join(
    f"Line {i}: Well, Prince, so Genoa and Lucca are now family estates.\n" for i in range(40)
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Each test names its mirror and its timeouts; no proxy may sit between us and 127.0.0.1.
    for name in (MIRROR_ENV, TIMEOUT_ENV, ATTEMPTS_ENV, DEADLINE_ENV, MIN_RATE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "DOWNLOAD_BACKOFF", 0.01)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- local servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def silent_server():
    """Accepts every connection and never answers; yields (base URL, accepted connections)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        sock.close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler):
    """Serves ``handler`` (a request handler class) on 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def http_server(respond):
    """``respond(path, hit)`` -> (status, body, Content-Length); yields (base URL, paths hit).

    A Content-Length larger than the body sends the body and closes: a truncated download.
    """
    hits: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self):
            hits.append(self.path)
            status, body, length = respond(self.path, len(hits))
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    with serving(Handler) as url:
        yield url, hits


@contextlib.contextmanager
def trickle_server(size: int, period: float = 0.2, give_up: float = 5.0):
    """Announces ``size`` bytes, then sends one every ``period`` s; yields (base URL, hits).

    Each connection trickles for at most ``give_up`` s and then closes (a truncated body), so
    a client without a deadline or minimum rate still ends, after ``give_up`` s an attempt.
    """
    hits: list[str] = []
    stop = threading.Event()

    class Handler(QuietHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            end = time.monotonic() + give_up
            with contextlib.suppress(OSError):  # the client gave up and hung up
                while time.monotonic() < end and not stop.is_set():
                    self.wfile.write(b"x")
                    stop.wait(period)
            self.close_connection = True

    with serving(Handler) as url:
        try:
            yield url, hits
        finally:
            stop.set()  # end the trickles before the server shuts down


def serve_files(files: dict[str, bytes]):
    """The right bytes for every known path, 404 for the rest."""

    def respond(path, hit):
        body = files.get(path.lstrip("/"))
        if body is None:
            return 404, b"not found", 9
        return 200, body, len(body)

    return http_server(respond)


# --- downloads that hang, fail or lie ----------------------------------------------------------


def test_silent_server_times_out_retries_and_names_url_attempts_and_fix(tmp_path):
    blob = b"x" * 100
    sleeps: list[float] = []
    with silent_server() as (url, accepted):
        f = RemoteFile("t10k-labels-idx1-ubyte.gz", md5(blob), f"{url}/t10k-labels-idx1-ubyte.gz")
        start = time.monotonic()
        with pytest.raises(DownloadError) as err:
            download_url(
                f, tmp_path, "fashion-mnist", timeout=0.5, attempts=3, backoff=0.05,
                sleep=sleeps.append,
            )  # fmt: skip
        elapsed = time.monotonic() - start
        time.sleep(0.1)  # let the accept loop see the last connection
        assert len(accepted) == 3
    assert 1.2 < elapsed < 8, elapsed  # three timeouts of 0.5 s, not forever
    assert sleeps == [0.05, 0.1]  # exponential back-off between attempts
    e = err.value
    assert isinstance(e, MissingDataError) and e.attempts == 3 and e.url == f.url
    msg = str(e)
    assert f.url in msg and "after 3 attempts" in msg and "timed out" in msg
    assert f.md5 in msg and "<mirror>/fashion-mnist/t10k-labels-idx1-ubyte.gz" in msg
    assert f"{MIRROR_ENV}=<mirror>" in msg and TIMEOUT_ENV in msg
    assert leftovers(tmp_path) == []  # no partial file under any name


def test_timeout_and_attempts_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "0.3")
    monkeypatch.setenv(ATTEMPTS_ENV, "2")
    with silent_server() as (url, accepted):
        f = RemoteFile("a.txt", md5(b"a"), f"{url}/a.txt")
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"after 2 attempts \(timeout 0.3 s") as err:
            download_url(f, tmp_path)
        assert time.monotonic() - start < 5
    assert err.value.attempts == 2
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(DataError, match=f"{TIMEOUT_ENV}='soon' is not a positive number"):
        download_url(f, tmp_path)


@pytest.mark.parametrize("kind", ["wrong bytes", "truncated"])
def test_bad_body_is_retried_then_a_clear_error_and_nothing_is_left(tmp_path, kind):
    good = os.urandom(4000)

    def respond(path, hit):
        if kind == "wrong bytes":  # complete as announced, but not the published file
            return 200, good[:1000], 1000
        return 200, good[:1000], len(good)  # connection closed after 1000 of 4000 bytes

    with http_server(respond) as (url, hits):
        f = RemoteFile("file.bin", md5(good), f"{url}/file.bin")
        with pytest.raises(DownloadError) as err:
            download_url(f, tmp_path, "cifar-10", timeout=2, attempts=3)
    assert len(hits) == 3 and err.value.attempts == 3
    msg = str(err.value)
    assert f.url in msg and "after 3 attempts" in msg
    assert ("md5 mismatch" if kind == "wrong bytes" else "truncated: received 1000 of 4000") in msg
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("limit", ["min rate", "deadline"])
def test_trickling_server_hits_the_rate_floor_or_deadline_retries_and_leaves_nothing(
    tmp_path, limit
):
    # 5 bytes/s of an announced 1 MB: every read arrives well within the read timeout, so
    # only a limit on the whole attempt can stop it (without one: 5 s, then truncated).
    size = 1_000_000
    limits = (
        {"min_rate": 100, "rate_grace": 0.5, "deadline": 30}
        if limit == "min rate"
        else {"min_rate": 0, "deadline": 0.8}
    )
    sleeps: list[float] = []
    with trickle_server(size, period=0.2, give_up=5.0) as (url, hits):
        f = RemoteFile("cifar-100-python.tar.gz", md5(b""), f"{url}/cifar-100-python.tar.gz")
        start = time.monotonic()
        with pytest.raises(DownloadError) as err:
            download_url(
                f, tmp_path, "cifar-100", timeout=2, attempts=2, backoff=0.05,
                sleep=sleeps.append, **limits,
            )  # fmt: skip
        elapsed = time.monotonic() - start
    assert elapsed < 4, elapsed  # two attempts of about 0.6 s (rate) or 1 s (deadline)
    assert len(hits) == 2 and sleeps == [0.05]  # too slow is transient: retried
    e = err.value
    assert e.attempts == 2 and isinstance(e.last_error, download.DownloadTooSlow)
    msg = str(e)
    assert "\n" not in msg  # one line
    assert f.url in msg and "after 2 attempts" in msg
    assert re.search(rf"received \d+ of {size} bytes in \d+\.\d s \(\d+ B/s on average\)", msg)
    if limit == "min rate":
        assert "below the minimum average rate of 100 B/s (enforced after 0.5 s)" in msg
    else:
        assert "past the deadline of 0.8 s per attempt" in msg
    assert "retry later" in msg and "<mirror>/cifar-100/cifar-100-python.tar.gz" in msg
    assert f"{MIRROR_ENV}=<mirror>" in msg and MIN_RATE_ENV in msg and DEADLINE_ENV in msg
    assert leftovers(tmp_path) == []  # no partial file under any name


def test_deadline_and_min_rate_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, "0.5")
    monkeypatch.setenv(MIN_RATE_ENV, "1")  # 5 B/s passes: the deadline stops it
    with trickle_server(1000) as (url, hits):
        f = RemoteFile("a.bin", md5(b""), f"{url}/a.bin")
        with pytest.raises(DownloadError, match=r"past the deadline of 0.5 s per attempt"):
            download_url(f, tmp_path, timeout=2, attempts=1, rate_grace=0)
    assert len(hits) == 1 and leftovers(tmp_path) == []
    monkeypatch.setenv(MIN_RATE_ENV, "-1")
    with pytest.raises(DataError, match=f"{MIN_RATE_ENV}='-1' is not a positive number"):
        download_url(f, tmp_path)


def test_not_found_is_not_retried(tmp_path):
    with serve_files({}) as (url, hits):
        f = RemoteFile("gone.gz", md5(b""), f"{url}/gone.gz")
        with pytest.raises(DownloadError, match="after 1 attempt .*not one that retrying"):
            download_url(f, tmp_path, timeout=2, attempts=3)
    assert len(hits) == 1 and leftovers(tmp_path) == []


def test_transient_failure_then_success(tmp_path):
    good = os.urandom(3000)
    sleeps: list[float] = []

    def respond(path, hit):
        return (503, b"busy", 4) if hit == 1 else (200, good, len(good))

    with http_server(respond) as (url, hits):
        f = RemoteFile("file.bin", md5(good), f"{url}/file.bin")
        path = download_url(f, tmp_path, timeout=2, attempts=3, backoff=0.2, sleep=sleeps.append)
    assert len(hits) == 2 and sleeps == [0.2]
    assert path.read_bytes() == good and leftovers(tmp_path) == ["file.bin"]


def test_progress_is_logged_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, caplog):
    good = os.urandom(5000)
    monkeypatch.setattr(download, "PROGRESS_MIN_BYTES", 1000)
    monkeypatch.setattr(download, "PROGRESS_LOG_BYTES", 2000)
    with serve_files({"big.bin": good}) as (url, _):
        with caplog.at_level(logging.INFO, logger=download.__name__):
            download_url(RemoteFile("big.bin", md5(good), f"{url}/big.bin"), tmp_path, timeout=2)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"Downloading {url}/big.bin") for line in lines)
    assert any(line.startswith("big.bin: ") and "MB of" in line for line in lines)


# --- whole data sets from a local server ------------------------------------------------------


def fmnist_served_by(url: str, mirror: Path):
    """A generated Fashion-MNIST whose home URL is ``url`` (and its files, by name)."""
    source = synthetic.write_fashion_mnist(mirror, n_train=30, n_test=10)
    cls = type("FashionMNIST", (source.dataset_cls,), {"mirrors": [f"{url}/"]})
    files = {p.name: p.read_bytes() for p in (mirror / "fashion-mnist").iterdir()}
    return replace(source, dataset_cls=cls), files


def test_problem_downloads_verifies_and_loads_from_a_local_server(tmp_path):
    mirror = tmp_path / "generated"
    files: dict[str, bytes] = {}  # filled once the URL is known
    with serve_files(files) as (url, hits):
        source, blobs = fmnist_served_by(url, mirror)
        files.update(blobs)
        p = problems.load("fmnist_2c2d", source=source, data_root=str(tmp_path / "data"))
        data = p.data
    assert sorted(h.lstrip("/") for h in hits) == sorted(blobs)
    assert torch.equal(data.train_labels, torch.arange(30) % 10)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    for name, blob in blobs.items():
        assert (raw / name).read_bytes() == blob  # the verified downloads stay
    assert not [n for n in leftovers(raw) if n.endswith(".part")]
    assert (tmp_path / "data" / "FashionMNIST" / MANIFEST_NAME).is_file()
    assert len(p.data_fingerprint()) == 16


def test_problem_with_a_silent_server_fails_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    monkeypatch.setenv(ATTEMPTS_ENV, "2")
    with silent_server() as (url, accepted):
        source, _ = fmnist_served_by(url, tmp_path / "generated")
        p = problems.load("fmnist_2c2d", source=source, data_root=str(tmp_path / "data"))
        start = time.monotonic()
        with pytest.raises(MissingDataError) as err:
            p.prepare()
        assert time.monotonic() - start < 8
    msg = str(err.value)
    assert "Could not download the fashion-mnist data" in msg and "after 2 attempts" in msg
    assert "<mirror>/fashion-mnist/ and set DATA_MIRROR=<mirror>" in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg  # every file to stage is listed
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert not [n for n in leftovers(raw) if not n.startswith(".")]  # nothing final
    assert not [n for n in leftovers(raw) if n.endswith(".part")]


def test_text_downloads_from_a_local_server(tmp_path):
    source = synthetic.write_text(tmp_path / "generated", TEXT)
    blob = (tmp_path / "generated" / "war-and-peace" / "war-and-peace.txt").read_bytes()
    with serve_files({"w.txt": blob}) as (url, hits):
        source = replace(source, file=replace(source.file, url=f"{url}/w.txt"))
        text = tolstoi.load_tolstoi(tmp_path / "data", source=source)
    assert len(hits) == 1 and text.train.numel() > 0 and len(text.fingerprint) == 16


# --- damaged extracted files -----------------------------------------------------------------


def fmnist(tmp_path, seed=0):
    mirror = tmp_path / f"mirror{seed}"
    return synthetic.write_fashion_mnist(mirror, n_train=30, n_test=10, seed=seed), mirror


def zero_bytes(path: Path) -> None:
    """Zero every byte, keeping the size and the modification time."""
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_zeroed_test_labels_are_detected_and_regenerated(tmp_path):
    source, mirror = fmnist(tmp_path)
    root = tmp_path / "data"
    first = problems.load("fmnist_2c2d", source=source, data_root=str(root), mirror=str(mirror))
    first.prepare()
    fingerprint = first.data_fingerprint()
    labels = root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    good = labels.read_bytes()
    zero_bytes(labels)
    # No mirror now: the verified archive in the data root is the source of the repair.
    p = problems.load("fmnist_2c2d", source=source, data_root=str(root))
    with pytest.warns(DataWarning, match="t10k-labels-idx1-ubyte does not match its recorded"):
        data = p.load_data()
    assert torch.equal(data.test_labels, torch.arange(10) % 10)
    assert labels.read_bytes() == good
    assert data.fingerprint == p.data_fingerprint() == fingerprint


def test_zeroed_labels_without_their_download_give_a_clear_error(tmp_path):
    source, mirror = fmnist(tmp_path)
    root = tmp_path / "data"
    images.load_images(source, root, mirror)
    raw = root / "FashionMNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    zero_bytes(raw / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError) as err:
        images.load_images(source, root)
    msg = str(err.value)
    assert f"{raw / 't10k-labels-idx1-ubyte'}: sha256" in msg
    assert f"not there to regenerate it ({raw / 't10k-labels-idx1-ubyte.gz'})" in msg
    assert f"delete {root / 'FashionMNIST'} and rerun" in msg
    # With the mirror the download is staged again and the file regenerated.
    with pytest.warns(DataWarning):
        data = images.load_images(source, root, mirror)
    assert torch.equal(data.test_labels, torch.arange(10) % 10)


def test_flipped_byte_in_an_extracted_cifar_batch_is_regenerated(tmp_path):
    mirror, root = tmp_path / "mirror", tmp_path / "data"
    source = synthetic.write_cifar(mirror, "cifar-10", n_train=20, n_test=10)
    before = images.load_images(source, root, mirror)
    batch = root / "cifar-10-batches-py" / "test_batch"
    blob = bytearray(batch.read_bytes())
    blob[-100] ^= 0xFF
    batch.write_bytes(bytes(blob))
    with pytest.warns(DataWarning, match="test_batch does not match"):
        after = images.load_images(source, root)
    assert torch.equal(after.test_images, before.test_images)
    assert after.fingerprint == before.fingerprint


def test_extracted_files_without_a_manifest_are_rebuilt_from_the_download(tmp_path):
    # A data root prepared before manifests existed: the extracted files are not trusted.
    source, mirror = fmnist(tmp_path)
    root = tmp_path / "data"
    images.load_images(source, root, mirror)
    (root / "FashionMNIST" / MANIFEST_NAME).unlink()
    zero_bytes(root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte")
    data = images.load_images(source, root)
    assert torch.equal(data.test_labels, torch.arange(10) % 10)
    assert (root / "FashionMNIST" / MANIFEST_NAME).is_file()


def test_edited_manifest_is_rewritten_from_the_verified_download(tmp_path):
    source, mirror = fmnist(tmp_path)
    root = tmp_path / "data"
    fingerprint = images.load_images(source, root, mirror).fingerprint
    path = root / "FashionMNIST" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"]["raw/train-labels-idx1-ubyte"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.warns(DataWarning) as caught:
        data = images.load_images(source, root)
    assert any("MANIFEST.json did not match" in str(w.message) for w in caught)
    assert data.fingerprint == fingerprint
    assert json.loads(path.read_text())["files"]["raw/train-labels-idx1-ubyte"] != "0" * 64


def test_fingerprint_is_stable_and_changes_with_the_data(tmp_path, recwarn):
    source0, mirror0 = fmnist(tmp_path, seed=0)
    source1, mirror1 = fmnist(tmp_path, seed=1)

    def fingerprint(source, mirror, root):
        p = problems.load("fmnist_2c2d", source=source, data_root=str(root), mirror=str(mirror))
        return p.data_fingerprint()

    a = fingerprint(source0, mirror0, tmp_path / "a")
    assert a == fingerprint(source0, mirror0, tmp_path / "a")  # again: same
    assert a == fingerprint(source0, mirror0, tmp_path / "b")  # another root: same
    assert a != fingerprint(source1, mirror1, tmp_path / "c")  # other images: different
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]

    text = tmp_path / "text"
    t0 = synthetic.write_text(text, TEXT)
    fp0 = problems.load(
        "tolstoi_char_rnn", source=t0, data_root=str(tmp_path / "t0"), mirror=str(text)
    )
    assert fp0.data_fingerprint() == fp0.data.fingerprint
    t1 = synthetic.write_text(tmp_path / "text1", TEXT, deletions=((1, 3),))
    fp1 = problems.load(
        "tolstoi_char_rnn",
        source=t1,
        data_root=str(tmp_path / "t1"),
        mirror=str(tmp_path / "text1"),
    )
    assert fp0.data_fingerprint() != fp1.data_fingerprint()  # other preprocessing: different


def test_legacy_processed_files_cannot_bypass_the_verified_raw_files(tmp_path):
    # Old torchvision releases cached MNIST as processed/*.pt, which torchvision would load in
    # preference to the raw files; no manifest covers them, so they must be ignored.
    source, mirror = fmnist(tmp_path)
    root = tmp_path / "data"
    processed = root / "FashionMNIST" / "processed"
    processed.mkdir(parents=True)
    fake = (torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    for name in ("training.pt", "test.pt"):
        torch.save(fake, processed / name)
    data = images.load_images(source, root, mirror)
    assert torch.equal(data.test_labels, torch.arange(10) % 10)
