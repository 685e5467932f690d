"""M-SGD: SGD with a bias-corrected moving average of gradients (paper Alg. 2)."""

from __future__ import annotations

from torch import Tensor

from . import _engine
from ._base import MomentOptimizer


def msgd(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor] | None, steps: list[int],
    *, lr: float, beta: float, foreach: bool | None = None, fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional M-SGD: update ``params`` and the averages ``m`` (None if beta = 0) in place."""
    _engine.update("msgd", params, grads, m, None, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


class MSGD(MomentOptimizer):
    r"""Momentum SGD with the paper's normalised, bias-corrected average.

    .. math::
        \tilde m_t = \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        m_t = \tilde m_t / (1-\beta^{t+1}),\quad
        \theta_{t+1} = \theta_t - \alpha\, m_t

    with t = 0, 1, ... and :math:`\tilde m_{-1} = 0`. ``beta=0`` is plain SGD
    (no state is kept).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in [0, 1) (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, Alg. 2 (left).

    Note: this is not ``torch.optim.SGD(momentum=0.9)``, whose buffer has no
    (1 - beta) factor and no bias correction, so its steps are ~1/(1 - beta)
    times larger for the same lr.
    """

    method = "msgd"
    name = "MSGD"
