"""Fashion-MNIST, CIFAR-10 and CIFAR-100 as uint8 tensors, through torchvision's own code.

torchvision downloads the originals, checks their md5 and extracts them. With a mirror, the
verified originals are first copied into the layout torchvision expects (``<root>/
FashionMNIST/raw/*.gz``, ``<root>/cifar-10-python.tar.gz``), so that its download step finds
them and needs no network. The result is kept as plain uint8 tensors, NCHW: the data sets are
small enough to live on the training device whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torchvision import datasets as tvd
from torchvision.datasets.utils import calculate_md5

from .integrity import (
    DataError,
    RemoteFile,
    check_cached,
    download_failed,
    resolve_mirror,
    stage_from_mirror,
)


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
    """A whole data set as tensors: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(*(t.to(device) for t in self.tensors()))

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


def prepare_images(source: ImageSource, root: str | Path, mirror: str | Path | None = None):
    """Make ``source`` available under ``root`` (stage or download, verify, extract).

    Returns the torchvision train and test datasets. Raises DataError (never falls back to
    anything else) when a file is missing, corrupt or unreadable.
    """
    root = Path(root)
    files, sub = remote_files(source)
    cache = root / sub
    mirror_path = resolve_mirror(mirror)
    if mirror_path is not None:
        stage_from_mirror(mirror_path, source.folder, files, cache)
    check_cached(cache, files)
    try:
        return tuple(source.dataset_cls(str(root), train=t, download=True) for t in (True, False))
    except (URLError, OSError, RuntimeError, ValueError, AssertionError, KeyError, EOFError) as err:
        # torchvision wraps failed downloads in RuntimeError too: tell them apart by whether
        # the verified archives are now in place.
        if not all(_verified(cache / f.name, f.md5) for f in files):
            raise download_failed(files, cache, source.folder, err) from err
        raise DataError(
            f"Could not read the extracted {source.folder} data under {root} "
            f"({type(err).__name__}: {err}). Delete the extracted files (keep the verified "
            "archives) and rerun `python scripts/prepare_data.py`."
        ) from err


def _verified(path: Path, md5: str) -> bool:
    return path.is_file() and calculate_md5(path) == md5


def load_images(
    source: ImageSource, root: str | Path, mirror: str | Path | None = None
) -> ImageData:
    """``source`` as uint8 NCHW tensors on the CPU, checked for shape and label range."""
    train, test = prepare_images(source, root, mirror)
    data = ImageData(*_as_tensors(train), *_as_tensors(test))
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
