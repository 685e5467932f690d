"""The thin torch.optim.Optimizer shell shared by the methods of ``_engine.METHODS``.

It validates hyperparameters, creates state lazily, gathers flat lists and
hands them to the functional core in ``_engine.py``. The step counter t and
the averages live in ``optimizer.state`` (keys ``step``, ``m``, ``v``), so
``state_dict()`` / ``load_state_dict()`` resume a run bit-identically.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from . import _engine

_REAL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_lr(lr: Any) -> None:
    if isinstance(lr, torch.Tensor):
        raise ValueError("lr must be a Python float, not a tensor")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid learning rate lr={lr!r}: it must be a finite number > 0")


def _check_beta(beta: Any, needs_positive: bool, name: str) -> None:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
        raise ValueError(f"Invalid beta={beta!r}: it must be a number in [0, 1)")
    if needs_positive and not 0.0 < beta < 1.0:
        raise ValueError(
            f"Invalid beta={beta!r}: {name} estimates the gradient variance from moving "
            "averages and needs 0 < beta < 1 (the paper uses 0.9)"
        )
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"Invalid beta={beta!r}: it must lie in [0, 1) (the paper uses 0.9)")


class MomentOptimizer(Optimizer):
    """Base class: subclasses set ``method`` (a key of ``_engine.METHODS``) and ``name``."""

    method: str = ""
    name: str = ""

    def __init__(
        self,
        params,
        lr: float,
        beta: float = 0.9,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if foreach and fused:
            raise ValueError("foreach=True and fused=True cannot be combined; choose one")
        defaults = dict(lr=lr, beta=beta, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Validate every group, so that per-group lr and beta are checked too.
        lr = param_group.get("lr", self.defaults["lr"])
        beta = param_group.get("beta", self.defaults["beta"])
        _check_lr(lr)
        _check_beta(beta, self.method in _engine._USES_V, self.name)
        super().add_param_group(param_group)

    def _init_group(self, group, params, grads, m, v, steps) -> None:
        needs_v = self.method in _engine._USES_V
        needs_m = needs_v or group["beta"] > 0.0
        state_of = self.state
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.layout is not torch.strided:
                raise RuntimeError(
                    f"{self.name} does not support sparse gradients ({g.layout}); use a dense "
                    "layer, e.g. nn.Embedding(..., sparse=False)"
                )
            if p.dtype not in _REAL_FLOATS:
                raise RuntimeError(
                    f"{self.name} supports real floating-point parameters, not {p.dtype}; for "
                    "complex parameters optimise torch.view_as_real(p) instead"
                )
            state = state_of[p]
            if not state:
                state["step"] = 0
            if needs_m:
                if "m" not in state:
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m.append(state["m"])
            if needs_v:
                if "v" not in state:
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v.append(state["v"])
            params.append(p)
            grads.append(g)
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure``, if given, re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, m, v, steps = [], [], [], [], []
            self._init_group(group, params, grads, m, v, steps)
            if not params:
                continue
            _engine.update(
                self.method, params, grads, m or None, v or None, steps,
                lr=group["lr"], beta=group["beta"],
                foreach=group["foreach"], fused=group["fused"],
            )  # fmt: skip
            for p in params:
                self.state[p]["step"] += 1
        return loss
