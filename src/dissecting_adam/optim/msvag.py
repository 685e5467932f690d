"""M-SVAG: momentum SGD with stochastic variance adaptation (paper Alg. 1)."""

from __future__ import annotations

from torch import Tensor

from . import _engine
from ._base import MomentOptimizer


def msvag(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
    steps: list[int], *, lr: float, beta: float, foreach: bool | None = None,
    fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional M-SVAG: update ``params`` and the averages ``m``, ``v`` in place."""
    _engine.update("msvag", params, grads, m, v, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


class MSVAG(MomentOptimizer):
    r"""Momentum SGD whose per-coordinate step is scaled by an estimate of the optimal factor.

    .. math::
        \tilde m_t &= \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        \tilde v_t = \beta \tilde v_{t-1} + (1-\beta) g_t^2 \\
        m_t &= \tilde m_t / (1-\beta^{t+1}),\quad v_t = \tilde v_t / (1-\beta^{t+1}) \\
        s_t &= (v_t - m_t^2) / (1 - \rho(\beta, t)),\quad
        \gamma_t = m_t^2 / (m_t^2 + \rho(\beta, t)\, s_t) \\
        \theta_{t+1} &= \theta_t - \alpha\, \gamma_t m_t

    with rho of Eq. 21 and one beta for both averages. At t = 0, s = 0 and
    gamma = 1, so the first step is exactly an SGD step. There is no epsilon:
    a coordinate with m = v = 0 does not move, and gamma is kept in [0, 1].

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in (0, 1) (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, Alg. 1 and Eq. 21.

    Deviation: none in the maths. gamma is computed as a / (a + lam (v~ - a))
    with a = m~^2 / (1 - beta^(t+1)), which is algebraically equal and needs no
    extra buffer (see ``_engine``).
    """

    method = "msvag"
    name = "MSVAG"
