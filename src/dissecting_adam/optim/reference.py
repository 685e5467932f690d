"""Literal reference implementations of the paper's algorithms, for testing only.

Each function follows the pseudo-code of Balles & Hennig (2018) line by line,
one tensor at a time, with no algebraic rewriting: Alg. 1 (M-SVAG), Alg. 2
(M-SGD, M-SSD), SVAG (§4.3) and the variance-adapted sign methods
M-SSD-VA and M-SSD-erf (§C; docs/optimizers.md). They are slow on purpose; the fast
optimizers in this package are tested against them over long random runs.

``ReferenceOptimizer`` wraps them in the torch.optim interface so that a test
can drive a reference and a fast optimizer with the same gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._engine import METHODS


def rho(beta: float, t: int) -> float:
    """Eq. 21, written out."""
    return (1 - beta) * (1 + beta ** (t + 1)) / ((1 + beta) * (1 - beta ** (t + 1)))


def msgd_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """Alg. 2, left branch: theta <- theta - alpha m."""
    t = state.setdefault("t", 0)
    m_tilde = state.setdefault("m_tilde", torch.zeros_like(theta))
    m_tilde.copy_(beta * m_tilde + (1 - beta) * g)
    m = m_tilde / (1 - beta ** (t + 1))
    theta.copy_(theta - lr * m)
    state["t"] = t + 1


def mssd_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """Alg. 2, right branch: theta <- theta - alpha sign(m~)."""
    t = state.setdefault("t", 0)
    m_tilde = state.setdefault("m_tilde", torch.zeros_like(theta))
    m_tilde.copy_(beta * m_tilde + (1 - beta) * g)
    theta.copy_(theta - lr * torch.sign(m_tilde))
    state["t"] = t + 1


def _mean_and_variance(g: Tensor, state: dict, beta: float) -> tuple:
    """Bias-corrected mean m, variance estimate s and rho, as in Alg. 1."""
    t = state.setdefault("t", 0)
    m_tilde = state.setdefault("m_tilde", torch.zeros_like(g))
    v_tilde = state.setdefault("v_tilde", torch.zeros_like(g))
    m_tilde.copy_(beta * m_tilde + (1 - beta) * g)
    v_tilde.copy_(beta * v_tilde + (1 - beta) * g**2)
    m = m_tilde / (1 - beta ** (t + 1))
    v = v_tilde / (1 - beta ** (t + 1))
    r = rho(beta, t)
    if t == 0:
        s = torch.zeros_like(m)  # s_0 = 0 (paper §4.4); 1 - rho(beta, 0) = 0
    else:
        s = (v - m**2) / (1 - r)
    state["t"] = t + 1
    return m, s, r


def _variance_factor(g: Tensor, state: dict, beta: float, kappa_is_rho: bool) -> tuple:
    m, s, r = _mean_and_variance(g, state, beta)
    kappa = r if kappa_is_rho else 1.0
    gamma = m**2 / (m**2 + kappa * s)
    gamma = torch.nan_to_num(gamma, nan=0.0)  # m = v = 0: 0/0 counts as 0
    gamma = gamma.clamp(0.0, 1.0)  # round-off can leave [0, 1]
    return gamma, m


def msvag_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """Alg. 1: gamma = m^2 / (m^2 + rho s), theta <- theta - alpha gamma m."""
    gamma, m = _variance_factor(g, state, beta, kappa_is_rho=True)
    theta.copy_(theta - lr * (gamma * m))


def svag_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """SVAG: gamma = m^2 / (m^2 + s), theta <- theta - alpha gamma g."""
    gamma, _ = _variance_factor(g, state, beta, kappa_is_rho=False)
    theta.copy_(theta - lr * (gamma * g))


def mssd_va_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """§C: theta <- theta - alpha sign(m) (1 + rho s / m^2)^(-1/2)."""
    m, s, r = _mean_and_variance(g, state, beta)
    factor = (1 + r * s / m**2) ** (-1 / 2)  # m = 0, s > 0: (1 + inf)^(-1/2) = 0
    # s <= 0 (s_0 = 0, zero variance, round-off): factor 1; this also covers the
    # 0/0 (m = s = 0) and the negative bases. sign(0) = 0 then makes no move.
    factor = torch.where(s > 0, factor, 1.0)
    theta.copy_(theta - lr * torch.sign(m) * factor)


def mssd_erf_step(theta: Tensor, g: Tensor, state: dict, lr: float, beta: float) -> None:
    """§C, Lemma 1: theta <- theta - alpha sign(m) erf(|m| / sqrt(2 rho s))."""
    m, s, r = _mean_and_variance(g, state, beta)
    factor = torch.erf(m.abs() / torch.sqrt(2 * r * s))
    # s = 0 gives |m| / 0 = inf and erf(inf) = 1; set s <= 0 to 1 explicitly, which
    # covers 0/0 (m = s = 0) and sqrt of a negative s (round-off) too.
    factor = torch.where(s > 0, factor, 1.0)
    theta.copy_(theta - lr * torch.sign(m) * factor)


STEPS = {
    "msgd": msgd_step,
    "mssd": mssd_step,
    "msvag": msvag_step,
    "svag": svag_step,
    "mssd_va": mssd_va_step,
    "mssd_erf": mssd_erf_step,
}


class ReferenceOptimizer(torch.optim.Optimizer):
    """The literal reference of ``method`` behind the torch.optim interface."""

    def __init__(self, params, method: str, lr: float, beta: float = 0.9):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        self.method = method
        super().__init__(params, dict(lr=lr, beta=beta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    STEPS[self.method](p, p.grad, self.state[p], group["lr"], group["beta"])
        return loss


# --------------------------------------------------------------------------- §D
def minibatch_variance_step(
    theta: Tensor, g: Tensor, s_batch: Tensor, state: dict, lr: float, beta: float, method: str
) -> None:
    """M-SVAG / SVAG with the mini-batch variance estimate s_batch of this step (§D).

    m~ and s~ are moving averages of g and s_batch with one beta and bias correction;
    gamma = m^2 / (m^2 + kappa s), kappa = rho for M-SVAG and 1 for SVAG.
    """
    t = state.setdefault("t", 0)
    m_tilde = state.setdefault("m_tilde", torch.zeros_like(theta))
    s_tilde = state.setdefault("s_tilde", torch.zeros_like(theta))
    m_tilde.copy_(beta * m_tilde + (1 - beta) * g)
    s_tilde.copy_(beta * s_tilde + (1 - beta) * s_batch)
    m = m_tilde / (1 - beta ** (t + 1))
    s = s_tilde / (1 - beta ** (t + 1))
    kappa = rho(beta, t) if method == "msvag_mb" else 1.0
    gamma = m**2 / (m**2 + kappa * s)
    gamma = torch.nan_to_num(gamma, nan=0.0)  # m = s = 0: 0/0 counts as 0
    direction = m if method == "msvag_mb" else g
    theta.copy_(theta - lr * (gamma * direction))
    state["t"] = t + 1


class ReferenceMiniBatchOptimizer(torch.optim.Optimizer):
    """``minibatch_variance_step`` behind the torch.optim interface (reads p.batch_variance)."""

    def __init__(self, params, method: str, lr: float, beta: float = 0.9):
        if method not in ("msvag_mb", "svag_mb"):
            raise ValueError(f"unknown method {method!r}; expected 'msvag_mb' or 'svag_mb'")
        self.method = method
        super().__init__(params, dict(lr=lr, beta=beta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    s_batch = p.batch_variance
                    del p.batch_variance
                    minibatch_variance_step(
                        p, p.grad, s_batch, self.state[p], group["lr"], group["beta"], self.method
                    )
