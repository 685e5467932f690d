"""Checkpoints that resume a run bit-identically (on the CPU).

A checkpoint holds everything the rest of a run depends on: the model's parameters and
buffers, its carried LSTM state (tolstoi), the optimizer's and the scheduler's state, every
random number generator (torch CPU and CUDA, numpy, Python), the position in the data (the
number of batches drawn; the batch iterator is rebuilt from its seed and fast-forwarded,
which replays its random draws exactly) and the runner's own counters. It is written to a
temp file and renamed, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the global state is saved
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def carried_state(model: nn.Module):
    """State a model carries between batches outside its state_dict (the LSTM's), or None."""
    return getattr(model, "state", None) if hasattr(model, "reset_state") else None


def save(
    path: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    runner: dict,
) -> None:
    """Write a checkpoint after ``step`` optimizer steps; ``runner`` holds loop counters."""
    payload = {
        "step": step,
        "model": model.state_dict(),
        "model_carried_state": carried_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "runner": runner,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, *, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNGs from ``path``; return step and counters.

    Call it before drawing any batch; then fast-forward the batch iterator with ``skip``.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    if hasattr(model, "reset_state"):
        carried = payload["model_carried_state"]
        device = next(model.parameters()).device
        model.state = _to_device(carried, device)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    return {"step": payload["step"], "runner": payload["runner"]}


def skip(batches: Iterator, n: int) -> None:
    """Draw and drop ``n`` batches: the data position of a run resumed after ``n`` steps."""
    for _ in range(n):
        next(batches)


def _to_device(obj, device):
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    return type(obj)(_to_device(o, device) for o in obj)
