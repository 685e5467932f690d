"""Fashion-MNIST, CIFAR-10 and CIFAR-100 as uint8 tensors, read by torchvision's own code.

The originals come from the mirror (verified, then copied) or are downloaded
(``download.download_url``: timeouts, retries, md5) into the layout torchvision expects
(``<root>/FashionMNIST/raw/*.gz``, ``<root>/cifar-10-python.tar.gz``). They are extracted
here, and the extracted files are recorded in ``MANIFEST.json`` in their folder
(``<root>/FashionMNIST/``, ``<root>/cifar-10-batches-py/``, ``<root>/cifar-100-python/``)
and checked against it on every load; torchvision then only reads them. The result is kept
as plain uint8 tensors, NCHW: the data sets are small enough to live on the training device
whole.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tvd

from .download import download_url
from .integrity import (
    DataError,
    RemoteFile,
    atomic_write,
    check_cached,
    data_lock,
    download_failed,
    resolve_mirror,
    stage_from_mirror,
)
from .manifest import Manifest, verify_or_rebuild


@dataclass(frozen=True)
class ImageSource:
    """One image data set: its mirror folder, the torchvision class that fetches it, its shape.

    ``dataset_cls`` carries the md5s (torchvision's class attributes); tests substitute a
    subclass with the md5s of small generated files, so fixtures and real data share every
    line of the loading code.
    """

    folder: str
    dataset_cls: type
    num_classes: int
    image_shape: tuple[int, int, int]


FASHION_MNIST = ImageSource("fashion-mnist", tvd.FashionMNIST, 10, (1, 28, 28))
CIFAR10 = ImageSource("cifar-10", tvd.CIFAR10, 10, (3, 32, 32))
CIFAR100 = ImageSource("cifar-100", tvd.CIFAR100, 100, (3, 32, 32))


@dataclass(frozen=True)
class ImageData:
    """A whole data set as tensors: images uint8 (N, C, H, W), labels int64 (N,).

    ``fingerprint``: the short hash of the verified files it was read from (``Manifest``).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str = ""

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(*(t.to(device) for t in self.tensors()), fingerprint=self.fingerprint)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


def remote_files(source: ImageSource) -> tuple[list[RemoteFile], str]:
    """The original downloads of ``source`` and the folder (relative to root) they live in."""
    cls = source.dataset_cls
    if issubclass(cls, tvd.MNIST):
        mirror = cls.mirrors[0]
        files = [RemoteFile(name, md5, f"{mirror}{name}") for name, md5 in cls.resources]
        # raw_folder uses the class name, so a fixture subclass must keep the original name.
        return files, f"{cls.__name__}/raw"
    return [RemoteFile(cls.filename, cls.tgz_md5, cls.url)], "."


def extracted_layout(source: ImageSource) -> tuple[str, list[str]]:
    """The folder (relative to root) of the extracted files, and their names relative to it.

    The folder also holds the files' ``MANIFEST.json``.
    """
    cls = source.dataset_cls
    if issubclass(cls, tvd.MNIST):
        return cls.__name__, [f"raw/{name.removesuffix('.gz')}" for name, _ in cls.resources]
    names = [name for name, _ in (*cls.train_list, *cls.test_list)] + [cls.meta["filename"]]
    return cls.base_folder, names


def _extract(archive: Path, to: Path) -> None:
    """torchvision's layout: ``x.gz`` to ``to/x`` (atomically), a tar.gz into ``to``."""
    try:
        if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar:
                # The "data" filter (no links out, no absolute paths) where Python has it.
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(to, **kwargs)
        elif archive.name.endswith(".gz"):
            with gzip.open(archive, "rb") as src, atomic_write(to / archive.name[:-3]) as out:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            raise DataError(f"Do not know how to extract {archive}.")
    except (OSError, EOFError, tarfile.TarError) as err:
        raise DataError(
            f"Could not extract {archive} ({type(err).__name__}: {err}): delete it and rerun "
            "`python scripts/prepare_data.py`."
        ) from err


def _prepare(source: ImageSource, root: Path, mirror) -> Manifest:
    files, sub = remote_files(source)
    cache = root / sub
    mirror_path = resolve_mirror(mirror)
    if mirror_path is not None:
        stage_from_mirror(mirror_path, source.folder, files, cache)
    check_cached(cache, files)
    folder, names = extracted_layout(source)
    if len(files) == 1:  # CIFAR: one archive holds every extracted file
        origin = dict.fromkeys(names, cache / files[0].name)
    else:  # MNIST family: x.gz holds raw/x
        origin = {name: cache / f.name for name, f in zip(names, files, strict=True)}

    def fetch() -> None:
        for f in files:
            if not (cache / f.name).is_file():
                try:
                    download_url(f, cache, source.folder)
                except (DataError, OSError) as err:
                    raise download_failed(files, cache, source.folder, err) from err

    def rebuild(which: list[str]) -> None:
        for archive in dict.fromkeys(origin[name] for name in which):
            _extract(archive, cache)

    return verify_or_rebuild(
        root / folder,
        names,
        dataset=source.folder,
        sources={f.name: f.md5 for f in files},
        downloads=origin,
        fetch=fetch,
        rebuild=rebuild,
    )


def prepare_images(
    source: ImageSource, root: str | Path, mirror: str | Path | None = None
) -> Manifest:
    """Make ``source`` available under ``root``: stage or download and verify the originals,
    extract them, and check the extracted files against their manifest (regenerating damaged
    ones from the verified originals). Returns the manifest (``.fingerprint``).

    Raises DataError (never falls back to anything else) when a file is missing, corrupt or
    unreadable.
    """
    root = Path(root)
    with data_lock(root / extracted_layout(source)[0]):
        return _prepare(source, root, mirror)


def _reader_class(source: ImageSource) -> type:
    """The torchvision class, made to read only the verified files: MNIST's would prefer
    legacy ``processed/*.pt`` files of old torchvision releases, which no manifest covers."""
    cls = source.dataset_cls
    if issubclass(cls, tvd.MNIST):
        return type(cls.__name__, (cls,), {"_check_legacy_exist": lambda self: False})
    return cls


def load_images(
    source: ImageSource, root: str | Path, mirror: str | Path | None = None
) -> ImageData:
    """``source`` as uint8 NCHW tensors on the CPU, verified, checked for shape and labels."""
    root = Path(root)
    with data_lock(root / extracted_layout(source)[0]):
        manifest = _prepare(source, root, mirror)
        try:
            reader = _reader_class(source)
            train, test = (reader(str(root), train=t, download=False) for t in (True, False))
            data = ImageData(*_as_tensors(train), *_as_tensors(test), manifest.fingerprint)
        except (OSError, RuntimeError, ValueError, AssertionError, KeyError, EOFError) as err:
            raise DataError(
                f"Could not read the extracted {source.folder} data under {root} "
                f"({type(err).__name__}: {err}). Delete the extracted files (keep the verified "
                "archives) and rerun `python scripts/prepare_data.py`."
            ) from err
    _check(source, data)
    return data


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images = ds.data
    if isinstance(images, np.ndarray):  # CIFAR: (N, H, W, C) numpy
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    else:  # MNIST family: (N, H, W) tensor
        images = images.unsqueeze(1)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.contiguous(), labels


def _check(source: ImageSource, data: ImageData) -> None:
    splits = ((data.train_images, data.train_labels), (data.test_images, data.test_labels))
    for images, labels in splits:
        ok = (
            images.dtype == torch.uint8
            and tuple(images.shape[1:]) == source.image_shape
            and len(images) == len(labels)
            and len(labels) > 0
            and int(labels.min()) >= 0
            and int(labels.max()) < source.num_classes
        )
        if not ok:
            raise DataError(
                f"The {source.folder} data has an unexpected shape or label range "
                f"(images {tuple(images.shape)}, {len(labels)} labels): delete the extracted "
                "files and rerun `python scripts/prepare_data.py`."
            )
