"""M-SSD: stochastic sign descent with momentum (paper Alg. 2)."""

from __future__ import annotations

from torch import Tensor

from . import _engine
from ._base import MomentOptimizer


def mssd(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor] | None, steps: list[int],
    *, lr: float, beta: float, foreach: bool | None = None, fused: bool | None = None,
) -> None:  # fmt: skip
    """Functional M-SSD: update ``params`` and the averages ``m`` (None if beta = 0) in place."""
    _engine.update("mssd", params, grads, m, None, steps, lr=lr, beta=beta,
                   foreach=foreach, fused=fused)  # fmt: skip


class MSSD(MomentOptimizer):
    r"""Sign descent on a moving average of gradients.

    .. math::
        \tilde m_t = \beta \tilde m_{t-1} + (1-\beta) g_t,\quad
        \theta_{t+1} = \theta_t - \alpha\, \mathrm{sign}(\tilde m_t)

    A coordinate whose average is exactly 0 does not move (sign(0) = 0). The
    bias correction does not change a sign, so none is applied. ``beta=0`` is
    SSD, sign(g) (no state is kept); it equals signSGD, and M-SSD equals
    Signum up to the (1 - beta) scaling of the buffer, which the sign ignores.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: step size alpha (finite, > 0).
        beta: averaging constant in [0, 1) (paper: 0.9).
        foreach: use the multi-tensor path (default) or, if False, a per-tensor loop.
        fused: single-pass kernel (a C kernel on the CPU, Triton on CUDA; docs/optimizers.md).
        fused_backend: with fused=True, force 'native' (C, CPU), 'triton' or 'compile'.
        capturable: keep step counts on the device and compute the step's scalars there
            (no host sync: the step can be captured in a CUDA graph).

    Reference: Balles & Hennig, "Dissecting Adam", ICML 2018, Alg. 2 (right).
    """

    method = "mssd"
    name = "MSSD"
