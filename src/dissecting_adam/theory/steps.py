"""Optimal local step sizes and expected improvements on an sQP (paper §2.1, Eq. 12-14).

For a stochastic direction z at theta,

    E[L(theta + alpha z)] = L(theta) + alpha grad^T E[z] + alpha^2 / 2 E[z^T Q z],

so alpha* = -grad^T E[z] / E[z^T Q z] and the improvement is
I = (grad^T E[z])^2 / (2 E[z^T Q z])                                    (Eq. 12).

SGD, z = -g:        E[z^T Q z] = grad^T Q grad + nu^2 tr(Q^3)          (Eq. 13)
SSD, z = -sign(g):  E[z] = -(2 rho - 1) sign(grad),
                    E[z^T Q z] = sum_ij q_ij E[s_i s_j]; for diagonal Q this is tr Q
                    exactly, otherwise E[s_i s_j] comes from bivariate normal orthant
                    probabilities (``orthant.py``, exact to rounding).
Eq. 14 is only a lower bound on I_SSD (it replaces E[s^T Q s] by sum |q_ij|).
"""

from __future__ import annotations

import numpy as np

from .factors import p_diag, success_probability
from .orthant import expected_sign_products, expected_sign_products_mc
from .quadratic import QuadraticProblem


def improvement(grad_dot_Ez: float, EzQz: float) -> float:
    """I = (grad^T E[z])^2 / (2 E[z^T Q z]) (Eq. 12); 0 when the direction has no energy."""
    return 0.0 if EzQz <= 0 else grad_dot_Ez**2 / (2.0 * EzQz)


def _safe_ratio(num: float, den: float) -> float:
    return 0.0 if den <= 0 else num / den


# --- SGD: z = -g -----------------------------------------------------------------------------


def sgd_quadratic_term(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """E[g^T Q g] = grad^T Q grad + nu^2 sum(lambda^3) (Eq. 13's denominator)."""
    grad = prob.grad(theta)
    return float(grad @ prob.Q @ grad + prob.nu**2 * np.sum(prob.lam**3))


def sgd_step_size(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """alpha* for z = -g: ||grad||^2 / E[g^T Q g]."""
    grad = prob.grad(theta)
    return _safe_ratio(float(grad @ grad), sgd_quadratic_term(prob, theta))


def sgd_improvement(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """I_SGD (Eq. 13)."""
    grad = prob.grad(theta)
    return improvement(float(grad @ grad), sgd_quadratic_term(prob, theta))


# --- SSD: z = -sign(g) -----------------------------------------------------------------------


def sign_agreement(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """grad^T E[sign(g)] = sum_i (2 rho_i - 1) |grad_i| (rho from Eq. 10)."""
    grad = prob.grad(theta)
    rho = success_probability(grad, prob.grad_std())
    return float(np.sum((2.0 * rho - 1.0) * np.abs(grad)))


def ssd_quadratic_term(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """E[sign(g)^T Q sign(g)], exact: tr Q for diagonal Q, orthant probabilities otherwise."""
    if prob.aligned:
        return float(np.trace(prob.Q))
    cov = prob.nu**2 * prob.QQ
    return float(np.sum(prob.Q * expected_sign_products(prob.grad(theta), cov)))


def ssd_quadratic_term_mc(
    prob: QuadraticProblem, theta: np.ndarray, rng: np.random.Generator, n: int
) -> tuple[float, float]:
    """Monte Carlo E[sign(g)^T Q sign(g)] from ``n`` gradients and its standard error.

    The error is that of the mean of sum_ij q_ij s_i s_j over the samples.
    """
    g = prob.sample_grad(theta, rng, n)  # (n, d)
    s = np.where(g >= 0, 1.0, -1.0)
    vals = np.einsum("ni,ij,nj->n", s, prob.Q, s)
    return float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(n))


def ssd_quadratic_term_mc_pairs(
    prob: QuadraticProblem, theta: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    """E[s^T Q s] from a Monte Carlo E[s s^T] (``orthant.expected_sign_products_mc``)."""
    cov = prob.nu**2 * prob.QQ
    mean, _ = expected_sign_products_mc(prob.grad(theta), cov, rng, n)
    return float(np.sum(prob.Q * mean))


def ssd_step_size(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """alpha* for z = -sign(g): sum (2 rho - 1)|grad| / E[s^T Q s]."""
    return _safe_ratio(sign_agreement(prob, theta), ssd_quadratic_term(prob, theta))


def ssd_improvement(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """I_SSD, exact (Eq. 12 with the sign direction's moments)."""
    return improvement(sign_agreement(prob, theta), ssd_quadratic_term(prob, theta))


def ssd_improvement_bound(prob: QuadraticProblem, theta: np.ndarray) -> float:
    """The lower bound of Eq. 14: (sum (2 rho - 1)|grad|)^2 / (2 sum lambda) * p_diag(Q)."""
    return sign_agreement(prob, theta) ** 2 / (2.0 * float(np.sum(prob.lam))) * p_diag(prob.Q)


STEP_SIZES = {"sgd": sgd_step_size, "ssd": ssd_step_size}


def direction(method: str, g: np.ndarray) -> np.ndarray:
    """The update direction z for a sampled gradient g: -g (SGD) or -sign(g) (SSD, sign(0) = 1)."""
    if method == "sgd":
        return -g
    if method == "ssd":
        return -np.where(g >= 0, 1.0, -1.0)
    raise ValueError(f"unknown method {method!r}; expected 'sgd' or 'ssd'")
