"""Every optimizer solves small problems: a noisy quadratic and the Rosenbrock function."""

from __future__ import annotations

import pytest
import torch

from dissecting_adam.optim import MSGD, MSSD, MSSDVA, MSVAG, SVAG, MSSDErf

# name -> (factory, lr for the quadratic, (lr, steps) for Rosenbrock). Plain sign
# descent has no momentum to follow Rosenbrock's curved valley and needs more steps.
OPTIMIZERS = {
    "sgd": (lambda p, lr: MSGD(p, lr=lr, beta=0.0), 0.1, (2e-3, 6000)),
    "msgd": (lambda p, lr: MSGD(p, lr=lr), 0.1, (2e-3, 6000)),
    "ssd": (lambda p, lr: MSSD(p, lr=lr, beta=0.0), 0.01, (1e-3, 20_000)),
    "mssd": (lambda p, lr: MSSD(p, lr=lr), 0.01, (2e-3, 6000)),
    "mssd_va": (lambda p, lr: MSSDVA(p, lr=lr), 0.01, (2e-3, 6000)),
    "mssd_erf": (lambda p, lr: MSSDErf(p, lr=lr), 0.01, (2e-3, 6000)),
    "mssd_erf_fused": (lambda p, lr: MSSDErf(p, lr=lr, fused=True), 0.01, (2e-3, 6000)),
    "msvag": (lambda p, lr: MSVAG(p, lr=lr), 0.1, (2e-3, 6000)),
    "svag": (lambda p, lr: SVAG(p, lr=lr), 0.1, (2e-3, 6000)),
    "msvag_fused": (lambda p, lr: MSVAG(p, lr=lr, fused=True), 0.1, (2e-3, 6000)),
    "adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), 0.01, (2e-2, 6000)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_noisy_quadratic(name):
    """0.5 (theta - x)^T Q (theta - x), x ~ N(x*, nu^2 I): reach the noise floor."""
    factory, lr, _ = OPTIMIZERS[name]
    gen = torch.Generator().manual_seed(0)
    d = 20
    q = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    x_star = torch.randn(d, generator=gen, dtype=torch.float64)
    theta = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = factory([theta], lr)
    start = 0.5 * (q * x_star**2).sum().item()
    for step in range(3000):
        if step == 2000:  # a schedule, as the paper's P3 and P4 use, lets sign methods settle
            for group in opt.param_groups:
                group["lr"] *= 0.1
        x = x_star + 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
        theta.grad = q * (theta.detach() - x)
        opt.step()
    excess = 0.5 * (q * (theta.detach() - x_star) ** 2).sum().item()
    assert excess < 1e-2 * start, f"{name}: excess loss {excess:.3g} from {start:.3g}"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_rosenbrock(name):
    factory, _, (lr, steps) = OPTIMIZERS[name]
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = factory([xy], lr)

    def rosenbrock(point):
        x, y = point
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    first = rosenbrock(xy.detach()).item()
    for step in range(steps):
        if step == steps * 3 // 4:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        x, y = xy.detach()
        xy.grad = torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])
        opt.step()
    final = rosenbrock(xy.detach()).item()
    assert final < 1e-2 and final < 1e-3 * first, f"{name}: final loss {final:.3g}"
    assert torch.allclose(xy.detach(), torch.ones(2, dtype=torch.float64), atol=0.2)
