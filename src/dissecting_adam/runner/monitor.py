"""What the training loop uses around the step: when to evaluate, the evaluation rows, the
divergence rule and its monitor (per member), the summary, the progress display.

Divergence: a run has diverged when a mini-batch loss is non-finite or above
``divergence_factor`` times its first recorded mini-batch loss. The loss is read back from
the device only every ``log_every`` steps, so the monitor keeps the running maximum of the
losses since the last check on the device: a spike between two checks still counts (a
network that blew up at step 3 and sits at chance level by step 10 has diverged).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import torch

from ..problems import Problem

log = logging.getLogger(__name__)

SPLITS = ("train_eval", "test")
KEYS = ("loss", "accuracy", "data_loss")


def eval_steps(num_steps: int, every: int) -> set[int]:
    """Steps (optimizer steps done) at which to evaluate: 0, every, 2 every, ..., num_steps."""
    return set(range(0, num_steps + 1, every)) | {num_steps}


def evaluation_rows(
    problem: Problem, model: torch.nn.Module, step: int, max_batches: int | None = None
) -> list[dict]:
    """One metrics row per evaluation split at ``step``."""
    return [
        {"step": step, "split": split, **problem.evaluate(model, split, max_batches)._asdict()}
        for split in SPLITS
    ]


def last_eval(rows: list[dict]) -> dict:
    """``{"test_accuracy": ..., "train_eval_loss": ...}`` of one evaluation's rows."""
    return {f"{r['split']}_{k}": r[k] for r in rows for k in KEYS}


def non_finite(rows: list[dict]) -> str | None:
    bad = [r["split"] for r in rows if not math.isfinite(r["loss"])]
    return f"non-finite {bad[0]} loss" if bad else None


def diverging(loss: float, initial: float | None, factor: float | None) -> str | None:
    """Why ``loss`` counts as diverged, or None: non-finite, or above factor x initial."""
    if not math.isfinite(loss):
        return f"non-finite mini-batch loss ({loss})"
    if factor is not None and initial is not None and loss > factor * abs(initial):
        return f"mini-batch loss {loss:.4g} > {factor:g} x initial loss {initial:.4g}"
    return None


class Divergence:
    """The divergence rule for ``k`` runs trained together (``k=1``: one run).

    ``observe(losses)`` every step (no sync); ``check(values)`` at a logging step, with the
    losses read back: returns the reason per member (None: fine) and starts a new window.
    """

    def __init__(self, factor: float | None, k: int = 1):
        self.factor = factor
        self.initial: list[float | None] = [None] * k
        self.peak: torch.Tensor | None = None

    def observe(self, losses: torch.Tensor) -> None:
        losses = losses.detach()
        self.peak = losses.clone() if self.peak is None else torch.maximum(self.peak, losses)

    def check(self, values: list[float], members) -> dict[int, str | None]:
        worst = self.peak.reshape(-1).tolist()
        self.peak = None
        out = {}
        for k in members:
            if self.initial[k] is None:
                self.initial[k] = values[k]
            out[k] = diverging(worst[k], self.initial[k], self.factor)
        return out

    # Each member's checkpoint holds its first loss and the window that was open.
    def state(self, k: int = 0) -> dict:
        peak = None if self.peak is None else self.peak.reshape(-1)[k].item()
        return {"initial_loss": self.initial[k], "peak_loss": peak}

    def restore(self, k: int, state: dict, device) -> None:
        self.initial[k] = state.get("initial_loss")
        if state.get("peak_loss") is not None:
            if self.peak is None:
                self.peak = torch.full((len(self.initial),), -math.inf, device=device)
            self.peak[k] = state["peak_loss"]


def summary(status: str, steps_done: int, num_steps: int, *, diverged_step: int | None,
            reason: str | None, initial_loss: float | None, final: dict, train_time_s: float,
            **extra) -> dict:  # fmt: skip
    """A run's ``summary.json``: how it ended and its final evaluation."""
    return {
        "status": status,
        "steps_done": steps_done,
        "num_steps": num_steps,
        "diverged_step": diverged_step,
        "divergence_reason": reason,
        "initial_loss": initial_loss,
        "final": final,
        "train_time_s": train_time_s,
        **extra,
    }


class Progress:
    """A tqdm bar with rate and ETA on a terminal, else a plain log line now and then."""

    def __init__(self, mode: str, total: int, start: int, interval_s: float):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.start = mode, total, start
        self.interval, self.t0 = interval_s, time.perf_counter()
        self.last = self.t0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            self.shown = start

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
            self.shown = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last >= self.interval:
                self.last = now
                rate = (step - self.start) / max(now - self.t0, 1e-9)
                eta = (self.total - step) / rate if rate > 0 else float("nan")
                log.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %.0f s", step, self.total,
                         loss, rate, eta)  # fmt: skip

    def close(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
            self.bar.close()
