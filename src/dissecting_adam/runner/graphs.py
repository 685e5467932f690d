"""Whole-step CUDA graphs: a run's or a group's training step replayed as one CUDA graph.

``train.cuda_graph=true`` trains a single run with ``GraphedSingle`` and a group of K
members (``parallel_seeds``) with ``GraphedStacked``: forward pass, loss
(L2 term included), backward pass and optimizer step are captured once into a
``torch.cuda.CUDAGraph`` and replayed every step, one launch instead of hundreds (P1's
small convolutions and P4's LSTM steps are launch-bound). PyTorch's "whole network
capture" recipe (``torch.cuda.graphs``): the first ``warmup`` steps run eagerly on a side
stream (real steps on real batches: lazy cuDNN/cuBLAS set-up, autotuning, the
optimizer's state created), the gradients are set to None, the step is captured on static
input and target tensors, and each step copies its batch into them and replays.

What stays outside the graph: evaluation, checkpoints, the divergence check and logging
(the loop reads a clone of the static loss), the scheduler's step, and a batch of another
shape (it takes an eager step; the runs here have static shapes). The char-LSTM's carried
state (P4) enters through a static tensor: the carried state (zeros at an epoch's start)
is copied into it before each replay, and the model's ``state`` is the graph's output.

Re-capture: the step size is a Python float baked into the captured optimizer kernels
(``LambdaLR`` sets ``group["lr"]``), so a change of any group's lr (a schedule milestone,
a handful per run) captures the step again before the next replay: cheaper and simpler
than a device-tensor lr, which the package's fused kernels do not take. ``restore``
replaces the optimizer's state tensors, so it drops the graph too.

The optimizer must be capturable (step counts on the device, no host sync in ``step``):
``capturable`` turns it on for every group, also after a checkpoint load (torch's Adam
takes the saved group's flag). A graphed run matches its eager twin to float rounding
and RNG-stream differences (dropout masks are drawn from graph-safe Philox offsets), as
cuDNN autotuning does, so ``cuda_graph`` is not part of the run's identity. Not offered:
per-example gradients (§D: ``torch.func`` per-example passes), groups of a problem whose
members draw dropout from their own host-side streams (P4: ``Problem.group_draws``; its
single runs are graphed), ``deterministic=true`` (bit-identical resume), ``train.compile``.

A group's graph holds the K members' batched forward and backward passes, the optimizer
step and each member's scaling to its step size (``Stacked.update``); the mask of live
members is a static input, and a diverged member's parameters are put back after the
replay (``Stacked.hold_frozen``), outside the graph.

Longer than most modules: the two graphed engines and the recipe they share (warm-up,
re-capture, record, checkpoints) are one mechanism, read together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from ..methods import capabilities
from ..problems import PROBLEMS
from ..problems.batching import Batch
from . import backend, engine
from .spec import ConfigError, RunSpec

log = logging.getLogger(__name__)

#: Eager steps on a side stream before the first capture (PyTorch's recipe uses a few).
WARMUP = 3


def refusal(*, device: str, per_example: bool = False, deterministic: bool = False,
            compile: str | None = None, parallel_seeds: int = 1,
            problem=None) -> str | None:  # fmt: skip
    """Why ``train.cuda_graph=true`` cannot run with these settings (one line), or None."""
    if not str(device).startswith("cuda"):
        return (f"train.cuda_graph=true needs a CUDA device, but the run is on {device}; "
                "use train.cuda_graph=false (or device=cuda on a GPU machine)")  # fmt: skip
    if per_example:
        return ("train.cuda_graph=true cannot capture a method with per-example gradients "
                "(paper §D, torch.func passes); use train.cuda_graph=false for it")  # fmt: skip
    if deterministic:
        return ("train.cuda_graph=true and deterministic=true: a graphed run is not "
                "bit-identical to an eager one (warm-up steps after a resume are eager); "
                "use one of the two")  # fmt: skip
    if compile is not None:
        return (f"train.cuda_graph=true and train.compile={compile}: use one of the two "
                "(compile=reduce-overhead graphs the model alone)")  # fmt: skip
    if parallel_seeds > 1 and getattr(problem, "group_draws", False):
        return (
            f"train.cuda_graph=true cannot graph a group of {problem.name} (its members "
            f"draw dropout from their own streams, outside a graph's reach); use "
            f"parallel_seeds=1 (its single runs are graphed) or train.cuda_graph=false"
        )
    return None


def check(spec: RunSpec, device: str, parallel_seeds: int = 1) -> None:
    """A ConfigError (one line, before anything runs) where ``spec`` asks for a graph it
    cannot have on ``device`` (resolved: ``auto`` is the CPU without CUDA)."""
    if not spec.train.cuda_graph:
        return
    why = refusal(device=device, per_example=spec.optimizer.method.per_example,
                  deterministic=spec.deterministic, compile=spec.train.compile,
                  parallel_seeds=parallel_seeds, problem=PROBLEMS[spec.problem])  # fmt: skip
    if why:
        raise ConfigError(why)


def capturable(optimizer) -> None:
    """Turn ``capturable`` on for every param group, step counts moved to the device as
    float32 0-dim tensors (the package's optimizers and torch's Adam read the flag at each
    step; torch's Adam also takes it from a loaded state dict, hence after ``restore``)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                step = state["step"]
                if not (torch.is_tensor(step) and step.device == p.device
                        and step.dtype == torch.float32):  # fmt: skip
                    state["step"] = torch.tensor(float(step), dtype=torch.float32,
                                                 device=p.device)  # fmt: skip


def _tree(fn, obj):
    """``fn`` over the tensors of a carried state (nested tuples of tensors)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    return tuple(_tree(fn, x) for x in obj)


def _copy_tree(dst, src) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src, strict=True):
            _copy_tree(d, s)


class _Recipe:
    """What both graphed engines share: eager warm-up steps on a side stream, a capture
    again whenever a group's step size changed, the recorded graph, and checkpoints in the
    eager engine's format."""

    def _start_recipe(self, warmup: int) -> None:
        why = self._refusal()
        if why:
            raise ConfigError(why)
        if warmup < 1:  # the captured step needs the optimizer's state and a carried state
            raise ValueError(f"warmup must be >= 1 eager step, got {warmup}")
        capturable(self.optimizer)
        self.warmup, self.eager_steps, self.captures = warmup, 0, 0
        self.graph = None
        self.captured_lrs: tuple[float, ...] | None = None
        self._odd_shape_warned = False

    def group_lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def _warming_up(self) -> bool:
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            return True
        return False

    def _stale(self) -> bool:
        return self.graph is None or self.captured_lrs != self.group_lrs()

    def _captured(self, graph) -> None:
        self.graph = graph
        self.captured_lrs = self.group_lrs()
        self.captures += 1

    def _odd_shape(self, shape, expected) -> None:
        if not self._odd_shape_warned:
            log.warning("a batch of shape %s is not the graph's %s: eager steps for such "
                        "batches", tuple(shape), tuple(expected))  # fmt: skip
            self._odd_shape_warned = True

    def capture(self, k: int) -> dict:
        """The eager run's checkpoint: the graph is how a step runs, not what it is (torch's
        Adam would take ``capturable`` from the saved groups, which the CPU refuses)."""
        payload = super().capture(k)
        for group in payload["optimizer"]["param_groups"]:
            group["capturable"] = False
        return payload

    def restore(self, payloads: Sequence[dict]) -> None:
        """Restore the checkpoint; the graph is captured again (new optimizer state)."""
        try:
            super().restore(payloads)
        finally:  # restored, or put back as it was: capturable either way, captured anew
            capturable(self.optimizer)
            self.graph = None

    # --- CUDA (a test replaces these to run the recipe's plumbing on the CPU) --------------
    def _record(self, body):
        """Capture ``body`` (not run); return the graph and its outputs (static tensors)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = body()
        return graph, out

    def _side_stream(self):
        """Warm-up steps on a side stream (PyTorch's recipe), joined before going on."""
        return _side_stream(self.device)

    def _capture_autocast(self):
        # Autocast's cast cache would keep casts from the capture; graphs want it off.
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return self.autocast()


class GraphedSingle(_Recipe, engine.Single):
    """``Single`` whose whole training step is one CUDA graph, captured after ``warmup``
    eager steps. ``losses`` takes the whole step (optimizer step included) and returns a
    clone of the static loss; ``step`` advances the schedule only."""

    def __init__(self, problem, model, optimizer, scheduler, seed: int,
                 precision: str = backend.DEFAULT_PRECISION, warmup: int = WARMUP):  # fmt: skip
        super().__init__(problem, model, optimizer, scheduler, seed, precision)
        self._start_recipe(warmup)
        self.inputs = self.targets = self.loss = None  # static tensors of the graph
        self.carried_in = self.carried_out = None  # the char-LSTM's state (P4)
        self.carries = hasattr(model, "reset_state")

    def _refusal(self) -> str | None:
        return refusal(
            device=self.device.type, per_example=capabilities(self.optimizer).per_example
        )

    def losses(self, batches: Sequence[Batch], alive: torch.Tensor) -> torch.Tensor:
        """The whole step of ``batches[0]``: its loss (shape (1,)), the optimizer stepped."""
        batch = batches[0]
        if self._warming_up():
            with self._side_stream():
                return self._eager(batches, alive)
        if self.inputs is not None and not self._fits(batch):
            self._odd_shape(batch.inputs.shape, self.inputs.shape)
            return self._eager(batches, alive)
        if self.carries and self.carried_in is None and self.model.state is None:
            return self._eager(batches, alive)  # the static state takes its shape from one
        if self._stale():
            self._capture(batch)
        return self._replay(batch)

    def step(self) -> None:
        """The optimizer stepped in ``losses``; the schedule steps here."""
        self.scheduler.step()

    def _eager(self, batches, alive) -> torch.Tensor:
        loss = super().losses(batches, alive)
        self.optimizer.step()
        return loss.detach()

    def _fits(self, batch: Batch) -> bool:
        pairs = ((batch.inputs, self.inputs), (batch.targets, self.targets))
        return all(a.shape == b.shape and a.dtype == b.dtype for a, b in pairs)

    def _capture(self, batch: Batch) -> None:
        self.graph = None  # the old graph's memory goes back before the new capture
        if self.inputs is None:
            self.inputs, self.targets = batch.inputs.clone(), batch.targets.clone()
        carried = self.model.state if self.carries else None
        if self.carries and self.carried_in is None:
            self.carried_in = _tree(torch.zeros_like, carried)
        static = Batch(self.inputs, self.targets, batch.epoch, epoch_start=False)

        def body():
            if self.carries:
                self.model.state = self.carried_in
            with self._capture_autocast():
                loss = self.problem.training_loss(self.model, static)
            loss.backward()
            self.optimizer.step()
            return loss.detach()

        self.optimizer.zero_grad(set_to_none=True)  # backward allocates in the graph's pool
        graph, self.loss = self._record(body)
        if self.carries:  # the graph's output state; the live state stays the model's
            self.carried_out, self.model.state = self.model.state, carried
        self._captured(graph)

    def _replay(self, batch: Batch) -> torch.Tensor:
        self.inputs.copy_(batch.inputs)
        self.targets.copy_(batch.targets)
        if self.carries:
            state = self.model.state
            if batch.epoch_start or state is None:  # each pass over the text starts at zero
                _tree(torch.Tensor.zero_, self.carried_in)
            else:
                _copy_tree(self.carried_in, state)
        self.graph.replay()
        if self.carries:
            self.model.state = self.carried_out
        return self.loss.clone().reshape(1)


class GraphedStacked(_Recipe, engine.Stacked):
    """``Stacked`` whose whole training step (the K members' forward and backward passes,
    the optimizer step, each member's step-size scaling) is one CUDA graph. ``losses``
    takes the whole step and returns a clone of the static (K,) losses; ``step`` advances
    the schedule and holds the diverged members in place."""

    def __init__(self, problem, models, build_optimizer, lrs, seeds,
                 compile_mode: str | None = None,
                 precision: str = backend.DEFAULT_PRECISION, warmup: int = WARMUP):  # fmt: skip
        super().__init__(problem, models, build_optimizer, lrs, seeds, None, precision)
        self.compile_mode = compile_mode
        self._start_recipe(warmup)
        self.inputs = self.targets = self.alive = self.out = None  # static tensors

    def _refusal(self) -> str | None:
        return refusal(device=self.device.type, compile=self.compile_mode,
                       parallel_seeds=len(self.models), problem=self.problem)  # fmt: skip

    def losses(self, batches: Sequence[Batch], alive: torch.Tensor) -> torch.Tensor:
        """The whole step of member k on ``batches[k]``: the losses (K,), stepped."""
        if self._warming_up():
            with self._side_stream():
                return self._eager(batches, alive)
        if self.inputs is not None and not self._fits(batches):
            self._odd_shape(batches[0].inputs.shape, self.inputs[0].shape)
            return self._eager(batches, alive)
        if self._stale():
            self._capture(batches, alive)
        return self._replay(batches, alive)

    def step(self) -> None:
        """The optimizer stepped in ``losses``; the schedule and the frozen members here."""
        self.scheduler.step()
        self.hold_frozen()

    def _eager(self, batches, alive) -> torch.Tensor:
        losses = super().losses(batches, alive)
        self.update()
        return losses.detach()

    def _fits(self, batches: Sequence[Batch]) -> bool:
        return len(batches) == len(self.inputs) and all(
            a.shape == b.shape and a.dtype == b.dtype
            for batch, i, t in zip(batches, self.inputs, self.targets, strict=True)
            for a, b in ((batch.inputs, i), (batch.targets, t))
        )

    def _capture(self, batches: Sequence[Batch], alive: torch.Tensor) -> None:
        self.graph = None
        if self.inputs is None:
            self.inputs = [b.inputs.clone() for b in batches]
            self.targets = [b.targets.clone() for b in batches]
            self.alive = alive.clone()
        static = [Batch(i, t, b.epoch, epoch_start=False)
                  for i, t, b in zip(self.inputs, self.targets, batches, strict=True)]  # fmt: skip

        def body():
            with self._capture_autocast():
                losses, _ = self.loss(self.params, self.buffers, static, self.carried, self.rng)
            torch.where(self.alive, losses, torch.zeros_like(losses)).sum().backward()
            self.update()
            return losses.detach()

        self.optimizer.zero_grad(set_to_none=True)
        graph, self.out = self._record(body)
        self._captured(graph)

    def _replay(self, batches: Sequence[Batch], alive: torch.Tensor) -> torch.Tensor:
        for batch, i, t in zip(batches, self.inputs, self.targets, strict=True):
            i.copy_(batch.inputs)
            t.copy_(batch.targets)
        self.alive.copy_(alive)
        self.graph.replay()
        return self.out.clone()


@contextlib.contextmanager
def _side_stream(device: torch.device):
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)
