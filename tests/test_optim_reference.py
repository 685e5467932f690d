"""The fast optimizers against the literal reference over long random runs.

Every implementation (per-tensor loop, multi-tensor, fused) of every method
is fed the same gradients as ``reference.ReferenceOptimizer`` for 1,000 steps,
with several param groups (different lr and beta), coordinates whose
gradient is always zero or always the same, and a parameter that sometimes
has no gradient (so per-parameter step counters differ).
"""

from __future__ import annotations

import pytest
import torch
from optim_db import ENGINE

from dissecting_adam.optim.reference import ReferenceOptimizer

CLASSES = ENGINE  # every engine method of the registry
IMPLS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "foreach-buckets": {"foreach": True},  # CPU buckets of at most 60 values
    "fused": {"fused": True},
}


@pytest.fixture(autouse=True)
def _small_buckets(request, monkeypatch):
    """The CPU multi-tensor path splits tensor lists into buckets; make them tiny."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "foreach-buckets":
        from dissecting_adam.optim import _engine

        monkeypatch.setattr(_engine, "_CPU_BUCKET", 60)


SHAPES = [(7, 3), (50,), (4, 2, 3, 3), (1,)]


def _groups(params, method):
    # beta = 0 (plain SGD / SSD) is only defined for the momentum methods.
    betas = (0.9, 0.5, 0.0) if method in ("msgd", "mssd") else (0.9, 0.5, 0.99)
    return [
        {"params": params[:2], "lr": 1e-2, "beta": betas[0]},
        {"params": params[2:3], "lr": 3e-3, "beta": betas[1]},
        {"params": params[3:], "lr": 5e-2, "beta": betas[2]},
    ]


def _gradient(shape, step, gen, dtype):
    g = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.3
    flat = g.view(-1)
    flat[:1] = 0.0  # always-zero coordinate: m = v = 0
    if flat.numel() > 2:
        flat[1:2] = 0.75  # constant coordinate: zero variance, gamma = 1 (sign factors 1)
    return g.to(dtype)


def _run_pair(method, impl, dtype, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    fast_params = [p.clone().requires_grad_() for p in init]
    ref_params = [p.clone().requires_grad_() for p in init]
    fast = CLASSES[method](_groups(fast_params, method), lr=1.0, **IMPLS[impl])
    ref = ReferenceOptimizer(_groups(ref_params, method), method, lr=1.0)
    for t in range(steps):
        for i, (pf, pr) in enumerate(zip(fast_params, ref_params, strict=True)):
            if i == 2 and t % 7 == 3:  # no gradient this step: its step counter lags
                pf.grad = pr.grad = None
                continue
            g = _gradient(pf.shape, t, gen, dtype)
            pf.grad, pr.grad = g.clone(), g.clone()
        fast.step()
        ref.step()
    return fast, ref, fast_params, ref_params


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_matches_reference_float64_1000_steps(method, impl):
    fast, ref, fast_params, ref_params = _run_pair(method, impl, torch.float64, 1000)
    for pf, pr in zip(fast_params, ref_params, strict=True):
        torch.testing.assert_close(pf, pr, rtol=1e-10, atol=1e-10)
    # State agrees too: the step counter and the un-corrected averages.
    for pf, pr in zip(fast_params, ref_params, strict=True):
        sf, sr = fast.state[pf], ref.state[pr]
        assert sf["step"] == sr["t"]
        if "m_tilde" in sr and fast.param_groups[0]["beta"] >= 0 and "m" in sf:
            torch.testing.assert_close(sf["m"], sr["m_tilde"], rtol=1e-10, atol=1e-12)
        if "v_tilde" in sr:
            torch.testing.assert_close(sf["v"], sr["v_tilde"], rtol=1e-10, atol=1e-12)
    assert fast.state[fast_params[2]]["step"] < 1000  # the lagging parameter


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_matches_reference_float32_1000_steps(method, impl):
    _, _, fast_params, ref_params = _run_pair(method, impl, torch.float32, 1000, seed=1)
    for pf, pr in zip(fast_params, ref_params, strict=True):
        torch.testing.assert_close(pf, pr, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_bfloat16_tracks_float64_reference(method, impl):
    """bf16 parameters and state: the update stays close to the exact maths on bf16 data."""
    gen = torch.Generator().manual_seed(3)
    # Small parameters so that the updates are well resolved in bf16's 8-bit mantissa.
    init = (0.1 * torch.randn(300, generator=gen)).to(torch.bfloat16)
    p = init.clone().requires_grad_()
    q = init.double().requires_grad_()
    opt = CLASSES[method]([p], lr=1e-2, **IMPLS[impl])
    ref = ReferenceOptimizer([q], method, lr=1e-2)
    for _ in range(30):
        g = (torch.randn(300, generator=gen) + 1.0).to(torch.bfloat16)
        p.grad, q.grad = g.clone(), g.double()
        opt.step()
        ref.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["m"].dtype == torch.float32
    # State and maths are float32; each step rounds p to bf16 (relative 2^-9), so 30 steps
    # drift by up to about lr; a missing bias correction alone would be off by ~9 lr.
    torch.testing.assert_close(p.double(), q.detach(), rtol=0.05, atol=1e-2)


@pytest.mark.parametrize("method", CLASSES)
def test_fused_matches_foreach_on_large_tensors(method):
    """Tensors spanning many kernel chunks (chunk = 16384), float32."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(70_001,), (3, 33_333), (5,)]
    a = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    b = [x.detach().clone().requires_grad_() for x in a]
    oa, ob = CLASSES[method](a, lr=1e-3, fused=True), CLASSES[method](b, lr=1e-3, foreach=True)
    for _ in range(20):
        for x, y in zip(a, b, strict=True):
            x.grad = torch.randn(x.shape, generator=gen) + 0.1
            y.grad = x.grad.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b, strict=True):
        if method == "mssd":
            # The two paths round the average differently (one FMA vs two ops), so
            # an average within round-off of 0 may take the other sign: the
            # parameter is then off by 2 lr. Allow that for a handful of elements.
            diff = (x - y).abs()
            assert (diff > 1e-6).sum() <= 5 and diff.max() <= 2 * 1e-3 * 20 + 1e-6
            torch.testing.assert_close(oa.state[x]["m"], ob.state[y]["m"], rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", CLASSES)
def test_fused_handles_non_contiguous_parameters(method):
    """channels_last parameters take the per-tensor path under fused=True, same maths."""
    w = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    p = w.clone().requires_grad_()
    q = w.clone().contiguous().requires_grad_()
    assert not p.is_contiguous()
    opt, ref = CLASSES[method]([p], lr=0.1, fused=True), ReferenceOptimizer([q], method, lr=0.1)
    for _ in range(50):
        g = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        p.grad = g.clone().to(memory_format=torch.channels_last)
        q.grad = g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
