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

import math
from typing import Any

import torch
from torch import Tensor

from ._base import OptimizerBase
from ._internal import (
    REAL_FLOATS,
    compute_dtype,
    convert,
    copy_back,
    limits,
    partition,
    rho,
    take,
    zeros_state,
)

METHODS = ("msvag_mb", "svag_mb")


def _coefficients(method: str, lr: float, beta: float, t: int) -> tuple[float, float, float]:
    """(lr_eff, c, kappa): m = c m~, gamma = a / (a + kappa s~) with a = c m~^2."""
    c = 1.0 / (1.0 - beta ** (t + 1))
    if method == "msvag_mb":
        return lr * c, c, rho(beta, t)
    return lr, c, 1.0


# gamma = a / (a + kappa s) with a = c m~^2, s = c s~ is evaluated as 1 / d,
#     d = 1 + r^2,   r = sqrt(s~) sqrt(kappa / c) / |m~|,
# which squares neither m~ nor s~ (they leave float32's range for |g| >= ~1e19 or
# <= ~1e-19), as in ``_engine``: |m~| is taken as at least the smallest normal number and
# sqrt(s~) as at most the square root of the largest finite one. Where m~ = 0, gamma is 0
# (the reference's 0/0 -> 0 where s~ = 0 too): no move. s~ >= 0 (the estimator clamps s_t).


def _single_tensor(method, p, g, sb, m, s, beta, lr_eff, c, kappa) -> None:
    acc = compute_dtype(p.dtype)
    pf, gf, mf, sf = p.to(acc), g.to(acc), m.to(acc), s.to(acc)
    mf.lerp_(gf, 1.0 - beta)
    sf.mul_(beta).add_(sb.to(acc), alpha=1.0 - beta)  # not lerp: inf - inf would be NaN
    tiny, sqrt_max = limits(acc)
    abs_m = mf.abs()
    r = torch.sqrt(sf).clamp_max(sqrt_max) * math.sqrt(kappa / c) / abs_m.clamp_min(tiny)
    d = r * r + 1.0
    if method == "msvag_mb":
        pf.addcdiv_(mf, d, value=-lr_eff)
    else:
        pf.addcdiv_(torch.sign(abs_m) * gf, d, value=-lr_eff)  # m~ = 0: gamma = 0
    for dst, src in ((p, pf), (m, mf), (s, sf)):
        if dst is not src:
            dst.copy_(src)


def _foreach(method, p, g, sb, m, s, beta, lr_eff, c, kappa) -> None:
    acc = compute_dtype(p[0].dtype)
    if p[0].dtype != acc:  # 16-bit parameters: the maths on float32 copies, then round
        pf, gf, sbf, mf, sf = (convert(xs, acc) for xs in (p, g, sb, m, s))
        _foreach(method, pf, gf, sbf, mf, sf, beta, lr_eff, c, kappa)
        for dst, src in ((p, pf), (m, mf), (s, sf)):
            copy_back(dst, src)
        return
    torch._foreach_lerp_(m, g, 1.0 - beta)
    torch._foreach_mul_(s, beta)  # not lerp: an s_t of inf (overflow) would give NaN
    torch._foreach_add_(s, sb, alpha=1.0 - beta)
    tiny, sqrt_max = limits(acc)
    r = torch._foreach_sqrt(s)
    torch._foreach_clamp_max_(r, sqrt_max)
    torch._foreach_mul_(r, math.sqrt(kappa / c))
    abs_m = torch._foreach_abs(m)
    num = m
    if method == "svag_mb":  # direction g, times 0 where m~ = 0 (gamma = 0 there)
        num = torch._foreach_sign(abs_m)
        torch._foreach_mul_(num, g)
    torch._foreach_clamp_min_(abs_m, tiny)
    torch._foreach_div_(r, abs_m)
    torch._foreach_mul_(r, r)
    torch._foreach_add_(r, 1.0)  # d = 1 / gamma
    torch._foreach_addcdiv_(p, num, r, value=-lr_eff)


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
    _, groups = partition(params, grads, m, s, steps, fused=False)  # by device, dtype, t
    for (_, _, t), idx in groups.items():
        coef = _coefficients(method, lr, beta, t)
        lists = [take(xs, idx) for xs in (params, grads, batch_variances, m, s)]
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


class MiniBatchVariance(OptimizerBase):
    """The shell of the §D methods: gathers this step's ``p.batch_variance`` and m~, s~."""

    #: The training loop must call ``per_example.backward_with_variance`` before ``step``.
    needs_batch_variance = True

    def _buffers(self, beta: float) -> tuple[frozenset[str], frozenset[str]]:
        keys = frozenset({"step", "m", "s"})
        return keys, keys

    def _needs_positive_beta(self) -> bool:
        return False

    def __init__(self, params, lr: float, beta: float = 0.9, *, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, beta=beta, foreach=foreach))

    def _gather(self, group: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
        """This step's variance estimates (every parameter needs a fresh one) and m~, s~."""
        out: dict[str, Any] = {"batch_variances": [self._take_variance(p) for p in params]}
        for key in ("m", "s"):
            out[key] = [self.state[p].get(key) for p in params]
            for i, p in enumerate(params):
                if out[key][i] is None:
                    out[key][i] = self.state[p][key] = zeros_state(p)  # float32 for 16-bit p
        return out

    def _update(self, group, params, grads, steps, gathered: dict[str, Any]) -> None:
        update(
            self.method, params, grads, gathered["batch_variances"], gathered["m"],
            gathered["s"], steps, lr=group["lr"], beta=group["beta"], foreach=group["foreach"],
        )  # fmt: skip

    def _take_variance(self, p: Tensor) -> Tensor:
        sb = getattr(p, "batch_variance", None)
        if sb is None:
            raise RuntimeError(
                f"{self.name} needs this step's mini-batch variance estimate on every "
                "parameter (p.batch_variance). Compute the gradients with "
                "dissecting_adam.per_example.backward_with_variance(problem, model, batch) "
                "instead of loss.backward(), or use MSVAG/SVAG (moving-average variance)."
            )
        if sb.shape != p.shape or p.dtype not in REAL_FLOATS:
            raise RuntimeError(
                f"{self.name}: batch_variance of shape {tuple(sb.shape)} does not match the "
                f"parameter's {tuple(p.shape)} (or the parameter is not a real float)"
            )
        del p.batch_variance  # used once: a step without a fresh estimate is an error
        return sb.to(compute_dtype(p.dtype))


class MSVAGMB(MiniBatchVariance):
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


class SVAGMB(MiniBatchVariance):
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
