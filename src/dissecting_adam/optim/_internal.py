"""The package's inside API: what an optimizer module of ``optim/`` may import.

The shared pieces of the optimizers that are not part of the user-facing API: hyperparameter
checks, the state dtype, the helpers that split parameters into multi-tensor groups and
that run 16-bit parameters' maths in float32. ``_engine`` and ``_base`` build on them, and
a method that keeps its own statistics (``msvag_mb``: mini-batch variance, paper §D) imports
these names and ``_base.OptimizerBase`` instead of private names of either module.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

#: The parameter dtypes the optimizers accept.
REAL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def rho(beta: float, t: int) -> float:
    """rho(beta, t) of paper Eq. 21: the variance-reduction factor of the bias-corrected average.

    rho = (1 - beta)(1 + beta^(t+1)) / ((1 + beta)(1 - beta^(t+1))); it is 1 at
    t = 0 (one sample) and tends to (1 - beta) / (1 + beta).
    """
    if beta == 0.0:
        return 1.0
    bt = beta ** (t + 1)
    return (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the optimizer state and of the update's maths for parameters of ``dtype``.

    float32 for float16 and bfloat16 parameters (their 5- and 8-bit exponents cannot hold
    g^2 for small gradients, nor their 11- and 8-bit mantissas the variance v - m^2),
    the parameter's own dtype otherwise.
    """
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def limits(dtype: torch.dtype) -> tuple[float, float]:
    """(smallest normal number, square root of the largest finite number) of ``dtype``."""
    info = torch.finfo(dtype)
    return info.tiny, math.sqrt(info.max)


def zeros_state(p: Tensor) -> Tensor:
    """A zero buffer like ``p`` in the state dtype (float32 for 16-bit parameters)."""
    return torch.zeros_like(p, dtype=compute_dtype(p.dtype), memory_format=torch.preserve_format)


def check_lr(lr: Any) -> None:
    """Refuse an ``lr`` that is not a finite Python number > 0."""
    if isinstance(lr, torch.Tensor):
        raise ValueError("lr must be a Python float, not a tensor")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid learning rate lr={lr!r}: it must be a finite number > 0")


def check_beta(beta: Any, needs_positive: bool, name: str) -> None:
    """Refuse a ``beta`` outside [0, 1) (outside (0, 1) where ``needs_positive``)."""
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
        raise ValueError(f"Invalid beta={beta!r}: it must be a number in [0, 1)")
    if needs_positive and not 0.0 < beta < 1.0:
        raise ValueError(
            f"Invalid beta={beta!r}: {name} estimates the gradient variance from moving "
            "averages and needs 0 < beta < 1 (the paper uses 0.9)"
        )
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"Invalid beta={beta!r}: it must lie in [0, 1) (the paper uses 0.9)")


def convert(xs: list[Tensor] | None, dtype: torch.dtype) -> list[Tensor] | None:
    """``xs`` in ``dtype``; tensors already in it are the same objects, not copies."""
    return None if xs is None else [x.to(dtype) for x in xs]


def copy_back(dst: list[Tensor] | None, src: list[Tensor] | None) -> None:
    """Write the converted copies in ``src`` back into ``dst`` (rounding to dst's dtype)."""
    if dst is None or src is None:
        return
    pairs = [(d, s) for d, s in zip(dst, src, strict=True) if d is not s]
    if pairs:
        torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])


def take(xs: list | None, idx: list[int] | None) -> list | None:
    """``xs`` at the indices ``idx`` (all of ``xs`` when ``idx`` is None)."""
    return xs if xs is None or idx is None else [xs[i] for i in idx]


_is_contiguous = Tensor.is_contiguous


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill ``numel`` consecutive slots from ``data_ptr`` (in some
    order): contiguous, channels_last, or any permutation of dimensions without gaps."""
    expected = 1
    for size, stride in sorted((x for x in zip(t.shape, t.stride(), strict=True) if x[0] != 1),
                               key=lambda x: x[1]):  # fmt: skip
        if stride != expected:
            return False
        expected *= size
    return True


def flat_alike(p: Tensor, *others: Tensor | None) -> bool:
    """Whether the fused kernels may update ``p`` and its gradient and state as flat memory:
    they walk ``numel`` values from each ``data_ptr``, which is exact when every tensor is
    dense and all are laid out alike (contiguous, or channels_last as the image models' kernels
    are on CUDA: their gradients and ``zeros_like`` state follow the parameter's layout)."""
    if p.is_contiguous() and all(x is None or x.is_contiguous() for x in others):
        return True
    strides = [d for d, n in zip(p.stride(), p.shape, strict=True) if n != 1]
    return _dense(p) and all(
        x is None
        or (x.shape == p.shape and [d for d, n in zip(x.stride(), x.shape, strict=True) if n != 1]
            == strides)
        for x in others
    )  # fmt: skip


def step_key(step: int | Tensor) -> int | None:
    """The group key of a step count: the int itself, None for a device tensor (capturable)."""
    return step if isinstance(step, int) else None


def partition(params, grads, m, v, steps, fused):
    """Split tensors into multi-tensor groups (device, dtype, step) and loose ones.

    A group's index list is None when it holds every tensor (the common case, which
    then costs no list copies). The fused kernels also need flat memory: a parameter whose
    gradient and state are not laid out as it is, densely (``flat_alike``: e.g. a view with
    gaps, or a gradient in another memory format), is updated on its own. Step counts
    kept as tensors (``capturable=True``) are not read on the host: their key is None and
    the group's step-dependent scalars are computed on the device.
    """
    flat = not fused or all(
        all(map(_is_contiguous, xs)) for xs in (params, grads, m or (), v or ())
    )  # fmt: skip
    keys = {(p.device, p.dtype) for p in params}
    step_keys = list(map(step_key, steps))
    if flat and len(keys) == 1 and len(set(step_keys)) == 1:
        return [], {(*keys.pop(), step_keys[0]): None}
    loose: list[int] = []
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if not flat and not flat_alike(
            p, grads[i], None if m is None else m[i], None if v is None else v[i]
        ):
            loose.append(i)
        else:
            groups[(p.device, p.dtype, step_keys[i])].append(i)
    return loose, groups
