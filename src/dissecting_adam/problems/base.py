"""The Problem interface: model, seeded batches, the loss that is minimised, evaluation.

A problem owns its data (resident on ``config.device`` once first used) and its defaults
(batch size, step budget, step-size schedule and regulariser: docs/problems.md), each
overridable through its config. The training loop stays with the caller, so any
``torch.optim.Optimizer`` can be benchmarked:

    problem = load("fmnist_2c2d")
    model = problem.build_model(seed=0)
    ...
    loss = problem.training_loss(model, next(batches))
"""

from __future__ import annotations

import dataclasses
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .batched import BatchedLoss
from .batching import Batch, TrainBatches
from .models.layers import l2_term


@dataclass(frozen=True)
class ProblemConfig:
    """Settings shared by all problems; each problem's subclass sets its own defaults.

    ``lr_milestones``/``lr_gamma``: the step size is multiplied by ``lr_gamma`` at each
    milestone (a schedule fixed in advance and shared by all methods). ``mirror`` None means
    ``$DATA_MIRROR`` if set, else download. ``eval_batch_size`` only sets memory use.
    """

    batch_size: int = 128
    num_steps: int = 10_000
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 1.0
    weight_decay: float = 0.0
    data_root: str = "data"
    mirror: str | None = None
    device: str = "cpu"
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.batch_size < 1 or self.num_steps < 0 or self.eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive and num_steps >= 0: {self}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        # Hydra and YAML hand over lists; the config stays hashable and immutable.
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))


class EvalResult(NamedTuple):
    """``loss`` = mean data loss + L2 term (what DeepOBS reports); ``data_loss`` without it."""

    loss: float
    accuracy: float
    data_loss: float


class Problem(ABC):
    """One test problem; subclasses define the model, the data and the batches."""

    name: str
    Config: type[ProblemConfig] = ProblemConfig
    #: Whether per-example gradients are defined (mini-batch variance, ``per_example``).
    per_example_gradients: bool = True
    #: Whether K members (seeds) can train as one batched computation: ``batched_loss``
    #: gives each member the loss, gradients, buffer updates, carried state and random draws
    #: of its single model on the same batch (to float tolerance; draws exactly).
    seed_parallel: bool = False
    #: Whether a group's members draw random numbers in training (dropout) from their own
    #: host-side streams (``MemberRNG``): a CUDA graph cannot capture those swaps.
    group_draws: bool = False

    def __init__(self, config: ProblemConfig | None = None, source=None):
        """``source`` replaces the data set's description (tests use generated files)."""
        self.config = config if config is not None else self.Config()
        self.source = source if source is not None else self.default_source()
        self._data = None
        # The hash of the verified data (``data_fingerprint``), once known: set when the
        # data is loaded or its manifest read, so that it is computed at most once.
        self._data_fingerprint: str | None = None

    @classmethod
    def from_overrides(cls, source=None, **overrides) -> Problem:
        valid = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"{cls.name}: unknown setting(s) {unknown}; valid: {valid}")
        return cls(cls.Config(**overrides), source)

    # --- defaults -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base step size at ``step`` (counted from 0)."""
        passed = sum(step >= m for m in self.config.lr_milestones)
        return self.config.lr_gamma**passed

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        """A scheduler to ``step()`` once after every optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)

    # --- model ----------------------------------------------------------------------
    @abstractmethod
    def make_model(self) -> nn.Module:
        """A freshly initialised network (uses the global RNG; see ``build_model``)."""

    def build_model(self, seed: int) -> nn.Module:
        """The network with the paper's initialisation from ``seed``, on ``config.device``.

        Built on the CPU inside a forked RNG, so the weights are the same on every device and
        the caller's random state is untouched. Needs no data.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.make_model()
        return model.to(self.device)

    # --- data -----------------------------------------------------------------------
    @abstractmethod
    def default_source(self):
        """The description of the real data set (md5s, URLs, mirror folder)."""

    @classmethod
    def standin(cls, folder: Path, min_train: int = 1):
        """Write small generated files in the data set's real on-disk format to ``folder``
        and return their source description (``source=`` of the constructor): what tests and
        smoke checks run on, with no download and no real data. At least ``min_train``
        training examples (a batch of that size fits)."""
        raise NotImplementedError(f"{cls.name} has no generated stand-in data; define "
                                  f"{cls.__name__}.standin(folder)")  # fmt: skip

    @abstractmethod
    def load_data(self):
        """Read (preparing if needed) the data set onto the CPU."""

    @property
    def data(self):
        """The whole data set, resident on ``config.device`` after the first use."""
        if self._data is None:
            self._data = self.load_data().to(self.device)
        return self._data

    def data_fingerprint(self) -> str | None:
        """A short hash of the data this problem reads (None: not known). Problems whose
        data sets verify their files (all four) override it."""
        return None

    def prepare(self) -> None:
        """Download or stage, verify and preprocess the data (what ``prepare_data`` runs)."""
        self.load_data()

    @abstractmethod
    def train_batches(self, seed: int, state: dict | None = None) -> TrainBatches:
        """The training batches, forever, in the order that ``seed`` fixes; from ``state``
        (an earlier iterator's ``state()``, of this problem and seed) the batches that
        iterator would have yielded next, at a cost independent of its position."""

    @abstractmethod
    def eval_batches(self, split: str) -> Iterator[Batch]:
        """The full ``"test"`` split or the fixed ``"train_eval"`` subset, unaugmented."""

    # --- losses ---------------------------------------------------------------------
    def l2_term(self, model: nn.Module) -> torch.Tensor:
        return l2_term(model, self.config.weight_decay)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss that is minimised: mean cross-entropy over the batch + the L2 term."""
        logits = model(batch.inputs)
        data_loss = F.cross_entropy(logits.flatten(0, -2), batch.targets.flatten())
        return data_loss + self.l2_term(model)

    def batched_loss(self, template: nn.Module) -> BatchedLoss:
        """The training loss of K members at once (``problems.batched``); ``template`` is a
        model of this problem (any member's; it is copied, not changed)."""
        return BatchedLoss(self, template)

    def evaluate(
        self, model: nn.Module, split: str = "test", max_batches: int | None = None
    ) -> EvalResult:
        """Loss and accuracy on a split (its first ``max_batches`` batches, if given; the
        smoke and preview profiles), in eval mode, without gradients."""
        if split not in ("test", "train_eval"):
            raise ValueError(f"split must be 'test' or 'train_eval', got {split!r}")
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        try:
            with torch.no_grad():
                for batch in itertools.islice(self.eval_batches(split), max_batches):
                    logits = model(batch.inputs).flatten(0, -2)
                    targets = batch.targets.flatten()
                    loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
                    correct += (logits.argmax(dim=-1) == targets).sum()
                    count += targets.numel()
                l2 = self.l2_term(model).detach().float().to(loss_sum.device).double()
                # One device-to-host copy per pass: no sync per batch.
                loss_sum, correct, l2 = torch.stack([loss_sum, correct.double(), l2]).tolist()
        finally:
            model.train(was_training)
        data_loss = loss_sum / count
        return EvalResult(data_loss + l2, int(correct) / count, data_loss)
