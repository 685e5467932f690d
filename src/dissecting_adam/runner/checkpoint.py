"""Checkpoints that resume a run bit-identically (on the CPU).

A checkpoint holds everything the rest of a run depends on: the model's parameters and
buffers, its carried LSTM state (tolstoi), the optimizer's and the scheduler's state, every
random number generator (torch CPU and CUDA, numpy, Python), the position in the data (the
batch iterator's ``state()``: its generator, epoch permutation and step, so a resume costs
the same at step 100 and 70,000; a checkpoint without it, from before, fast-forwards the
iterator by drawing again, which gives the same position) and the runner's own counters.
It is written to a temp file and renamed, so a run killed while saving keeps its previous
checkpoint; the one before it is kept as ``checkpoint.prev.pt``. ``load_usable`` gives the
newest one that can be read and moves an unreadable one aside with a warning (a truncated
file from a full disk, say), so a bad checkpoint never fails every rerun: at worst the run
restarts.
"""

from __future__ import annotations

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


def save(path: Path, *, step: int, payload: dict, runner: dict) -> None:
    """Write a checkpoint after ``step`` optimizer steps: ``payload`` is what ``capture``
    (or an engine's) returns for the run, ``runner`` holds the loop's counters."""
    payload = {"step": step, **payload, "runner": runner}
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


def capture(model: nn.Module, optimizer, scheduler) -> dict:
    """Everything of a single run that a checkpoint holds besides the step and counters."""
    return {
        "model": model.state_dict(),
        "model_carried_state": carried_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }


def previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``checkpoint.prev.pt``)."""
    return Path(path).with_suffix(".prev.pt")


def remove(path: Path) -> None:
    """Delete a run's checkpoints (the latest and the one before)."""
    Path(path).unlink(missing_ok=True)
    previous(path).unlink(missing_ok=True)


def load_usable(path: Path, accept: Callable[[dict], str | None] | None = None) -> dict | None:
    """The payload of ``path``, or else of the checkpoint before it; None if neither exists
    or can be used.

    A file that cannot be read is moved aside (never deleted) with a warning.
    ``accept(runner_counters)`` may refuse a readable checkpoint with a reason (its metrics
    no longer match); such a file stays where it is.
    """
    for candidate in (Path(path), previous(path)):
        if not candidate.exists():
            continue
        try:
            payload = torch.load(candidate, map_location="cpu", weights_only=False)
            if not isinstance(payload, dict) or not {"step", "model", "runner"} <= set(payload):
                raise ValueError("not a checkpoint of this project")
        except Exception as err:  # noqa: BLE001 - any unreadable file: torch, zip, pickle
            move_unusable(candidate, err)
            continue
        refused = accept(payload["runner"]) if accept is not None else None
        if refused:
            log.warning("not resuming from %s: %s", candidate, refused)
            continue
        if candidate != Path(path):
            log.warning("resuming from the checkpoint before (%s)", candidate)
        payload["path"] = str(candidate)
        return payload
    return None


def move_unusable(path: Path, err: BaseException) -> None:
    """Move a checkpoint that cannot be read or restored aside, with a warning naming it."""
    aside = move_aside(path)
    log.warning("%s cannot be used (%s: %s); moved to %s", path, type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "", aside)  # fmt: skip


def restore(payload: dict, *, model: nn.Module, optimizer, scheduler) -> None:
    """Restore model, carried state, optimizer, scheduler and RNGs from a payload."""
    model.load_state_dict(payload["model"])
    if hasattr(model, "reset_state"):
        carried = payload["model_carried_state"]
        device = next(model.parameters()).device
        model.state = to_device(carried, device)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])


def skip(batches: Iterator, n: int) -> None:
    """Draw and drop ``n`` batches: the data position of a run resumed after ``n`` steps."""
    for _ in range(n):
        next(batches)


def to_device(obj, device):
    """A carried state (nested tuples of tensors, or None) on ``device``."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    return type(obj)(to_device(o, device) for o in obj)
