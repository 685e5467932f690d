"""Checksums, the optional local mirror, and the errors every data problem raises.

Every original file is verified by md5 whichever way it arrived (download, mirror or a
previous run), and every failure names the file and says how to fix it: a wrong data set
must never be used silently, and a missing one is never replaced by synthetic data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5

#: Environment variable naming the local mirror (a folder of original downloads).
MIRROR_ENV = "DATA_MIRROR"


class DataError(RuntimeError):
    """A data set is missing, corrupt or unreadable; the message says how to fix it."""


class ChecksumError(DataError):
    """A file's md5 differs from the one its data set publishes."""


class MissingDataError(DataError):
    """A file is neither in the mirror nor downloadable (no network)."""


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


def stage_from_mirror(mirror: Path, folder: str, files: list[RemoteFile], dest: Path) -> None:
    """Copy verified originals from ``mirror/folder/`` into ``dest`` (the download cache).

    Files already in ``dest`` with the right md5 are kept; the copies then satisfy
    torchvision's own integrity check, so its ``download=True`` path needs no network.
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
        shutil.copyfile(src, target)


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
    return MissingDataError(
        f"Could not download the {folder} data ({type(err).__name__}: {err}). Without network "
        f"access, stage the original files:\n{listing}\n"
        f"either into <mirror>/{folder}/ and set {MIRROR_ENV}=<mirror> (or data.mirror), "
        f"or directly into {dest}."
    )
