"""SVAG: SGD with stochastic variance adaptation of the raw gradient (paper §4)."""

from __future__ import annotations

from torch import Tensor

from . import _engine
from ._base import MomentOptimizer


def svag(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
    steps: list[int], *, lr: float, beta: float, foreach: bool | None = None,
    fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional SVAG: update ``params`` and the averages ``m``, ``v`` in place."""
    _engine.update("svag", params, grads, m, v, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


class SVAG(MomentOptimizer):
    r"""SGD with each coordinate's step scaled by the variance adaptation factor of one gradient.

    .. math::
        s_t = (v_t - m_t^2) / (1 - \rho(\beta, t)),\quad
        \gamma_t = m_t^2 / (m_t^2 + s_t),\quad
        \theta_{t+1} = \theta_t - \alpha\, \gamma_t g_t

    with m_t, v_t the bias-corrected averages of M-SVAG (one beta). The moving
    averages only estimate the gradient's mean and variance; the step follows
    the current gradient g_t. At t = 0, s = 0, gamma = 1 (an SGD step).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in (0, 1) (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, §4.2-4.3 (SVAG).
    """

    method = "svag"
    name = "SVAG"
