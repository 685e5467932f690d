"""The thin torch.optim.Optimizer shell shared by the methods of ``_engine.METHODS``.

It validates hyperparameters, creates state lazily, gathers flat lists and
hands them to the functional core in ``_engine.py``. The step counter t and
the averages live in ``optimizer.state`` (keys ``step``, ``m``, ``v``; float32 for
float16 and bfloat16 parameters), so ``state_dict()`` / ``load_state_dict()`` resume a
run bit-identically.

``state_dict()`` records the method (top-level key ``"method"``), and ``load_state_dict()``
refuses a state dict of another method, or one whose buffers or ``beta`` this method cannot
use, with a ``ValueError`` that names both classes (``StateDictChecks``). State dicts saved
before the key existed are checked by their buffers' names and hyperparameters alone.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import torch
from torch.optim import Optimizer

from . import _engine

_REAL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: The top-level key of ``state_dict()`` that names the method that saved it.
METHOD_KEY = "method"
#: method -> class name of every optimizer class of this package (filled on definition).
CLASS_NAMES: dict[str, str] = {}
#: Which classes keep which state keys (for the error on a state dict without the key).
_LAYOUTS = {
    frozenset({"step"}): "MSGD or MSSD with beta=0",
    frozenset({"step", "m"}): "MSGD or MSSD",
    frozenset({"step", "m", "v"}): "MSVAG, SVAG, MSSDVA or MSSDErf",
    frozenset({"step", "m", "s"}): "MSVAGMB or SVAGMB",
    frozenset({"step", "exp_avg", "exp_avg_sq"}): "torch.optim.Adam or AdamW",
    frozenset({"step", "momentum_buffer"}): "torch.optim.SGD",
    frozenset({"momentum_buffer"}): "torch.optim.SGD",
}


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


def _zeros_state(p: torch.Tensor) -> torch.Tensor:
    """A zero buffer like ``p`` in the state dtype (float32 for 16-bit parameters)."""
    return torch.zeros_like(
        p, dtype=_engine.compute_dtype(p.dtype), memory_format=torch.preserve_format
    )


class StateDictChecks(Optimizer):
    """``state_dict`` records the method; ``load_state_dict`` checks it and the state's layout.

    Subclasses set ``method`` and ``name`` and say which buffers a parameter's state holds
    (``_buffers``) and whether beta must be positive (``_needs_positive_beta``). Loading also
    keeps the state of 16-bit parameters in float32 (``_engine.compute_dtype``): torch would
    cast it to the parameter's dtype.
    """

    method: str = ""
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            CLASS_NAMES.setdefault(cls.method, cls.name)

    def _buffers(self, beta: float) -> tuple[frozenset[str], frozenset[str]]:
        """(required, allowed) state keys of a parameter in a group with this ``beta``."""
        raise NotImplementedError

    def _needs_positive_beta(self) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        state_dict[METHOD_KEY] = self.method
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        # torch casts floating-point state to the parameter's dtype; 16-bit parameters keep
        # theirs in float32, taken again from the saved tensors so that nothing is rounded.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params, strict=True):
            want = _engine.compute_dtype(p.dtype)
            if want == p.dtype or pid not in state_dict["state"]:
                continue
            state = self.state[p]
            for key, value in state_dict["state"][pid].items():
                if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                    state[key] = value.to(device=p.device, dtype=want)

    def _refuse(self, saved: str | None, why: str, state_dict: dict | None = None) -> ValueError:
        cls = self.name
        if saved is None:  # a state dict without the key: guess from its buffers
            keys = next(iter((state_dict or {}).get("state", {}).values()), None)
            guess = _LAYOUTS.get(frozenset(keys or ()), "")
            source = "this state dict was saved by another optimizer" + (
                f" (its buffers are those of {guess})" if guess else ""
            )
            fix = f"load it into the optimizer class that saved it, or start {cls} afresh"
        else:
            other = CLASS_NAMES.get(saved, repr(saved))
            source = f"this state dict was saved by {other} (method {saved!r})"
            fix = (
                f"load it into a {other} optimizer, or start {cls} afresh (do not call "
                "load_state_dict)"
            )
        return ValueError(
            f"{cls}.load_state_dict: {source}, not by {cls} (method {self.method!r}): {why}. "
            f"Fix: {fix}."
        )

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"{self.name}.load_state_dict expects a dict with 'state' and 'param_groups', "
                "as returned by state_dict()"
            )
        saved = state_dict.get(METHOD_KEY)

        def refuse(saved: str | None, why: str) -> ValueError:
            return self._refuse(saved, why, state_dict)

        if saved is not None and saved != self.method:
            raise refuse(
                saved if isinstance(saved, str) else repr(saved),
                "the two methods keep different statistics or use them differently",
            )
        beta_of: dict[Any, float] = {}
        for i, group in enumerate(state_dict["param_groups"]):
            missing = sorted(set(self.defaults) - set(group))
            if missing:
                raise refuse(saved, f"its param group {i} lacks the hyperparameters {missing}")
            try:
                _check_beta(group["beta"], self._needs_positive_beta(), self.name)
            except ValueError as err:
                raise refuse(saved, f"its param group {i}: {err}") from None
            beta_of.update(dict.fromkeys(group["params"], group["beta"]))
        for pid, pstate in state_dict["state"].items():
            required, allowed = self._buffers(beta_of.get(pid, 0.9))
            keys = set(pstate)
            if not required <= keys <= allowed:
                raise refuse(
                    saved,
                    f"the state of parameter {pid} holds {sorted(keys)}, but {self.name} "
                    f"keeps {sorted(required)}",
                )
            if isinstance(pstate["step"], bool) or not isinstance(pstate["step"], int):
                raise refuse(
                    saved, f"the step count of parameter {pid} is not an int ({pstate['step']!r})"
                )


class MomentOptimizer(StateDictChecks):
    """Base class: subclasses set ``method`` (a key of ``_engine.METHODS``) and ``name``."""

    def _buffers(self, beta: float) -> tuple[frozenset[str], frozenset[str]]:
        if self.method in _engine._USES_V:
            keys = frozenset({"step", "m", "v"})
            return keys, keys
        # M-SGD and M-SSD keep m only for beta > 0 (an m saved with beta = 0 is unused).
        return frozenset({"step", "m"} if beta > 0 else {"step"}), frozenset({"step", "m"})

    def _needs_positive_beta(self) -> bool:
        return self.method in _engine._USES_V

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
                    state["m"] = _zeros_state(p)
                m.append(state["m"])
            if needs_v:
                if "v" not in state:
                    state["v"] = _zeros_state(p)
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
