"""M-SVAG and SVAG with the gradient variance estimated inside each mini-batch (paper §D).

The variance estimate s_t of the mini-batch gradient comes from per-example gradients
(``dissecting_adam.per_example``) instead of from the moving averages. The per-step
estimates are combined over time exactly as M-SVAG combines its gradients: one beta, an
exponential moving average and the same bias correction,

    m~ <- beta m~ + (1 - beta) g,      s~ <- beta s~ + (1 - beta) s_t,
    m = m~ / (1 - beta^(t+1)),         s = s~ / (1 - beta^(t+1)).

Why: s then estimates the variance sigma^2 of one mini-batch gradient, smoothed like m,
and the variance of m is rho(beta, t) sigma^2 (paper Eq. 21, exact for a constant
sigma^2), which is the rho s term of M-SVAG's factor. (Weighting the s_t with squared
weights would estimate var(m) directly; both agree when sigma^2 is constant, and the
choice above keeps Alg. 1's form and its memory: two buffers, like M-SVAG.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._base import _REAL_FLOATS, _check_beta, _check_lr
from ._engine import _partition, _take, rho

METHODS = ("msvag_mb", "svag_mb")


def _coefficients(method: str, lr: float, beta: float, t: int) -> tuple[float, float, float]:
    """(lr_eff, c, kappa): m = c m~, gamma = a / (a + kappa s~) with a = c m~^2."""
    c = 1.0 / (1.0 - beta ** (t + 1))
    if method == "msvag_mb":
        return lr * c, c, rho(beta, t)
    return lr, c, 1.0


def _single_tensor(method, p, g, sb, m, s, beta, lr_eff, c, kappa) -> None:
    m.lerp_(g, 1.0 - beta)
    s.lerp_(sb, 1.0 - beta)
    a = m * m * c
    den = a + s * kappa  # >= 0: s_t >= 0 is clamped by the estimator
    gamma = torch.where(den > 0, a / torch.where(den > 0, den, 1.0), 0.0)  # 0/0: no move
    p.addcmul_(gamma, m if method == "msvag_mb" else g, value=-lr_eff)


def _foreach(method, p, g, sb, m, s, beta, lr_eff, c, kappa) -> None:
    torch._foreach_lerp_(m, g, 1.0 - beta)
    torch._foreach_lerp_(s, sb, 1.0 - beta)
    a = torch._foreach_mul(m, m)
    torch._foreach_mul_(a, c)
    den = torch._foreach_mul(s, kappa)
    torch._foreach_add_(den, a)
    # den = 0 only where m~ = s~ = 0: adding 1 - sign(den) (1 there, 0 elsewhere) makes
    # gamma = 0/1 there and changes nothing else. No epsilon.
    zero = torch._foreach_sign(den)
    torch._foreach_sub_(zero, 1.0)
    torch._foreach_sub_(den, zero)
    torch._foreach_div_(a, den)
    torch._foreach_addcmul_(p, a, m if method == "msvag_mb" else g, value=-lr_eff)


def update(
    method: str, params: list[Tensor], grads: list[Tensor], batch_variances: list[Tensor],
    m: list[Tensor], s: list[Tensor], steps: list[int], *, lr: float, beta: float,
    foreach: bool | None = None,
) -> None:  # fmt: skip
    """Functional form: one step of ``method`` ("msvag_mb" or "svag_mb"), in place.

    ``batch_variances`` are this step's estimates s_t (one per parameter); ``m``, ``s`` the
    un-corrected averages m~, s~; ``steps`` each parameter's step count t.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    _, groups = _partition(params, grads, m, s, steps, fused=False)  # by device, dtype, t
    for (_, _, t), idx in groups.items():
        coef = _coefficients(method, lr, beta, t)
        lists = [_take(xs, idx) for xs in (params, grads, batch_variances, m, s)]
        if foreach is False:
            for tensors in zip(*lists, strict=True):
                _single_tensor(method, *tensors, beta, *coef)
        else:
            _foreach(method, *lists, beta, *coef)


def msvag_mb(params, grads, batch_variances, m, s, steps, *, lr, beta, foreach=None) -> None:
    """Functional M-SVAG with mini-batch variance estimates."""
    update("msvag_mb", params, grads, batch_variances, m, s, steps, lr=lr, beta=beta,
           foreach=foreach)  # fmt: skip


def svag_mb(params, grads, batch_variances, m, s, steps, *, lr, beta, foreach=None) -> None:
    """Functional SVAG with mini-batch variance estimates."""
    update("svag_mb", params, grads, batch_variances, m, s, steps, lr=lr, beta=beta,
           foreach=foreach)  # fmt: skip


class _MiniBatchVariance(Optimizer):
    method = ""
    name = ""
    #: The training loop must call ``per_example.backward_with_variance`` before ``step``.
    needs_batch_variance = True

    def __init__(self, params, lr: float, beta: float = 0.9, *, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, beta=beta, foreach=foreach))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        lr = param_group.get("lr", self.defaults["lr"])
        beta = param_group.get("beta", self.defaults["beta"])
        _check_lr(lr)
        _check_beta(beta, False, self.name)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        """One step; every parameter with a gradient needs a fresh ``batch_variance``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, sb, m, s, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                grads.append(p.grad)
                sb.append(self._take_variance(p))
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m.append(state["m"])
                s.append(state["s"])
                steps.append(state["step"])
            if not params:
                continue
            update(self.method, params, grads, sb, m, s, steps, lr=group["lr"],
                   beta=group["beta"], foreach=group["foreach"])  # fmt: skip
            for p in params:
                self.state[p]["step"] += 1
        return loss

    def _take_variance(self, p: Tensor) -> Tensor:
        sb = getattr(p, "batch_variance", None)
        if sb is None:
            raise RuntimeError(
                f"{self.name} needs this step's mini-batch variance estimate on every "
                "parameter (p.batch_variance). Compute the gradients with "
                "dissecting_adam.per_example.backward_with_variance(problem, model, batch) "
                "instead of loss.backward(), or use MSVAG/SVAG (moving-average variance)."
            )
        if sb.shape != p.shape or p.dtype not in _REAL_FLOATS:
            raise RuntimeError(
                f"{self.name}: batch_variance of shape {tuple(sb.shape)} does not match the "
                f"parameter's {tuple(p.shape)} (or the parameter is not a real float)"
            )
        del p.batch_variance  # used once: a step without a fresh estimate is an error
        return sb.to(p.dtype)


class MSVAGMB(_MiniBatchVariance):
    r"""M-SVAG whose gradient variance is estimated inside each mini-batch (paper §D).

    .. math::
        \tilde m_t &= \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        \tilde s_t = \beta \tilde s_{t-1} + (1-\beta) \hat s_t \\
        m_t &= \tilde m_t / (1-\beta^{t+1}),\quad s_t = \tilde s_t / (1-\beta^{t+1}) \\
        \gamma_t &= m_t^2 / (m_t^2 + \rho(\beta, t)\, s_t),\quad
        \theta_{t+1} = \theta_t - \alpha\, \gamma_t m_t

    where :math:`\hat s_t = ((1/|B|)\sum_k (\nabla l_k)^2 - g_t^2)/(|B|-1)` is the
    mini-batch estimate of the variance of g_t (without the regulariser), set on each
    parameter as ``p.batch_variance`` by ``per_example.backward_with_variance``.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in [0, 1) for m and s (paper: 0.9).
        foreach: multi-tensor path (default) or, if False, a per-tensor loop.

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, Alg. 1 and supplement §D.

    Deviation from M-SVAG: at t = 0 a real variance estimate exists, so gamma_0 =
    g^2 / (g^2 + s_0) rather than 1. m = s = 0 gives no move (0/0); no epsilon. No fused
    path: the per-example gradients dominate the cost of a step.
    """

    method = "msvag_mb"
    name = "MSVAGMB"


class SVAGMB(_MiniBatchVariance):
    r"""SVAG whose gradient variance is estimated inside each mini-batch (paper §D).

    Same averages as ``MSVAGMB``; :math:`\gamma_t = m_t^2 / (m_t^2 + s_t)` and
    :math:`\theta_{t+1} = \theta_t - \alpha\, \gamma_t g_t`.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in [0, 1) (paper: 0.9).
        foreach: multi-tensor path (default) or, if False, a per-tensor loop.

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, §3.2 and supplement §D.
    """

    method = "svag_mb"
    name = "SVAGMB"
