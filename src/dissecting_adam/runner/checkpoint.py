"""Checkpoints that resume a run bit-identically (on the CPU).

A checkpoint holds everything the rest of a run depends on: the model's parameters and
buffers, its carried LSTM state (tolstoi), the optimizer's and the scheduler's state, every
random number generator (torch CPU and CUDA, numpy, Python), the position in the data (the
number of batches drawn; the batch iterator is rebuilt from its seed and fast-forwarded,
which replays its random draws exactly) and the runner's own counters. It is written to a
temp file and renamed, so a run killed while saving keeps its previous checkpoint; the one
before it is kept as ``checkpoint.prev.pt``. ``load_latest`` resumes from the newest one
that can be read and moves an unreadable one aside with a warning (a truncated file from a
full disk, say), so a bad checkpoint never fails every rerun: at worst the run restarts.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import move_aside, temp_path

log = logging.getLogger(__name__)


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
    # Serialised in memory, then written as plain bytes: a full disk is then an OSError
    # (ENOSPC) naming the file, and the temp file is closed and gone before it propagates;
    # torch.save straight to disk fails with a RuntimeError and keeps the file open.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        del buffer
        if path.exists():  # keep the one before: the fallback if this one is unreadable
            os.replace(path, previous(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``checkpoint.prev.pt``)."""
    return Path(path).with_suffix(".prev.pt")


def remove(path: Path) -> None:
    """Delete a run's checkpoints (the latest and the one before)."""
    Path(path).unlink(missing_ok=True)
    previous(path).unlink(missing_ok=True)


def load_latest(path: Path, *, model: nn.Module, optimizer, scheduler,
                accept: Callable[[dict], str | None] | None = None) -> dict | None:  # fmt: skip
    """Restore from ``path``, or else from the checkpoint before it; None if neither exists
    or can be used. Returns ``load``'s.

    A file that cannot be read or restored into these objects (a truncated file; a
    checkpoint of another method, whose optimizer state this optimizer refuses) is moved
    aside, never deleted, and the objects are left as they were, so the caller can start
    from step 0. ``accept(runner_counters)`` may refuse a readable checkpoint with a reason
    (its metrics no longer match); such a file stays where it is.
    """
    for candidate in (Path(path), previous(path)):
        if not candidate.exists():
            continue
        try:
            payload = torch.load(candidate, map_location="cpu", weights_only=False)
            if not isinstance(payload, dict) or not {"step", "model", "runner"} <= set(payload):
                raise ValueError("not a checkpoint of this project")
            refused = accept(payload["runner"]) if accept is not None else None
            if refused:
                log.warning("not resuming from %s: %s", candidate, refused)
                continue
            before = _snapshot(model, optimizer, scheduler)
            try:
                restored = _restore(payload, model=model, optimizer=optimizer,
                                    scheduler=scheduler)  # fmt: skip
            except BaseException:
                _restore(before, model=model, optimizer=optimizer, scheduler=scheduler)
                raise
        except Exception as err:  # noqa: BLE001 - any unusable file: torch, zip, pickle, state
            aside = move_aside(candidate)
            log.warning("%s cannot be used (%s: %s); moved to %s", candidate,
                        type(err).__name__, str(err).splitlines()[0][:200], aside)  # fmt: skip
            continue
        if candidate != Path(path):
            log.warning("resuming from the checkpoint before (%s)", candidate)
        return restored
    return None


def _snapshot(model: nn.Module, optimizer, scheduler) -> dict:
    """The objects' state as a payload, to put back when restoring a checkpoint fails."""
    return copy.deepcopy({
        "step": 0,
        "model": model.state_dict(),
        "model_carried_state": carried_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "runner": {},
    })  # fmt: skip


def load(path: Path, *, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNGs from ``path``; return step and counters.

    Call it before drawing any batch; then fast-forward the batch iterator with ``skip``.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    return _restore(payload, model=model, optimizer=optimizer, scheduler=scheduler)


def _restore(payload: dict, *, model: nn.Module, optimizer, scheduler) -> dict:
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
