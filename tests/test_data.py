"""Data sets: generated files in the originals' formats, the real copies, and every error.

The real Fashion-MNIST and War and Peace are read from the mirror in ``$DATA_MIRROR`` or
``../shared/data``; those tests are skipped where it does not exist.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.datasets.utils import calculate_md5

from dissecting_adam import problems
from dissecting_adam.problems.datasets import download, images, synthetic, tolstoi
from dissecting_adam.problems.datasets.integrity import (
    MIRROR_ENV,
    ChecksumError,
    DataWarning,
    MissingDataError,
)

REAL_MIRROR = Path(
    os.environ.get(MIRROR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data"
)
needs_fmnist = pytest.mark.skipif(
    not (REAL_MIRROR / "fashion-mnist").is_dir(), reason=f"no Fashion-MNIST in {REAL_MIRROR}"
)
needs_tolstoi = pytest.mark.skipif(
    not (REAL_MIRROR / "war-and-peace").is_dir(), reason=f"no War and Peace in {REAL_MIRROR}"
)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    # Each test names its mirror; an inherited $DATA_MIRROR must not change what it tests.
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def write(kind: str, mirror: Path):
    if kind == "fashion-mnist":
        return synthetic.write_fashion_mnist(mirror, n_train=30, n_test=10)
    return synthetic.write_cifar(mirror, kind, n_train=30, n_test=10)


# --- generated files through the real loading code -------------------------------------


@pytest.mark.parametrize(
    "kind, shape, classes",
    [
        ("fashion-mnist", (1, 28, 28), 10),
        ("cifar-10", (3, 32, 32), 10),
        ("cifar-100", (3, 32, 32), 100),
    ],
)
def test_generated_images_load_through_torchvision(tmp_path, kind, shape, classes):
    source = write(kind, tmp_path / "mirror")
    data = images.load_images(source, tmp_path / "data", tmp_path / "mirror")
    assert data.train_images.shape == (30, *shape) and data.test_images.shape == (10, *shape)
    assert data.train_images.dtype == torch.uint8
    assert torch.equal(data.train_labels, torch.arange(30) % classes)
    # The originals were copied into torchvision's layout and verified there.
    files, sub = images.remote_files(source)
    for f in files:
        assert (tmp_path / "data" / sub / f.name).is_file()


def test_cifar_pickles_are_read_in_torchvision_channel_order(tmp_path):
    source = write("cifar-10", tmp_path / "mirror")
    data = images.load_images(source, tmp_path / "data", tmp_path / "mirror")
    with open(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]  # (N, 3072): R plane, G, B
    assert torch.equal(data.train_images[0].flatten(), torch.from_numpy(raw[0]))


def test_mirror_from_environment(tmp_path, monkeypatch):
    source = write("fashion-mnist", tmp_path / "mirror")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    assert len(images.load_images(source, tmp_path / "data").train_labels) == 30


def test_damaged_extracted_cifar_is_rebuilt_from_the_verified_archive(tmp_path):
    source = write("cifar-10", tmp_path / "mirror")
    images.load_images(source, tmp_path / "data", tmp_path / "mirror")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    data = images.load_images(source, tmp_path / "data")  # no mirror needed now
    assert len(data.train_labels) == 30


def test_damaged_extracted_fmnist_is_rebuilt_from_the_verified_archives(tmp_path):
    source = write("fashion-mnist", tmp_path / "mirror")
    images.load_images(source, tmp_path / "data", tmp_path / "mirror")
    raw = tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    good = raw.read_bytes()
    raw.write_bytes(good[:1000])
    with pytest.warns(DataWarning, match="train-images-idx3-ubyte does not match"):
        data = images.load_images(source, tmp_path / "data")
    assert raw.read_bytes() == good and len(data.train_labels) == 30


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fashion-mnist", "cifar-10"])
def test_corrupt_mirror_file_names_file_both_md5s_and_fix(tmp_path, kind):
    source = write(kind, tmp_path / "mirror")
    files, _ = images.remote_files(source)
    bad = tmp_path / "mirror" / kind / files[0].name
    blob = bytearray(bad.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError) as err:
        images.load_images(source, tmp_path / "data", tmp_path / "mirror")
    msg = str(err.value)
    assert str(bad) in msg and files[0].md5 in msg
    assert f"expected md5 {files[0].md5}, got {calculate_md5(bad)}" in msg
    assert "replace" in msg and files[0].url in msg


def test_corrupt_cached_file_is_reported_not_used(tmp_path):
    mirror, data = tmp_path / "mirror", tmp_path / "data"
    source = write("cifar-10", mirror)
    images.load_images(source, data, mirror)
    archive = data / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-10])  # truncated
    with pytest.raises(ChecksumError, match="truncated or corrupt: delete it"):
        images.load_images(source, data)


def test_missing_mirror_says_how_to_create_it(tmp_path):
    p = problems.load("fmnist_2c2d", mirror=str(tmp_path / "nowhere"), data_root=str(tmp_path))
    with pytest.raises(MissingDataError, match="does not exist.*one folder per data set"):
        p.prepare()


def test_file_missing_from_mirror_says_where_to_get_it(tmp_path):
    (tmp_path / "mirror" / "war-and-peace").mkdir(parents=True)
    with pytest.raises(MissingDataError) as err:
        tolstoi.load_tolstoi(tmp_path / "data", tmp_path / "mirror")
    msg = str(err.value)
    assert "war-and-peace.txt is missing" in msg
    assert tolstoi.WAR_AND_PEACE.url in msg and tolstoi.WAR_AND_PEACE.md5 in msg


@pytest.mark.parametrize(
    "name, module, file, md5, folder",
    [
        (
            "cifar10_3c3d",
            "cifar",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10",
        ),
        # torchvision's MNIST download turns the URLError into a RuntimeError.
        (
            "fmnist_2c2d",
            "mnist",
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "fashion-mnist",
        ),
    ],
)
def test_no_network_and_no_mirror_explains_staging_images(
    tmp_path, monkeypatch, name, module, file, md5, folder
):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(download, "_fetch_once", offline)
    with pytest.raises(MissingDataError) as err:
        problems.load(name, data_root=str(tmp_path)).prepare()
    msg = str(err.value)
    assert file in msg and md5 in msg and "Could not download" in msg
    assert f"<mirror>/{folder}/ and set {MIRROR_ENV}=<mirror>" in msg


def test_no_network_and_no_mirror_explains_staging_text(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tolstoi, "download_url", offline)
    with pytest.raises(MissingDataError, match="<mirror>/war-and-peace/"):
        tolstoi.load_tolstoi(tmp_path / "data")


# --- War and Peace preprocessing ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
@pytest.mark.parametrize("first, last", [(1, 2), (2, 4), (3, 9), (5, 5)])
def test_delete_lines_is_seds_delete(tmp_path, first, last):
    data = b"\xef\xbb\xbfa\r\nb\r\n\r\nc\rd\r\ne\r\nf"
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    subprocess.run(["sed", "-i", f"{first},{last}d", str(path)], check=True)
    assert tolstoi.delete_lines(data, first, last) == path.read_bytes()


def test_vocabulary_by_frequency_ties_by_first_occurrence():
    vocab, ids = tolstoi.build_vocab("abcbcc d")
    assert vocab == ("c", "b", "a", " ", "d")
    assert ids.tolist() == [2, 1, 0, 1, 0, 0, 3, 4]


def test_split_uses_deepobs_ceil():
    train, test = tolstoi.split_ids(torch.arange(11).numpy())
    assert (len(train), len(test)) == (9, 2)  # ceil(0.8 * 11) = 9


# --- the real data sets ------------------------------------------------------------------


@needs_fmnist
def test_real_fashion_mnist(tmp_path):
    p = problems.load("fmnist_2c2d", mirror=str(REAL_MIRROR), data_root=str(tmp_path))
    d = p.data
    assert d.train_images.shape == (60_000, 1, 28, 28) and d.test_images.shape == (
        10_000,
        1,
        28,
        28,
    )
    assert torch.equal(torch.bincount(d.train_labels), torch.full((10,), 6_000))
    assert torch.equal(torch.bincount(d.test_labels), torch.full((10,), 1_000))
    batch = next(p.train_batches(0))
    assert (
        batch.inputs.shape == (64, 1, 28, 28) and 0 <= batch.inputs.min() <= batch.inputs.max() <= 1
    )
    model = p.build_model(0)
    p.training_loss(model, batch).backward()
    assert sum(len(b.targets) for b in p.eval_batches("train_eval")) == 10_000


@needs_tolstoi
def test_real_war_and_peace(tmp_path):
    p = problems.load("tolstoi_char_rnn", mirror=str(REAL_MIRROR), data_root=str(tmp_path))
    d = p.data
    assert len(d.vocab) == 83
    assert d.train.numel() + d.test.numel() == 3_266_185
    assert (d.train.numel(), d.test.numel()) == (2_612_948, 653_237)
    # DeepOBS's own vocabulary code: a Counter sorted by descending count.
    text = tolstoi.deepobs_text((REAL_MIRROR / "war-and-peace" / "war-and-peace.txt").read_bytes())
    counts = sorted(collections.Counter(text).items(), key=lambda x: -x[1])
    assert d.vocab == tuple(c for c, _ in counts)
    assert "".join(d.vocab[i] for i in d.train[:13].tolist()) == "WAR AND PEACE"
    batch = next(p.train_batches(0))
    assert batch.inputs.shape == (50, 50)
    model = p.build_model(0)
    p.training_loss(model, batch).backward()


@needs_tolstoi
def test_prepare_data_script_with_the_mirror(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"
    env = {**os.environ, MIRROR_ENV: str(REAL_MIRROR)}
    # War and Peace is in the mirror; CIFAR-10 is not, which must fail with instructions.
    cmd = [sys.executable, str(script), "problems=[tolstoi_char_rnn,cifar10_3c3d]"]
    out = subprocess.run(
        [*cmd, f"data.root={tmp_path}"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "tolstoi_char_rnn: ready" in out.stdout
    assert (tmp_path / "tolstoi" / "war-and-peace.txt").is_file()
    assert out.returncode == 1 and "cifar-10-python.tar.gz is missing" in out.stderr
