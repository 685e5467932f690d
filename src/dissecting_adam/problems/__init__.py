"""The paper's four deep-learning test problems (paper §6; docs/problems.md), keyed by DeepOBS name.

``load(name, **overrides)`` returns a Problem with the paper's defaults; any config field
(batch_size, num_steps, lr_milestones, lr_gamma, weight_decay, data_root, mirror, device,
eval_batch_size, and per-problem ones) can be overridden. See docs/problems.md.
"""

from __future__ import annotations

from .base import EvalResult, Problem, ProblemConfig
from .batching import Batch
from .datasets.integrity import ChecksumError, DataError, MissingDataError
from .image import CIFAR100WRN404, CIFAR10_3c3d, FMNIST2c2d
from .tolstoi_char_rnn import TolstoiCharRNN

#: DeepOBS name -> problem class, in the paper's order P1-P4.
PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls for cls in (FMNIST2c2d, CIFAR10_3c3d, CIFAR100WRN404, TolstoiCharRNN)
}


def load(name: str, *, source=None, **overrides) -> Problem:
    """The problem ``name`` with its defaults, changed by ``overrides``.

    ``source`` replaces the description of the data set (md5s, file names); tests use it to
    run generated files through the real loading code. Unknown names or settings raise an
    error listing the valid ones.
    """
    try:
        cls = PROBLEMS[name]
    except KeyError:
        choices = ", ".join(PROBLEMS)
        raise ValueError(f"unknown problem {name!r}; choose one of: {choices}") from None
    return cls.from_overrides(source, **overrides)


__all__ = [
    "PROBLEMS",
    "Batch",
    "ChecksumError",
    "DataError",
    "EvalResult",
    "MissingDataError",
    "Problem",
    "ProblemConfig",
    "load",
]
