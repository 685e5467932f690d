"""Stochastic quadratic problems (sQP) of the paper's §2.

loss(theta; x) = 0.5 (theta - x)^T Q (theta - x),  x ~ N(x*, nu^2 I), so

    L(theta)   = 0.5 (theta - x*)^T Q (theta - x*) + 0.5 nu^2 tr Q      (Eq. 11)
    grad L     = Q (theta - x*)
    g(theta)   = Q (theta - x) ~ N(grad L, nu^2 Q Q).

Everything here is a pure function of NumPy arrays and an explicit
``numpy.random.Generator``; nothing keeps state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

SPECTRA = ("well", "ill")
BASES = ("aligned", "rotated")


def haar_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly (Haar measure) from SO(d).

    QR of a standard Gaussian matrix gives a Haar-distributed orthogonal
    matrix only after the sign fix Q <- Q diag(sign(diag(R))) (Mezzadri 2007);
    without it the result depends on the QR routine's sign convention and is
    not uniform. Flipping the first column when det = -1 then maps Haar on
    O(d) to Haar on SO(d) (the paper's "uniformly among all rotation matrices").
    """
    z = rng.standard_normal((d, d))
    q, r = np.linalg.qr(z)
    q = q * np.sign(np.diag(r))  # scales column j by sign(r_jj)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def eigenvalues(spectrum: str, d: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's spectra (§2.2), sorted ascending.

    ``well``: U[0.1, 1.1]. ``ill``: 90% U[0, 1] and 10% U[30, 60] (the share
    is rounded to whole eigenvalues, at least one large one).
    """
    if spectrum == "well":
        lam = rng.uniform(0.1, 1.1, size=d)
    elif spectrum == "ill":
        n_big = max(1, round(0.1 * d))
        lam = np.concatenate([rng.uniform(0.0, 1.0, d - n_big), rng.uniform(30.0, 60.0, n_big)])
    else:
        raise ValueError(f"unknown spectrum {spectrum!r}; expected one of {SPECTRA}")
    return np.sort(lam)


@dataclass(frozen=True)
class QuadraticProblem:
    """One sQP: Hessian ``Q`` (eigenvalues ``lam``), optimum ``x_star``, noise level ``nu``."""

    Q: np.ndarray  # (d, d), symmetric positive (semi-)definite
    lam: np.ndarray  # (d,)
    x_star: np.ndarray  # (d,)
    nu: float

    @property
    def d(self) -> int:
        return self.Q.shape[0]

    @cached_property
    def aligned(self) -> bool:
        """Whether Q is diagonal (cached: Q is never modified)."""
        return bool(np.all(self.Q == np.diag(np.diag(self.Q))))

    @cached_property
    def QQ(self) -> np.ndarray:
        """Q Q; the gradient covariance is nu^2 Q Q."""
        return self.Q @ self.Q

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """The true gradient Q (theta - x*)."""
        return self.Q @ (theta - self.x_star)

    def excess(self, theta: np.ndarray) -> np.ndarray:
        """L(theta) - L(x*) = 0.5 (theta - x*)^T Q (theta - x*); theta may be (..., d)."""
        r = theta - self.x_star
        return 0.5 * np.einsum("...i,ij,...j->...", r, self.Q, r)

    def loss(self, theta: np.ndarray) -> np.ndarray:
        """L(theta) of Eq. 11, the expected loss including the noise floor 0.5 nu^2 tr Q."""
        return self.excess(theta) + 0.5 * self.nu**2 * np.trace(self.Q)

    def grad_std(self) -> np.ndarray:
        """Per-coordinate standard deviation of g: nu sqrt(diag(Q Q))."""
        return self.nu * np.sqrt(np.diag(self.QQ))

    def sample_grad(self, theta: np.ndarray, rng: np.random.Generator, n: int | None = None):
        """Stochastic gradient(s) g = Q (theta - x), x ~ N(x*, nu^2 I); shape (d,) or (n, d)."""
        shape = (self.d,) if n is None else (n, self.d)
        x = self.x_star + self.nu * rng.standard_normal(shape)
        return (theta - x) @ self.Q  # Q is symmetric


def make_problem(
    spectrum: str,
    basis: str,
    nu: float,
    d: int,
    rng: np.random.Generator,
    *,
    lam: np.ndarray | None = None,
    rotation: np.ndarray | None = None,
    x_star: np.ndarray | None = None,
    x_star_scale: float = 1.0,
) -> QuadraticProblem:
    """Build an sQP; pass ``lam``/``rotation``/``x_star`` to share them between problems.

    x* defaults to N(0, x_star_scale^2 I) (with theta_0 = 0 this is not the
    degenerate x* ∝ 1 case: the coordinates of x* - theta_0 have different
    magnitudes and signs).
    """
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {BASES}")
    if lam is None:
        lam = eigenvalues(spectrum, d, rng)
    if basis == "aligned":
        Q = np.diag(lam)
    else:
        R = haar_rotation(d, rng) if rotation is None else rotation
        Q = (R * lam) @ R.T
        Q = 0.5 * (Q + Q.T)
    if x_star is None:
        x_star = x_star_scale * rng.standard_normal(d)
    return QuadraticProblem(Q=Q, lam=np.asarray(lam), x_star=np.asarray(x_star), nu=float(nu))
