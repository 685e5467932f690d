"""The three image-classification problems: fmnist_2c2d, cifar10_3c3d, cifar100_wrn404.

Defaults: docs/problems.md (paper §6.1 and DeepOBS's code); values marked [S?] there come
from the paper's supplement as recalled and are config values for that reason.

``channels_last`` (default: on CUDA, off on the CPU) keeps the model's 4-D tensors and
the input batches in NHWC memory order, the layout cuDNN's fastest convolutions (tensor
cores) read. It changes no value, only which kernels run (and so float rounding, as
cuDNN's algorithm choice does); like ``eval_batch_size`` it is not part of a run's
identity. So is P3's ``fused_bn_relu`` (each batch norm and the ReLU after it in fused
Triton kernels, CUDA only): the same function, its sums taken in another order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import augment
from .base import Problem, ProblemConfig
from .batching import Batch, ShuffledBatches
from .datasets import synthetic
from .datasets.images import (
    CIFAR10,
    CIFAR100,
    FASHION_MNIST,
    ImageData,
    load_images,
    prepare_images,
)
from .models.cnn import ThreeC3D, TwoC2D
from .models.wrn import WideResNet

#: Seed of the fixed train-eval subset: the same examples for every run, seed and method.
TRAIN_EVAL_SEED = 0


@dataclass(frozen=True)
class ImageConfig(ProblemConfig):
    #: NHWC memory order for the model and its inputs; None: on CUDA, off elsewhere.
    channels_last: bool | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.channels_last not in (None, True, False):
            raise ValueError(
                f"channels_last must be true, false or null (on CUDA only), "
                f"got {self.channels_last!r}"
            )


class ImageProblem(Problem):
    """Images resident on the device as uint8; batches by indexing; floats made per batch."""

    Config = ImageConfig

    @property
    def channels_last(self) -> bool:
        """Whether the model and the batches are in NHWC memory order (``channels_last``)."""
        setting = self.config.channels_last
        return self.device.type == "cuda" if setting is None else bool(setting)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images (B, C, H, W) in the memory order the model's kernels expect."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def build_model(self, seed: int) -> nn.Module:
        model = super().build_model(seed)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def load_data(self) -> ImageData:
        data = load_images(self.source, self.config.data_root, self.config.mirror)
        self._data_fingerprint = data.fingerprint
        return data

    def data_fingerprint(self) -> str:
        """16 hex digits identifying the data: a hash of its verified files' manifest.

        That of the data this problem loaded, if it did; else the data is prepared and
        verified (not loaded) and the current files' fingerprint returned.
        """
        if self._data_fingerprint is None:
            cfg = self.config
            self._data_fingerprint = prepare_images(
                self.source, cfg.data_root, cfg.mirror
            ).fingerprint
        return self._data_fingerprint

    def train_eval_indices(self) -> torch.Tensor:
        """A fixed subset of the training set as large as the test set (capped at its size)."""
        n_train, n_test = len(self.data.train_labels), len(self.data.test_labels)
        gen = torch.Generator().manual_seed(TRAIN_EVAL_SEED)
        return torch.randperm(n_train, generator=gen)[: min(n_test, n_train)]

    def train_draws(self, batch: int, gen: torch.Generator):
        """The random numbers ``train_transform`` uses for ``batch`` images, drawn from
        ``gen`` (None: it uses none). Skipping batches draws exactly these."""
        return None

    def transform_with(self, images: torch.Tensor, draws) -> torch.Tensor:
        """Training images to floats, given ``train_draws``'s result."""
        return self.eval_transform(images)

    def train_transform(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # Split in two so that ``skip`` makes the very draws of a batch without its pixels.
        return self.layout(self.transform_with(images, self.train_draws(len(images), gen)))

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)  # pixels to [0, 1]

    def train_batches(self, seed: int, state: dict | None = None) -> ShuffledBatches:
        """Shuffled epochs from ``torch.Generator().manual_seed(seed)``: per epoch a
        permutation, then per batch the transform's draws (CIFAR's augmentation), from that
        one generator; ``state`` (an iterator's ``state()``) continues where it was."""
        data = self.data
        images, labels = data.train_images, data.train_labels

        def form(idx: torch.Tensor, gen: torch.Generator):
            return self.train_transform(images[idx], gen), labels[idx]

        return ShuffledBatches(
            len(labels),
            self.batch_size,
            seed,
            self.device,
            form,
            lambda gen: self.train_draws(self.batch_size, gen),
            {"problem": self.name},
            state,
        )

    def eval_batches(self, split: str) -> Iterator[Batch]:
        data = self.data
        if split == "test":
            images, labels = data.test_images, data.test_labels
        else:
            idx = self.train_eval_indices().to(self.device)
            images, labels = data.train_images[idx], data.train_labels[idx]
        size = self.config.eval_batch_size
        for i in range(0, len(labels), size):
            inputs = self.layout(self.eval_transform(images[i : i + size]))
            yield Batch(inputs, labels[i : i + size], 0, i == 0)


@dataclass(frozen=True)
class FMNIST2c2dConfig(ImageConfig):
    batch_size: int = 64  # [S?]; DeepOBS uses 128
    num_steps: int = 6_000  # [S?]
    pool_size: int = 3  # [S?] paper 3x3/2; DeepOBS 2x2/2


class FMNIST2c2d(ImageProblem):
    """P1: 2c2d on Fashion-MNIST, constant step size, no regulariser, no augmentation."""

    name = "fmnist_2c2d"
    seed_parallel = True
    Config = FMNIST2c2dConfig

    def default_source(self):
        return FASHION_MNIST

    @classmethod
    def standin(cls, folder: Path, min_train: int = 1):
        """64 training images (or ``min_train``), 32 test images, in the real format."""
        return synthetic.write_fashion_mnist(folder, n_train=max(64, min_train), n_test=32)

    def make_model(self) -> nn.Module:
        return TwoC2D(self.source.num_classes, self.config.pool_size)


@dataclass(frozen=True)
class CIFARConfig(ImageConfig):
    augment: bool = True


class CIFARProblem(ImageProblem):
    """DeepOBS's TF CIFAR pipeline: augmented training images, standardised test images."""

    def train_draws(self, batch: int, gen: torch.Generator) -> augment.AugmentParams | None:
        return augment.draw_params(batch, gen) if self.config.augment else None

    def transform_with(self, images: torch.Tensor, draws) -> torch.Tensor:
        if draws is None:
            return self.eval_transform(images)
        return augment.augment(images, draws)

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        return augment.preprocess_test(images)


@dataclass(frozen=True)
class CIFAR10_3c3dConfig(CIFARConfig):
    batch_size: int = 128
    num_steps: int = 40_000  # [S?]; DeepOBS: 100 epochs = 39,000
    weight_decay: float = 2e-3


class CIFAR10_3c3d(CIFARProblem):
    """P2: 3c3d on CIFAR-10, constant step size, L2 2e-3 on conv and dense kernels."""

    name = "cifar10_3c3d"
    seed_parallel = True
    Config = CIFAR10_3c3dConfig

    def default_source(self):
        return CIFAR10

    @classmethod
    def standin(cls, folder: Path, min_train: int = 1):
        """64 training images (or ``min_train``), 32 test images, in the real format."""
        return synthetic.write_cifar(folder, "cifar-10", n_train=max(64, min_train), n_test=32)

    def make_model(self) -> nn.Module:
        return ThreeC3D(self.source.num_classes)


@dataclass(frozen=True)
class CIFAR100WRN404Config(CIFARConfig):
    batch_size: int = 128
    num_steps: int = 80_000  # [S?]
    lr_milestones: tuple[int, ...] = (24_000, 48_000, 64_000)  # [S?]
    lr_gamma: float = 0.2  # [S?]
    weight_decay: float = 5e-4
    eval_batch_size: int = 500
    #: Each batch norm and its ReLU as fused Triton kernels (CUDA only; ``bn_relu.py``).
    fused_bn_relu: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.fused_bn_relu, bool):
            raise ValueError(f"fused_bn_relu must be true or false, got {self.fused_bn_relu!r}")


class CIFAR100WRN404(CIFARProblem):
    """P3: WRN-40-4 on CIFAR-100 (fine labels), step size x0.2 at 24k, 48k, 64k, L2 5e-4."""

    name = "cifar100_wrn404"
    Config = CIFAR100WRN404Config
    per_example_gradients = False  # BatchNorm in training mode mixes the examples
    seed_parallel = True  # running BatchNorm buffers: stacked, updated per member

    def default_source(self):
        return CIFAR100

    @classmethod
    def standin(cls, folder: Path, min_train: int = 1):
        """16 training images (the network is large; or ``min_train``) and 8 test images, generated
        in the real format."""
        return synthetic.write_cifar(folder, "cifar-100", n_train=max(16, min_train), n_test=8)

    def make_model(self) -> nn.Module:
        return WideResNet(40, 4, self.source.num_classes, self.config.fused_bn_relu)
