"""M-SSD-VA and M-SSD-erf: variance-adapted sign descent with momentum (paper §C)."""

from __future__ import annotations

from torch import Tensor

from . import _engine
from ._base import MomentOptimizer


def mssd_va(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
    steps: list[int], *, lr: float, beta: float, foreach: bool | None = None,
    fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional M-SSD-VA: update ``params`` and the averages ``m``, ``v`` in place."""
    _engine.update("mssd_va", params, grads, m, v, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


def mssd_erf(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
    steps: list[int], *, lr: float, beta: float, foreach: bool | None = None,
    fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional M-SSD-erf: update ``params`` and the averages ``m``, ``v`` in place."""
    _engine.update("mssd_erf", params, grads, m, v, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


class MSSDVA(MomentOptimizer):
    r"""Sign descent on a moving average, each step shrunk by the estimated relative variance.

    .. math::
        \tilde m_t &= \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        \tilde v_t = \beta \tilde v_{t-1} + (1-\beta) g_t^2 \\
        m_t &= \tilde m_t / (1-\beta^{t+1}),\quad v_t = \tilde v_t / (1-\beta^{t+1}) \\
        s_t &= (v_t - m_t^2) / (1 - \rho(\beta, t)) \\
        \theta_{t+1} &= \theta_t - \alpha\, \mathrm{sign}(m_t)
            \left(1 + \rho(\beta, t)\, s_t / m_t^2\right)^{-1/2}

    The factor is Adam's m / sqrt(v) with the paper's variance estimate
    rho s in place of the raw second moment, i.e. sqrt(gamma) for M-SVAG's
    gamma = m^2 / (m^2 + rho s). At t = 0, s = 0 and the first step is exactly
    an M-SSD (sign) step; where s <= 0 (zero variance, round-off) the factor
    is 1; a coordinate with m = 0 does not move (sign(0) = 0). No epsilon.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in (0, 1) for both averages (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, §3.1 and Fig. 3
    (Adam's factor), §C (variants), with rho of Eq. 21; docs/optimizers.md.

    Deviation: the supplement's §C could not be read; the rule is the
    variance-adapted sign method as docs/optimizers.md states it. The factor is computed
    as sqrt(a / (a + lam (v~ - a))), a = m~^2 / (1 - beta^(t+1)),
    lam = rho / (1 - rho), which is algebraically equal (see ``_engine``).
    """

    method = "mssd_va"
    name = "MSSDVA"


class MSSDErf(MomentOptimizer):
    r"""Sign descent on a moving average, each step scaled by the probability its sign is right.

    .. math::
        \tilde m_t &= \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        \tilde v_t = \beta \tilde v_{t-1} + (1-\beta) g_t^2 \\
        m_t &= \tilde m_t / (1-\beta^{t+1}),\quad v_t = \tilde v_t / (1-\beta^{t+1}) \\
        s_t &= (v_t - m_t^2) / (1 - \rho(\beta, t)) \\
        \theta_{t+1} &= \theta_t - \alpha\, \mathrm{sign}(m_t)\,
            \mathrm{erf}\!\left(|m_t| / \sqrt{2 \rho(\beta, t)\, s_t}\right)

    erf(|m| / sqrt(2 rho s)) = 2 P[sign(m) is the sign of the true gradient]
    - 1 for a Gaussian estimate: the optimal factor for a sign step (Lemma 1).
    At t = 0, s = 0 and the factor is erf(inf) = 1, so the first step is
    exactly an M-SSD (sign) step; where s <= 0 (zero variance, round-off) the
    factor is 1; a coordinate with m = 0 does not move. No epsilon.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in (0, 1) for both averages (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, Lemma 1 (Eq. 16),
    Eq. 10, Fig. 3 and §C (variants), with rho of Eq. 21; docs/optimizers.md.

    Deviation: the supplement's §C could not be read; the rule is the optimal
    sign factor as docs/optimizers.md states it. The argument of erf is computed as
    sqrt(a / (2 lam (v~ - a))), a = m~^2 / (1 - beta^(t+1)), lam = rho / (1 - rho),
    which is algebraically equal (see ``_engine``).
    """

    method = "mssd_erf"
    name = "MSSDErf"
