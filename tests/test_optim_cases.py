"""Hand-computed cases: rho, first steps, constant and alternating gradients, zeros."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from optim_db import ENGINE, IMPLS, SIGN

from dissecting_adam.optim import MSGD, MSSD, MSVAG, rho
from dissecting_adam.optim import reference as ref

CLASSES = ENGINE  # every engine method of the registry
SIGN_METHODS = SIGN


def _rho_exact(beta: Fraction, t: int) -> Fraction:
    b = beta ** (t + 1)
    return (1 - beta) * (1 + b) / ((1 + beta) * (1 - b))


@pytest.mark.parametrize(
    "t, expected",
    [(0, 1.0), (1, 0.5013850415512465), (4, 0.2044150325999365), (49, 0.053176892021773635)],
)
@pytest.mark.parametrize("fn", [rho, ref.rho])
def test_rho_hand_values(fn, t, expected):
    exact = _rho_exact(Fraction(9, 10), t)  # exact rational arithmetic
    assert float(exact) == pytest.approx(expected, rel=1e-15)
    assert fn(0.9, t) == pytest.approx(float(exact), rel=1e-14)


def test_rho_limit():
    assert rho(0.9, 10_000) == pytest.approx(0.1 / 1.9, rel=1e-14)


def _one(method, impl, g, lr=0.1, beta=0.9, theta=None):
    p = (torch.zeros_like(g) if theta is None else theta.clone()).requires_grad_()
    opt = CLASSES[method]([p], lr=lr, beta=beta, **IMPLS[impl])
    p.grad = g.clone()
    opt.step()
    return p.detach(), opt


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_first_step(method, impl):
    g = torch.tensor([2.0, -0.5, 0.0, 1e-3], dtype=torch.float64)
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    p, _ = _one(method, impl, g, lr=0.1, theta=theta)
    # M-SGD, M-SVAG and SVAG: the bias-corrected average is g and gamma = 1: an SGD step.
    # M-SSD, M-SSD-VA, M-SSD-erf: s = 0, so a sign step; the zero coordinate does not move.
    direction = torch.sign(g) if method in SIGN_METHODS else g
    torch.testing.assert_close(p, theta - 0.1 * direction, rtol=0, atol=1e-15)


@pytest.mark.parametrize("impl", IMPLS)
def test_second_step_msvag_and_svag_by_hand(impl):
    """beta = 1/2, g = 1 then 3. m~ = 1.75, v~ = 4.75, m = 7/3, v = 19/3, rho = 5/9, s = 2."""
    for method, step2 in (
        ("msvag", Fraction(49, 59) * Fraction(7, 3)),
        ("svag", Fraction(49, 67) * 3),
    ):
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = CLASSES[method]([p], lr=0.1, beta=0.5, **IMPLS[impl])
        for g in (1.0, 3.0):
            p.grad = torch.tensor([g], dtype=torch.float64)
            opt.step()
        expected = -0.1 * (1 + float(step2))  # first step is an SGD step of size 1
        assert p.item() == pytest.approx(expected, rel=1e-14)
        assert opt.state[p]["m"].item() == 1.75 and opt.state[p]["v"].item() == 4.75


# beta = 1/2, rho(1/2, 1) = 5/9. g = 1 then 3: m = 7/3, v = 19/3, s = 2, rho s / m^2 = 10/49.
# g = 1 then -1: m = -1/3, v = 1, s = 2, rho s / m^2 = 10. The factor of the second step:
SECOND_STEP = {
    ("mssd_va", 3.0): 7 / math.sqrt(59),  # (1 + 10/49)^(-1/2)
    ("mssd_va", -1.0): 1 / math.sqrt(11),  # (1 + 10)^(-1/2)
    ("mssd_erf", 3.0): math.erf(7 / math.sqrt(20)),  # erf(|m| / sqrt(2 rho s)), 2 rho s = 20/9
    ("mssd_erf", -1.0): math.erf(1 / math.sqrt(20)),  # erf((1/3) / sqrt(20/9))
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method, g2", SECOND_STEP)
def test_second_step_sign_methods_by_hand(method, g2, impl):
    """First a sign step of size lr; then sign(m) times the factor from exact m, s, rho."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method]([p], lr=0.1, beta=0.5, **IMPLS[impl])
    for g in (1.0, g2):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    factor = SECOND_STEP[method, g2]
    expected = -0.1 * (1 + math.copysign(factor, g2))  # sign(m) = sign(g2) here
    assert p.item() == pytest.approx(expected, rel=1e-14)
    m_tilde, v_tilde = (1.75, 4.75) if g2 == 3.0 else (-0.25, 0.75)
    assert opt.state[p]["m"].item() == m_tilde and opt.state[p]["v"].item() == v_tilde
    assert opt.state[p]["step"] == 2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", ["mssd_va", "mssd_erf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_gradient_sign_factor_stays_one(method, dtype, impl):
    """Zero variance (s <= 0 up to round-off): the factor is 1 and the run is M-SSD's."""
    g = torch.tensor([0.3, -2.0, 1e-20, 7e3, 0.0], dtype=dtype)
    a = torch.zeros(5, dtype=dtype, requires_grad=True)
    b = torch.zeros(5, dtype=dtype, requires_grad=True)
    oa = CLASSES[method]([a], lr=1e-3, **IMPLS[impl])
    ob = MSSD([b], lr=1e-3, **IMPLS[impl])
    for _ in range(2000):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.isfinite(a).all() and torch.isfinite(oa.state[a]["v"]).all()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a, b, rtol=tol, atol=0)
    walk_tol = 1e-12 if dtype == torch.float64 else 2e-3  # float32: 2,000 rounded additions
    torch.testing.assert_close(b, -2.0 * torch.sign(g), rtol=walk_tol, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_gradient_10000_steps_msvag_equals_msgd(impl, dtype):
    """Zero variance: gamma = 1 at every step, so M-SVAG is M-SGD; nothing overflows."""
    g = torch.tensor([0.3, -2.0, 1e-20, 7e3, 0.0], dtype=dtype)
    a = torch.zeros(5, dtype=dtype, requires_grad=True)
    b = torch.zeros(5, dtype=dtype, requires_grad=True)
    oa = MSVAG([a], lr=1e-3, **IMPLS[impl])
    ob = MSGD([b], lr=1e-3, **IMPLS[impl])
    for _ in range(10_000):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.isfinite(a).all() and torch.isfinite(oa.state[a]["v"]).all()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a, b, rtol=tol, atol=0)
    # and M-SGD's bias-corrected average is g, so the walk is 10,000 lr g (float32
    # accumulates round-off over the 10,000 additions)
    walk_tol = 1e-12 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(b, -10.0 * g, rtol=walk_tol, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_alternating_gradient_momentum_by_hand(impl, beta):
    """g_t = (-1)^t: m~_t = (1-beta) (-1)^t (1 - (-beta)^(t+1)) / (1 + beta) in closed form."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = MSGD([p], lr=0.1, beta=beta, **IMPLS[impl])
    theta = 0.0
    for t in range(40):
        p.grad = torch.tensor([(-1.0) ** t], dtype=torch.float64)
        opt.step()
        m_tilde = (1 - beta) * (-1) ** t * (1 - (-beta) ** (t + 1)) / (1 + beta)
        theta -= 0.1 * m_tilde / (1 - beta ** (t + 1))
        assert opt.state[p]["m"].item() == pytest.approx(m_tilde, rel=1e-12, abs=1e-15)
        assert p.item() == pytest.approx(theta, rel=1e-12, abs=1e-15)
        assert opt.state[p]["step"] == t + 1


@pytest.mark.parametrize("impl", IMPLS)
def test_mssd_momentum_persists_between_steps(impl):
    """Five steps of g = +1, then g = -0.1: the average stays positive, so M-SSD keeps
    descending. An implementation that re-creates its state every step (a known bug of
    a public Signum port) would follow sign(g) = -1 and climb back."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = MSSD([p], lr=1.0, beta=0.9, **IMPLS[impl])
    for g in [1.0] * 5 + [-0.1] * 3:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert p.item() == -8.0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", SIGN_METHODS)
def test_mssd_zero_average_does_not_move(method, impl):
    """beta = 1/2, g = 1 then -1/2: m~ = 1/2 then exactly 0, so the second step is 0
    (for the variance-adapted methods v~ = 3/8 > 0 there: s > 0 and no 0/0)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method]([p], lr=0.25, beta=0.5, **IMPLS[impl])
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    p.grad = torch.tensor([-0.5], dtype=torch.float64)
    opt.step()
    assert opt.state[p]["m"].item() == 0.0
    assert p.item() == -0.25


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_zero_gradient_coordinates_stay_put(method, impl):
    """m = v = 0 (gamma is 0/0): no update, no NaN, for any number of steps."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, generator=gen)
    p = theta.clone().requires_grad_()
    opt = CLASSES[method]([p], lr=0.1, **IMPLS[impl])
    for _ in range(100):
        g = torch.randn(6, dtype=torch.float64, generator=gen)
        g[:3] = 0.0
        p.grad = g
        opt.step()
    assert torch.isfinite(p).all()
    assert torch.equal(p[:3], theta[:3])
    assert not torch.equal(p[3:], theta[3:])
    for key in ("m", "v"):
        if key in opt.state[p]:
            assert torch.equal(opt.state[p][key][:3], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", ["msvag", "svag"])
def test_gamma_is_a_shrinkage_factor(method, impl):
    """Each step of M-SVAG (SVAG) is gamma in [0, 1] times M-SGD's (SGD's) step."""
    gen = torch.Generator().manual_seed(1)
    p = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method]([p], lr=1.0, **IMPLS[impl])
    base = MSGD([q], lr=1.0, beta=0.9 if method == "msvag" else 0.0)
    for _ in range(50):
        before_p, before_q = p.detach().clone(), q.detach().clone()
        g = torch.randn(1000, dtype=torch.float64, generator=gen) * 3 + 0.5
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        base.step()
        step, plain = before_p - p.detach(), before_q - q.detach()
        gamma = step[plain != 0] / plain[plain != 0]
        assert (gamma >= -1e-12).all() and (gamma <= 1 + 1e-12).all()
        q.data.copy_(p.data)  # compare the next step from the same point


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", ["mssd_va", "mssd_erf"])
def test_sign_factor_is_a_shrinkage_factor(method, impl):
    """Each step of M-SSD-VA (M-SSD-erf) is a factor in [0, 1] times M-SSD's step, and
    noisy coordinates get factors well below 1."""
    gen = torch.Generator().manual_seed(1)
    p = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method]([p], lr=1.0, **IMPLS[impl])
    base = MSSD([q], lr=1.0, **IMPLS[impl])
    for t in range(50):
        before_p, before_q = p.detach().clone(), q.detach().clone()
        g = torch.randn(1000, dtype=torch.float64, generator=gen) * 3 + 0.5
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        base.step()
        step, plain = before_p - p.detach(), before_q - q.detach()
        assert torch.equal(opt.state[p]["m"], base.state[q]["m"])
        torch.testing.assert_close(plain.abs(), torch.ones_like(plain))  # a sign step
        factor = step / plain
        assert (factor >= -1e-12).all() and (factor <= 1 + 1e-12).all()
        if t == 0:
            torch.testing.assert_close(factor, torch.ones_like(factor))  # s_0 = 0
        else:
            assert factor.median() < 0.9
        q.data.copy_(p.data)
