"""The torch.optim contract: validation, state, resume, groups, closures, errors, devices."""

from __future__ import annotations

import copy
import io
import math
import os
import shutil

import pytest
import torch
from optim_db import ENGINE, IMPLS

from dissecting_adam.optim import MSGD, MSSD, MSSDVA, MSVAG, SVAG, MSSDErf, _engine, _native

CLASSES = ENGINE  # every engine method of the registry


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(
        dtype
    )


def _batches(n, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 5, generator=gen, dtype=dtype),
            torch.randn(16, 2, generator=gen, dtype=dtype),
        )
        for _ in range(n)
    ]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("cls", CLASSES.values())
@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf, "0.1", None, True])
def test_invalid_lr(cls, lr):
    with pytest.raises(ValueError, match="lr"):
        cls([torch.zeros(2, requires_grad=True)], lr=lr)


@pytest.mark.parametrize("cls", CLASSES.values())
def test_tensor_lr_rejected(cls):
    with pytest.raises(ValueError, match="lr"):
        cls([torch.zeros(2, requires_grad=True)], lr=torch.tensor(0.1))


@pytest.mark.parametrize("cls", CLASSES.values())
@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5, math.nan, "0.9"])
def test_invalid_beta(cls, beta):
    with pytest.raises(ValueError, match="beta"):
        cls([torch.zeros(2, requires_grad=True)], lr=0.1, beta=beta)


@pytest.mark.parametrize("cls", [MSVAG, SVAG, MSSDVA, MSSDErf])
def test_variance_methods_need_positive_beta(cls):
    with pytest.raises(ValueError, match="0 < beta < 1"):
        cls([torch.zeros(2, requires_grad=True)], lr=0.1, beta=0.0)


@pytest.mark.parametrize("cls", CLASSES.values())
def test_invalid_values_in_a_param_group(cls):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        cls([{"params": [a]}, {"params": [b], "lr": -1.0}], lr=0.1)
    opt = cls([a], lr=0.1)
    with pytest.raises(ValueError, match="beta"):
        opt.add_param_group({"params": [b], "beta": 1.0})


@pytest.mark.parametrize("cls", CLASSES.values())
def test_foreach_and_fused_exclusive(cls):
    with pytest.raises(ValueError, match="foreach=True and fused=True"):
        cls([torch.zeros(2, requires_grad=True)], lr=0.1, foreach=True, fused=True)


@pytest.mark.parametrize("cls", CLASSES.values())
def test_no_weight_decay_argument(cls):
    """L2 lives in the problem's loss (paper §6): there is no silently ignored weight_decay."""
    with pytest.raises(TypeError):
        cls([torch.zeros(2, requires_grad=True)], lr=0.1, weight_decay=1e-4)


@pytest.mark.parametrize("cls", CLASSES.values())
def test_sparse_gradient_error(cls):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("cls", CLASSES.values())
def test_complex_parameter_error(cls):
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = cls([p], lr=0.1)
    p.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="view_as_real"):
        opt.step()


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_state_dict_resume_is_bit_identical(method, impl, tmp_path):
    """Save at step k, load into fresh objects, continue: identical to never stopping."""
    batches = _batches(30)
    model = _model()
    opt = CLASSES[method](model.parameters(), lr=0.05, **IMPLS[impl])
    _train(model, opt, batches[:12])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, batches[12:])

    buf.seek(0)
    saved = torch.load(buf)
    resumed = _model(seed=99)  # different initial weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = CLASSES[method](resumed.parameters(), lr=0.05, **IMPLS[impl])
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[next(resumed.parameters())]["step"] == 12
    _train(resumed, opt2, batches[12:])
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    for pa, pb in zip(model.parameters(), resumed.parameters(), strict=True):
        for key, val in opt.state[pa].items():
            other = opt2.state[pb][key]
            assert torch.equal(val, other) if torch.is_tensor(val) else val == other


@pytest.mark.parametrize("method", CLASSES)
def test_state_holds_step_and_averages(method):
    p = torch.zeros(4, requires_grad=True)
    opt = CLASSES[method]([p], lr=0.1)
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    expected = {"step", "m", "v"} if method in _engine.USES_V else {"step", "m"}
    assert set(opt.state[p]) == expected
    assert opt.state[p]["step"] == 3
    assert opt.state_dict()["state"][0]["step"] == 3


@pytest.mark.parametrize("cls", [MSGD, MSSD])
def test_beta_zero_keeps_no_buffer(cls):
    """SGD and SSD (beta = 0) need no momentum buffer."""
    p = torch.zeros(4, requires_grad=True)
    opt = cls([p], lr=0.1, beta=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.0, 3.0])
    opt.step()
    assert set(opt.state[p]) == {"step"}
    expected = -0.1 * (torch.sign(p.grad) if cls is MSSD else p.grad)
    torch.testing.assert_close(p.detach(), expected)


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_param_groups_use_their_own_lr_and_beta(method, impl):
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method](
        [{"params": [a]}, {"params": [b], "lr": 0.5, "beta": 0.5}], lr=0.1, **IMPLS[impl]
    )
    solo_a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    solo_b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ra = CLASSES[method]([solo_a], lr=0.1, **IMPLS[impl])
    rb = CLASSES[method]([solo_b], lr=0.5, beta=0.5, **IMPLS[impl])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        ga, gb = (
            torch.randn(3, generator=gen, dtype=torch.float64),
            torch.randn(3, generator=gen, dtype=torch.float64),
        )
        a.grad, solo_a.grad, b.grad, solo_b.grad = ga, ga.clone(), gb, gb.clone()
        for o in (opt, ra, rb):
            o.step()
    assert torch.equal(a, solo_a) and torch.equal(b, solo_b)


@pytest.mark.parametrize("method", CLASSES)
def test_step_with_closure_and_zero_grad(method):
    model = _model()
    opt = CLASSES[method](model.parameters(), lr=0.01)
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert torch.is_tensor(first) and first.ndim == 0
    for _ in range(50):
        last = opt.step(closure)
    assert last < first
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", CLASSES)
def test_parameters_without_gradient_are_skipped(method):
    a, b = torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = CLASSES[method]([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and b not in opt.state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_dtypes(method, impl, dtype):
    p = torch.zeros(10, dtype=dtype, requires_grad=True)
    opt = CLASSES[method]([p], lr=0.1, **IMPLS[impl])
    for _ in range(3):
        p.grad = torch.ones(10, dtype=dtype)
        opt.step()
    state = _engine.compute_dtype(dtype)  # 16-bit parameters keep float32 state and maths
    assert p.dtype == dtype and all(
        t.dtype == state for k, t in opt.state[p].items() if k != "step" and torch.is_tensor(t)
    )
    step = opt.state[p]["step"]  # a float32 tensor where capturable (as torch's Adam)
    capturable = "capturable" in impl
    assert step == 3 and (step.dtype == torch.float32 if capturable else type(step) is int)
    # 16-bit: only the parameter is rounded, once per step.
    tol = 3e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-6
    torch.testing.assert_close(p.float(), torch.full((10,), -0.3), rtol=tol, atol=0)


def test_deepcopy_and_repr():
    opt = MSVAG([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert "MSVAG" in repr(opt) and "beta: 0.9" in repr(opt)
    assert copy.deepcopy(opt).param_groups[0]["lr"] == 0.1


# --------------------------------------------------------------------------- native kernel


def test_missing_compiler_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("DISSECTING_ADAM_CACHE", str(tmp_path))
    p = torch.zeros(2, requires_grad=True)
    opt = MSVAG([p], lr=0.1, fused=True)
    p.grad = torch.ones(2)
    with pytest.raises(_native.NativeKernelError, match="no-such-compiler-xyz.*fused=None"):
        opt.step()


def test_kernel_builds_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setenv("DISSECTING_ADAM_CACHE", str(tmp_path))
    _native.load()
    assert len(list((tmp_path / "kernels").glob("moments-*.so"))) == 1
    assert _native.build_seconds is not None and _native.build_seconds < 30


def test_kernel_builds_without_libmvec(monkeypatch, tmp_path):
    """Where libmvec is missing (musl, macOS) the build falls back to scalar erf."""
    wrapper = tmp_path / "cc-without-libmvec"
    real = shutil.which(os.environ.get("CC", "cc"))
    wrapper.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "-lmvec" ] && exit 1; done\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("DISSECTING_ADAM_CACHE", str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(5000, generator=gen, dtype=torch.float64) for _ in range(2)]
    grads = [[torch.randn(5000, generator=gen, dtype=torch.float64) for _ in range(2)]
             for _ in range(5)]  # fmt: skip
    moved = []
    for fused in (True, False):  # the scalar-erf kernel against the multi-tensor path
        ps = [p.clone().requires_grad_() for p in params]
        opt = MSSDErf(ps, lr=0.1, fused=fused)
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g
            opt.step()
        moved.append([p.detach() for p in ps])
    monkeypatch.setattr(_native, "_lib", None)  # the next test loads the usual kernel
    for a, b in zip(*moved, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- other devices


@pytest.mark.slow
@pytest.mark.parametrize("method", CLASSES)
def test_compiled_fused_backend_matches_reference_on_cpu(method):
    """The torch.compile fused path (used on CUDA) checked on the CPU."""
    from dissecting_adam.optim.reference import ReferenceOptimizer

    gen = torch.Generator().manual_seed(0)
    p = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((5, 3), (7,))]
    q = [x.clone() for x in p]
    ref = ReferenceOptimizer([x.requires_grad_() for x in q], method, lr=0.1)
    state = {"m": [torch.zeros_like(x) for x in p], "v": [torch.zeros_like(x) for x in p]}
    for t in range(30):
        grads = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in p]
        for x, g in zip(q, grads, strict=True):
            x.grad = g.clone()
        ref.step()
        _engine.update(
            method, p, grads, state["m"], state["v"] if method in _engine.USES_V else None,
            [t, t], lr=0.1, beta=0.9, fused=True, fused_backend="compile",
        )  # fmt: skip
    for a, b in zip(p, q, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
def test_cuda_matches_cpu(method, impl):
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(1000, generator=gen, dtype=torch.float64)
    a, b = init.clone().requires_grad_(), init.clone().cuda().requires_grad_()
    oa = CLASSES[method]([a], lr=0.01, foreach=False)
    ob = CLASSES[method]([b], lr=0.01, **IMPLS[impl])
    for _ in range(100):
        g = torch.randn(1000, generator=gen, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.cuda()
        oa.step()
        ob.step()
    torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)
