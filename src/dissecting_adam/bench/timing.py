"""Timing helpers shared by the benchmarks: device sync, timed calls, medians, deadlines."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable, device):
    """``(fn(), seconds)`` with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def iqr(values: Sequence[float]) -> float:
    """Interquartile range; NaN with fewer than four values."""
    if len(values) < 4:
        return float("nan")
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


@dataclass(frozen=True)
class Deadline:
    """A point in time (``time.perf_counter``) after which a measurement stops."""

    at: float = math.inf

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.perf_counter() + seconds)

    def left(self) -> float:
        return self.at - time.perf_counter()

    def expired(self) -> bool:
        return self.left() <= 0


NEVER = Deadline()


def reset_peak_memory(device) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_mib(device) -> float | None:
    """Peak memory allocated by tensors on a CUDA device since the last reset (MiB);
    None on the CPU (not measured)."""
    if not is_cuda(device):
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


@contextlib.contextmanager
def evaluation_off() -> Iterator[None]:
    """The runner's evaluation passes replaced by no-ops (single runs and groups: one loop),
    so that a timed ``train()`` measures training steps only."""
    from ..runner import loop

    saved = loop.evaluation_rows
    loop.evaluation_rows = lambda *args: []
    try:
        yield
    finally:
        loop.evaluation_rows = saved
