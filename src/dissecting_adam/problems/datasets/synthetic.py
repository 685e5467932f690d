"""Tiny generated data sets in the exact on-disk formats of the originals.

For tests and for timing only: a mirror built here holds IDX gz files, CIFAR python pickles
in their tar.gz archives, or a text file, and the returned sources carry their md5s, so the
generated files travel through the same staging, verification, extraction and loading code
as the real downloads. The loaders never fall back to these: a missing real data set is an
error.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .images import CIFAR10, CIFAR100, FASHION_MNIST, ImageSource
from .integrity import RemoteFile
from .tolstoi import TextSource


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _idx(array: np.ndarray) -> bytes:
    """IDX (big-endian header, uint8 payload) as Fashion-MNIST ships it, gzipped."""
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_fashion_mnist(mirror: Path, n_train: int = 64, n_test: int = 32, seed: int = 0):
    """Write ``mirror/fashion-mnist/*.gz``; return an ImageSource with their md5s."""
    rng = np.random.default_rng(seed)
    folder = Path(mirror) / FASHION_MNIST.folder
    folder.mkdir(parents=True, exist_ok=True)
    resources = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, arr, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{split}-{kind}-idx{dims}-ubyte.gz"
            blob = _idx(arr)
            (folder / name).write_bytes(blob)
            resources.append((name, _md5(blob)))
    cls = type("FashionMNIST", (FASHION_MNIST.dataset_cls,), {"resources": resources})
    return replace(FASHION_MNIST, dataset_cls=cls)


def _pickle(obj) -> bytes:
    # Protocol 2 with str keys: what Python 2's cPickle wrote, read back by torchvision
    # with encoding="latin1".
    return pickle.dumps(obj, protocol=2)


def _cifar_members(source: ImageSource, n_train: int, n_test: int, rng) -> dict[str, bytes]:
    k = source.num_classes

    def batch(n: int, label_key: str, start: int = 0) -> dict:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int((start + i) % k) for i in range(n)]  # example i has label i mod k
        out = {"batch_label": "generated", label_key: labels, "data": data}
        out["filenames"] = [f"img_{i}.png" for i in range(n)]
        if label_key == "fine_labels":
            out["coarse_labels"] = [i % 20 for i in labels]
        return out

    if k == 10:
        parts = np.array_split(np.arange(n_train), 5)
        members = {
            f"data_batch_{i + 1}": _pickle(batch(len(p), "labels", int(p[0]) if len(p) else 0))
            for i, p in enumerate(parts)
        }
        members["test_batch"] = _pickle(batch(n_test, "labels"))
        members["batches.meta"] = _pickle({"label_names": [f"class{i}" for i in range(10)]})
    else:
        members = {"train": _pickle(batch(n_train, "fine_labels"))}
        members["test"] = _pickle(batch(n_test, "fine_labels"))
        members["meta"] = _pickle({"fine_label_names": [f"fine{i}" for i in range(100)]})
    return members


def write_cifar(
    mirror: Path, which: str = "cifar-10", n_train: int = 50, n_test: int = 20, seed: int = 0
) -> ImageSource:
    """Write ``mirror/<which>/<which>-python.tar.gz`` (torchvision's layout inside)."""
    source = {"cifar-10": CIFAR10, "cifar-100": CIFAR100}[which]
    cls = source.dataset_cls
    members = _cifar_members(source, n_train, n_test, np.random.default_rng(seed))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{cls.base_folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    folder = Path(mirror) / source.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / cls.filename).write_bytes(buf.getvalue())
    md5 = {name: _md5(blob) for name, blob in members.items()}
    attrs = {
        "tgz_md5": _md5(buf.getvalue()),
        "train_list": [[name, md5[name]] for name, _ in cls.train_list],
        "test_list": [[name, md5[name]] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": md5[cls.meta["filename"]]},
    }
    return replace(source, dataset_cls=type(cls.__name__, (cls,), attrs))


def write_text(mirror: Path, text: str, deletions=((1, 2),)) -> TextSource:
    """Write ``mirror/war-and-peace/war-and-peace.txt`` with CRLF line ends, like the original."""
    blob = text.replace("\n", "\r\n").encode("utf-8")
    folder = Path(mirror) / TextSource.folder
    folder.mkdir(parents=True, exist_ok=True)
    source = TextSource()
    (folder / source.file.name).write_bytes(blob)
    file = RemoteFile(source.file.name, _md5(blob), source.file.url)
    return TextSource(file=file, line_deletions=tuple(deletions))
