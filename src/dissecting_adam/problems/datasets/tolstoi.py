"""War and Peace for ``tolstoi_char_rnn``: download, md5 check and DeepOBS's preprocessing.

DeepOBS (``deepobs_prepare_data.sh`` and ``_tolstoi_preprocess.py``) downloads one text file,
deletes lines with three ``sed`` commands, reads the rest as UTF-8 (keeping the CRLF line
ends: ``codecs.open`` does not translate them), orders the vocabulary by descending frequency
(ties by first occurrence, as a stable sort of a ``Counter`` gives) and splits the character
ids contiguously, the first ``ceil(0.8 n)`` for training. This module does exactly that, as
pure functions on bytes and arrays; only ``prepare_tolstoi`` and ``load_tolstoi`` touch the
file system. The text is md5-verified on every load (the bytes that are preprocessed), and
``<root>/tolstoi/MANIFEST.json`` records its sha256 and the preprocessing settings, whose
short hash is the data's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import download_url
from .integrity import (
    ChecksumError,
    DataError,
    RemoteFile,
    check_cached,
    data_lock,
    download_failed,
    resolve_mirror,
    stage_from_mirror,
)
from .manifest import Manifest, verify_or_rebuild

WAR_AND_PEACE = RemoteFile(
    "war-and-peace.txt",
    "80737bfbfc7e820768045ac8cf654c0c",
    "https://github.com/AllenDowney/fluent-python-notebooks/raw/master/attic/sequences/"
    "war-and-peace.txt",
)

#: DeepOBS's ``sed -i 'a,bd'`` deletions, applied in this order (1-based, inclusive).
DEEPOBS_LINE_DELETIONS = ((1, 29), (5, 775), (63850, 64207))
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TextSource:
    """The text file and the folder it has in the mirror (tests substitute a small one)."""

    folder: str = "war-and-peace"
    file: RemoteFile = WAR_AND_PEACE
    line_deletions: tuple[tuple[int, int], ...] = DEEPOBS_LINE_DELETIONS


@dataclass(frozen=True)
class TextData:
    """Character ids (int64) of the two contiguous splits and the vocabulary.

    ``fingerprint``: the short hash of the verified text and preprocessing (``Manifest``).
    """

    train: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    fingerprint: str = ""


def delete_lines(data: bytes, first: int, last: int) -> bytes:
    """``sed 'first,lastd'`` on bytes: lines end at ``\\n`` only (``\\r`` stays in the line)."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return b"".join(lines[: first - 1] + lines[last:])


def deepobs_text(raw: bytes, deletions=DEEPOBS_LINE_DELETIONS) -> str:
    """The text DeepOBS trains on: the line deletions in order, then UTF-8 decoding."""
    for first, last in deletions:
        raw = delete_lines(raw, first, last)
    return raw.decode("utf-8")


def build_vocab(text: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Vocabulary by descending frequency (ties: first occurrence) and the id of every char."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, first, inverse, counts = np.unique(
        codes, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.lexsort((first, -counts))  # primary key: -count; ties: first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    vocab = tuple(chr(int(c)) for c in uniq[order])
    return vocab, rank[inverse.ravel()].astype(np.int64)


def split_ids(ids: np.ndarray, test_fraction: float = TEST_FRACTION):
    """Contiguous split; DeepOBS's exact float expression decides the boundary."""
    train_size = int(np.ceil((1.0 - test_fraction) * np.size(ids)))
    return ids[:train_size], ids[train_size:]


def preprocess(raw: bytes, deletions=DEEPOBS_LINE_DELETIONS) -> TextData:
    """Raw downloaded bytes to the two splits and the vocabulary (pure function)."""
    vocab, ids = build_vocab(deepobs_text(raw, deletions))
    train, test = split_ids(ids)
    return TextData(torch.from_numpy(train.copy()), torch.from_numpy(test.copy()), vocab)


def _prepare(root: Path, mirror, source: TextSource) -> Path:
    dest = root / "tolstoi"
    files = [source.file]
    mirror_path = resolve_mirror(mirror)
    if mirror_path is not None:
        stage_from_mirror(mirror_path, source.folder, files, dest)
    check_cached(dest, files)
    path = dest / source.file.name
    if not path.is_file():
        try:
            download_url(source.file, dest, source.folder)
        except (DataError, OSError) as err:
            raise download_failed(files, dest, source.folder, err) from err
        check_cached(dest, files)
    return path


def _manifest(path: Path, source: TextSource) -> Manifest:
    """Record (or check) the text and the preprocessing settings in ``tolstoi/MANIFEST.json``.

    The text is itself the verified download (its md5 is checked first), so a manifest that
    disagrees with it is stale and rewritten.
    """
    settings = {"line_deletions": source.line_deletions, "test_fraction": TEST_FRACTION}
    return verify_or_rebuild(
        path.parent,
        [path.name],
        dataset=source.folder,
        sources={source.file.name: source.file.md5},
        downloads={path.name: path},
        fetch=lambda: None,
        rebuild=lambda names: None,
        preprocessing=settings,
    )


def prepare_tolstoi(root: str | Path, mirror=None, source: TextSource = TextSource()) -> Path:
    """Stage or download the text into ``root/tolstoi/``, verify its md5, return its path."""
    root = Path(root)
    with data_lock(root / "tolstoi"):
        path = _prepare(root, mirror, source)
        _manifest(path, source)
    return path


def tolstoi_manifest(root: str | Path, mirror=None, source: TextSource = TextSource()):
    """Prepare and verify the text without preprocessing it; the manifest (``.fingerprint``)."""
    root = Path(root)
    with data_lock(root / "tolstoi"):
        return _manifest(_prepare(root, mirror, source), source)


def load_tolstoi(root: str | Path, mirror=None, source: TextSource = TextSource()) -> TextData:
    """The preprocessed splits (about a second of work, so they are not cached on disk).

    The md5 is checked on the very bytes that are preprocessed.
    """
    root = Path(root)
    with data_lock(root / "tolstoi"):
        path = _prepare(root, mirror, source)
        manifest = _manifest(path, source)
        raw = path.read_bytes()
    actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if actual != source.file.md5:
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected md5 {source.file.md5}, got {actual}. "
            "The file changed while it was read: rerun."
        )
    try:
        text = preprocess(raw, source.line_deletions)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}): delete it and rerun.") from err
    return dataclasses.replace(text, fingerprint=manifest.fingerprint)
