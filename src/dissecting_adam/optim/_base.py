"""The thin torch.optim.Optimizer shells of the package's methods.

``OptimizerBase`` validates hyperparameters and owns ``step()``: for each param group it
takes the parameters that have a gradient, their step counts (created lazily), asks the
subclass for the per-parameter lists it needs (``_gather``: the averages, or for paper §D
this step's mini-batch variances), hands everything to the subclass's functional core
(``_update``) and counts the step. ``MomentOptimizer`` is the shell of the methods of
``_engine.METHODS``. The step counter t and the averages live in ``optimizer.state`` (keys
``step``, ``m``, ``v``; float32 for float16 and bfloat16 parameters), so ``state_dict()`` /
``load_state_dict()`` resume a run bit-identically.

``capturable=True`` keeps each step counter as a float32 0-dim tensor on its parameter's
device (as torch's Adam): the engine reads it on the device, ``step()`` increments it there
and never synchronises with the host, so a step can be captured in a CUDA graph. A state
dict with int steps loads into a capturable optimizer and vice versa (the counts are
converted on load).

``state_dict()`` records the method (top-level key ``"method"``), and ``load_state_dict()``
refuses a state dict of another method, or one whose buffers or ``beta`` this method cannot
use, with a ``ValueError`` that names both classes (``StateDictChecks``). State dicts saved
before the key existed are checked by their buffers' names and hyperparameters alone.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _engine
from ._internal import REAL_FLOATS, check_beta, check_lr, compute_dtype, zeros_state

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


#: Group keys that say how a step is computed, not what: a loaded state dict keeps the live
#: optimizer's (and may lack them: saved before they existed).
_HOW_KEYS = ("capturable", "fused_backend")


def _valid_step(step: Any) -> bool:
    """An int >= 0, or a 0-dim real tensor holding one (capturable, or torch's own layout)."""
    if isinstance(step, Tensor):
        if step.dim() != 0 or step.is_complex() or step.dtype == torch.bool:
            return False
        value = float(step)  # a state dict being loaded: reading it back is fine
        return value >= 0 and value == int(value)
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _step_as(step: int | Tensor, capturable: bool, device: torch.device) -> int | Tensor:
    """``step`` as a float32 tensor on ``device`` (capturable) or as an int."""
    if capturable:
        if isinstance(step, Tensor) and step.dtype == torch.float32 and step.device == device:
            return step
        return torch.full((), float(step), dtype=torch.float32, device=device)  # no copy
    return int(step) if isinstance(step, Tensor) else step


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
        how = [{k: g[k] for k in _HOW_KEYS if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keep in zip(self.param_groups, how, strict=True):
            group.update(keep)
            capturable = group.get("capturable", False)
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = _step_as(state["step"], capturable, p.device)
        # torch casts floating-point state to the parameter's dtype; 16-bit parameters keep
        # theirs in float32, taken again from the saved tensors so that nothing is rounded.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params, strict=True):
            want = compute_dtype(p.dtype)
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
            missing = sorted(set(self.defaults) - set(group) - set(_HOW_KEYS))
            if missing:
                raise refuse(saved, f"its param group {i} lacks the hyperparameters {missing}")
            try:
                check_beta(group["beta"], self._needs_positive_beta(), self.name)
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
            if not _valid_step(pstate["step"]):
                raise refuse(
                    saved,
                    f"the step count of parameter {pid} is not an int >= 0 (nor a 0-dim tensor "
                    f"holding one): {pstate['step']!r}",
                )


class OptimizerBase(StateDictChecks):
    """``step()`` as a template: subclasses say what they gather and which core they call.

    Subclasses implement ``_gather(group, params)`` (the per-parameter lists besides the
    parameters, gradients and step counts: buffers created lazily, this step's mini-batch
    variances, ...) and ``_update(group, params, grads, steps, gathered)`` (one call of
    their functional core). The base class checks gradients and dtypes, keeps the step
    counts (ints, or device tensors where the group is ``capturable``) and counts the step.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Validate every group, so that per-group lr and beta are checked too.
        check_lr(param_group.get("lr", self.defaults["lr"]))
        beta = param_group.get("beta", self.defaults["beta"])
        check_beta(beta, self._needs_positive_beta(), self.name)
        super().add_param_group(param_group)

    def _gather(self, group: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def _update(self, group, params, grads, steps, gathered: dict[str, Any]) -> None:
        raise NotImplementedError

    def _checked_grad(self, p: Tensor) -> Tensor:
        g = p.grad
        if g.layout is not torch.strided:
            raise RuntimeError(
                f"{self.name} does not support sparse gradients ({g.layout}); use a dense "
                "layer, e.g. nn.Embedding(..., sparse=False)"
            )
        if p.dtype not in REAL_FLOATS:
            raise RuntimeError(
                f"{self.name} supports real floating-point parameters, not {p.dtype}; for "
                "complex parameters optimise torch.view_as_real(p) instead"
            )
        return g

    def _steps(self, group: dict[str, Any], params: list[Tensor]) -> list[int] | list[Tensor]:
        """Each parameter's step count, created at 0 (a device tensor where capturable)."""
        capturable = group.get("capturable", False)
        out = []
        for p in params:
            state = self.state[p]
            old = state.get("step", 0)
            step = _step_as(old, capturable, p.device)
            if step is not old or "step" not in state:  # created or converted (a load)
                state["step"] = step
            out.append(step)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure``, if given, re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [self._checked_grad(p) for p in params]
            steps = self._steps(group, params)
            self._update(group, params, grads, steps, self._gather(group, params))
            if isinstance(steps[0], Tensor):  # on the device: no host sync
                torch._foreach_add_(steps, 1.0)
            else:
                for p in params:
                    self.state[p]["step"] += 1
        return loss


class MomentOptimizer(OptimizerBase):
    """Base class: subclasses set ``method`` (a key of ``_engine.METHODS``) and ``name``."""

    def _buffers(self, beta: float) -> tuple[frozenset[str], frozenset[str]]:
        if self.method in _engine.USES_V:
            keys = frozenset({"step", "m", "v"})
            return keys, keys
        # M-SGD and M-SSD keep m only for beta > 0 (an m saved with beta = 0 is unused).
        return frozenset({"step", "m"} if beta > 0 else {"step"}), frozenset({"step", "m"})

    def _needs_positive_beta(self) -> bool:
        return self.method in _engine.USES_V

    def __init__(
        self,
        params,
        lr: float,
        beta: float = 0.9,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        fused_backend: str | None = None,
        capturable: bool = False,
    ) -> None:
        if foreach and fused:
            raise ValueError("foreach=True and fused=True cannot be combined; choose one")
        if fused_backend is not None:
            if fused_backend not in _engine.FUSED_BACKENDS:
                raise ValueError(
                    f"Invalid fused_backend={fused_backend!r}: use None (the device's "
                    f"default) or one of {_engine.FUSED_BACKENDS}"
                )
            if not fused:
                raise ValueError(f"fused_backend={fused_backend!r} needs fused=True")
        defaults = dict(
            lr=lr, beta=beta, foreach=foreach, fused=fused, fused_backend=fused_backend,
            capturable=bool(capturable),
        )  # fmt: skip
        super().__init__(params, defaults)

    def _gather(self, group: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
        needs_v = self.method in _engine.USES_V
        keys = ("m", "v") if needs_v else ("m",) if group["beta"] > 0.0 else ()
        out: dict[str, Any] = {"m": None, "v": None}
        for key in keys:
            out[key] = [self.state[p].get(key) for p in params]
            for i, p in enumerate(params):
                if out[key][i] is None:
                    out[key][i] = self.state[p][key] = zeros_state(p)
        return out

    def _update(self, group, params, grads, steps, gathered: dict[str, Any]) -> None:
        _engine.update(
            self.method, params, grads, gathered["m"], gathered["v"], steps,
            lr=group["lr"], beta=group["beta"], foreach=group["foreach"],
            fused=group["fused"], fused_backend=group.get("fused_backend"),
        )  # fmt: skip
