"""Variance adaptation factors and sign statistics (paper Eq. 8-10, Lemma 1, §2.1).

eta is the relative standard deviation sigma / |grad| of a gradient coordinate.
All functions are element-wise on NumPy arrays (or floats).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def relative_variance(grad, sigma):
    """eta^2 = sigma^2 / grad^2 (Eq. 8); inf where grad = 0."""
    grad = np.asarray(grad, dtype=float)
    with np.errstate(divide="ignore"):
        return np.asarray(sigma, dtype=float) ** 2 / grad**2


def adam_factor(eta):
    """Adam's implicit factor (1 + eta^2)^(-1/2) (Eq. 9)."""
    return 1.0 / np.sqrt(1.0 + np.asarray(eta, dtype=float) ** 2)


def gradient_factor(eta):
    """Lemma 1's optimal factor for an unbiased direction, 1 / (1 + eta^2) (Eq. 15, 17)."""
    return 1.0 / (1.0 + np.asarray(eta, dtype=float) ** 2)


def sign_factor(eta):
    """Lemma 1's optimal factor for the sign of a Gaussian, 2 rho - 1 = erf(1 / (sqrt2 eta)).

    eta = 0 gives 1 (the sign is certain); eta = inf gives 0.
    """
    eta = np.asarray(eta, dtype=float)
    with np.errstate(divide="ignore"):
        return erf(1.0 / (np.sqrt(2.0) * eta))


def success_probability(grad, sigma):
    """rho_i = P[sign(g_i) = sign(grad_i)] for g_i ~ N(grad_i, sigma_i^2) (Eq. 10).

    rho = 1/2 + 1/2 erf(|grad| / (sqrt2 sigma)); sigma = 0 gives 1 (grad != 0);
    grad = 0 gives 1/2 (with sigma > 0).
    """
    grad = np.abs(np.asarray(grad, dtype=float))
    sigma = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = grad / (np.sqrt(2.0) * sigma)
    z = np.where(sigma == 0, np.where(grad == 0, 0.0, np.inf), z)
    return 0.5 + 0.5 * erf(z)


def optimal_gradient_factor(p, sigma):
    """gamma_i = p_i^2 / (p_i^2 + sigma_i^2), minimiser of E||gamma * p_hat - p||^2 (Eq. 15)."""
    p2 = np.asarray(p, dtype=float) ** 2
    return p2 / (p2 + np.asarray(sigma, dtype=float) ** 2)


def optimal_sign_factor(rho):
    """gamma_i = 2 rho_i - 1, minimiser of E||gamma * sign(p_hat) - sign(p)||^2 (Eq. 16)."""
    return 2.0 * np.asarray(rho, dtype=float) - 1.0


def gradient_factor_risk(gamma, p, sigma):
    """E[(gamma p_hat - p)^2] for E[p_hat] = p, var = sigma^2, in closed form."""
    return gamma**2 * (p**2 + sigma**2) - 2.0 * gamma * p**2 + p**2


def sign_factor_risk(gamma, rho):
    """E[(gamma sign(p_hat) - sign(p))^2] with success probability rho, in closed form."""
    return gamma**2 - 2.0 * gamma * (2.0 * rho - 1.0) + 1.0


def p_diag(Q: np.ndarray) -> float:
    """Share of diagonal mass sum_i |q_ii| / sum_ij |q_ij| (§2.1): 1 if Q is diagonal, >= 1/d."""
    absQ = np.abs(np.asarray(Q, dtype=float))
    return float(np.trace(absQ) / absQ.sum())


def p_diag_rotation_samples(lam: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """p_diag(R diag(lam) R^T) for ``n`` Haar-random rotations R (§2.1's average)."""
    from .quadratic import haar_rotation

    out = np.empty(n)
    for k in range(n):
        R = haar_rotation(len(lam), rng)
        out[k] = p_diag((R * lam) @ R.T)
    return out
