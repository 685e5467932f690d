"""How the training loop computes K members' steps: one model, or K models stacked.

The loop (``loop.train``) is the same for a single run and for a group; an engine owns the
computation and the member-wise state:

- ``Single``: one model, its optimizer and scheduler, the global RNG (dropout) seeded with
  the run's seed; mini-batch variance estimates (§D) need it.
- ``Stacked``: K models of one problem and one method as one batched computation: their
  parameters and buffers stacked along a new leading dimension, one ``BatchedLoss`` of the
  problem (a ``vmap`` of the model, or the problem's own batched model: the char-LSTM's),
  one optimizer over the stacked tensors (every method is element-wise with a step count
  shared by all elements, so that is K optimizers in lockstep), each member's own RNG
  stream (``MemberRNG``). Members may differ in step size: the optimizer runs with member
  0's and member k's step is scaled by lr_k / lr_0 (exact for every method here, whose
  update is the step size times a direction that does not depend on it; float rounding
  aside). A diverged member is frozen: its slices are put back after every step.

Both evaluate the forward pass and the loss in the run's precision (``autocast()``: bf16
autocast for ``precision="bf16"``; the backward pass and the optimizer step stay outside,
on float32 parameters, gradients and state). The loop's evaluation passes should enter
``engine.autocast()`` too.

Both speak the single-run checkpoint format per member (``capture``/``restore``: model
state_dict, carried LSTM state, optimizer and scheduler state dicts, RNG states), so a
member resumes as a single run and a single run as a member.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import stack_module_state

from .. import per_example
from ..methods import capabilities
from ..problems import Problem
from ..problems.batched import MemberRNG
from ..problems.batching import Batch
from . import backend, checkpoint


class Single:
    """One model: the engine of a single run (a group of one)."""

    def __init__(self, problem: Problem, model: nn.Module, optimizer, scheduler, seed: int,
                 precision: str = backend.DEFAULT_PRECISION):  # fmt: skip
        self.problem, self.model = problem, model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.seed, self.precision = seed, precision
        self.batch_variance = capabilities(optimizer).per_example
        if self.batch_variance:
            per_example.check_supported(model, problem.name)
        self.device = next(model.parameters()).device
        backend.autocast(precision, self.device.type)  # a bad precision fails here

    def autocast(self):
        """The context of a forward pass and its loss in this run's precision."""
        return backend.autocast(self.precision, self.device.type)

    def start(self) -> None:
        torch.manual_seed(self.seed)  # dropout; build_model and batches have their own

    def losses(self, batches: Sequence[Batch], alive: torch.Tensor) -> torch.Tensor:
        """The training loss (shape (1,)), its gradient accumulated."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.batch_variance:  # M-SVAG / SVAG with mini-batch variance estimates (§D)
            # torch.func computes the per-example gradients inside the forward transform.
            with self.autocast():
                loss = per_example.backward_with_variance(self.problem, self.model, batches[0])
        else:
            with self.autocast():
                loss = self.problem.training_loss(self.model, batches[0])
            loss.backward()
        return loss.reshape(1)

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()

    def freeze(self, k: int) -> None:
        """A diverged single run stops at once; nothing to keep in place."""

    def model_of(self, k: int) -> nn.Module:
        return self.model

    def capture(self, k: int) -> dict:
        return checkpoint.capture(self.model, self.optimizer, self.scheduler)

    def restore(self, payloads: Sequence[dict]) -> None:
        """Restore the run from its checkpoint payload; on failure nothing is changed."""
        before = copy.deepcopy(self.capture(0))
        try:
            checkpoint.restore(payloads[0], model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler)  # fmt: skip
        except BaseException:
            checkpoint.restore(before, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler)  # fmt: skip
            raise


class Stacked:
    """K models of one problem and one method, trained as one batched computation."""

    def __init__(self, problem: Problem, models: list[nn.Module], build_optimizer: Callable,
                 lrs: Sequence[float], seeds: Sequence[int],
                 compile_mode: str | None = None,
                 precision: str = backend.DEFAULT_PRECISION):  # fmt: skip
        self.problem, self.models = problem, models
        self.lrs, self.seeds = [float(lr) for lr in lrs], list(seeds)
        self.device = next(models[0].parameters()).device
        self.precision = precision
        backend.autocast(precision, self.device.type)  # a bad precision fails here
        self.params, self.buffers = stack_module_state(models)  # (K, ...) leaves
        self.names = list(self.params)
        self.optimizer = build_optimizer([self.params[n] for n in self.names], self.lrs[0])
        self.scheduler = problem.lr_scheduler(self.optimizer)
        self.loss = problem.batched_loss(models[0])
        if compile_mode is not None:  # the K forward and backward passes as one graph
            self.loss.compile(compile_mode)
        self.carried = self.loss.init_carried(len(models), self.device)
        self.rng = MemberRNG(self.seeds)
        # Per parameter, lr_k / lr_0 shaped to broadcast over member k's slice (computed in
        # float64, then in the parameter's dtype); None when all members share one lr.
        self.ratios = None
        if any(lr != self.lrs[0] for lr in self.lrs):
            ratios = torch.tensor([lr / self.lrs[0] for lr in self.lrs], dtype=torch.float64)
            self.ratios = {
                n: ratios.reshape(-1, *[1] * (p.dim() - 1)).to(p.device, p.dtype)
                for n, p in self.params.items()
            }
        self.frozen: dict[int, list[torch.Tensor]] = {}

    def start(self) -> None:
        """Each member's RNG stream starts as a single run's would (``MemberRNG``)."""

    def autocast(self):
        """The context of a forward pass and its loss in the group's precision. Under vmap
        bf16 autocast reaches less far than in a single run: a Linear adds its bias in
        float32 (pytorch issue 192617), and on the CPU convolutions stay float32 (their
        batching rule calls ``aten.convolution``, which the CPU's autocast lacks)."""
        return backend.autocast(self.precision, self.device.type)

    def losses(self, batches: Sequence[Batch], alive: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses, self.carried = self.loss(self.params, self.buffers, list(batches),
                                             self.carried, self.rng)  # fmt: skip
        torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
        return losses

    def step(self) -> None:
        self.update()
        self.scheduler.step()
        self.hold_frozen()

    def update(self) -> None:
        """The optimizer's step, member k's scaled to its step size lr_k / lr_0 times
        member 0's."""
        before = None
        if self.ratios is not None:
            before = [self.params[n].detach().clone() for n in self.names]
        self.optimizer.step()
        if before is not None:
            with torch.no_grad():
                for n, old in zip(self.names, before, strict=True):
                    self.params[n].sub_(old).mul_(self.ratios[n]).add_(old)

    @torch.no_grad()
    def hold_frozen(self) -> None:
        """A diverged member stays where it stopped."""
        for k, slices in self.frozen.items():
            for n, s in zip(self.names, slices, strict=True):
                self.params[n][k].copy_(s)

    def freeze(self, k: int) -> None:
        self.frozen[k] = [self.params[n][k].detach().clone() for n in self.names]

    @torch.no_grad()
    def model_of(self, k: int) -> nn.Module:
        """``models[k]`` holding member k's current parameters, buffers and carried state."""
        model = self.models[k]
        state = {n: t[k] for n, t in {**self.params, **self.buffers}.items()}
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_(state[name])
        if hasattr(model, "reset_state"):
            model.state = self.loss.carried_of(self.carried, k)
        return model

    def capture(self, k: int) -> dict:
        """Member k in the single-run checkpoint format (its slices, its step size)."""
        model = self.model_of(k)
        full = self.optimizer.state_dict()
        shapes = [tuple(self.params[n].shape) for n in self.names]
        state = {
            i: {key: _member_slice(v, shapes[i], k) for key, v in s.items()}
            for i, s in full["state"].items()
        }
        sched = self.scheduler.state_dict()
        factor = self.problem.lr_factor(sched["last_epoch"])
        groups = [_with_lr(g, self.lrs[k], factor) for g in full["param_groups"]]
        sched = _scheduler_with_lr(sched, self.lrs[k], factor)
        return {
            "model": {n: t.clone() for n, t in model.state_dict().items()},
            "model_carried_state": checkpoint.carried_state(model),
            "optimizer": {**full, "state": state, "param_groups": groups},
            "scheduler": sched,
            "rng": {
                **self.rng.state(k),
                "numpy": np.random.get_state(),  # noqa: NPY002
                "python": random.getstate(),
            },  # fmt: skip
        }

    @torch.no_grad()
    def restore(self, payloads: Sequence[dict]) -> None:
        """Every member from its payload (all saved after the same number of steps)."""
        for k, payload in enumerate(payloads):
            model = self.models[k]
            model.load_state_dict(payload["model"])
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                target = self.params.get(name, self.buffers.get(name))
                target[k].copy_(tensor)
            if hasattr(model, "reset_state"):
                carried = checkpoint.to_device(payload["model_carried_state"], self.device)
                self.carried = self.loss.with_member(self.carried, k, carried)
            self.rng.set_state(k, payload["rng"])
        first = payloads[0]
        shapes = [tuple(self.params[n].shape) for n in self.names]
        state = {}
        for i, s in first["optimizer"]["state"].items():
            state[i] = {
                key: _stacked(v, [p["optimizer"]["state"][i][key] for p in payloads], shapes[i])
                for key, v in s.items()
            }
        factor = self.problem.lr_factor(first["scheduler"]["last_epoch"])
        groups = [_with_lr(g, self.lrs[0], factor) for g in first["optimizer"]["param_groups"]]
        optimizer = {**first["optimizer"], "state": state, "param_groups": groups}
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(_scheduler_with_lr(first["scheduler"], self.lrs[0], factor))
        np.random.set_state(first["rng"]["numpy"])  # noqa: NPY002
        random.setstate(first["rng"]["python"])


def _member_slice(value, shape: tuple, k: int):
    if isinstance(value, torch.Tensor) and tuple(value.shape) == shape:
        return value[k].clone()
    return value  # the shared step count


def _stacked(value, values: list, shape: tuple):
    if isinstance(value, torch.Tensor) and tuple(value.shape) == shape[1:]:
        return torch.stack(values)
    return value


def _with_lr(group: dict, lr: float, factor: float) -> dict:
    """A param group as a run of step size ``lr`` has it (``LambdaLR``: lr x factor)."""
    return {**group, "lr": lr * factor, "initial_lr": lr}


def _scheduler_with_lr(state: dict, lr: float, factor: float) -> dict:
    return {**state, "base_lrs": [lr], "_last_lr": [lr * factor]}
