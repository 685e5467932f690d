"""The Triton kernel of ``fused=True`` (``fused_backend="triton"``), checked on the CPU.

Triton runs CPU tensors only under its interpreter, and ``TRITON_INTERPRET=1`` must be set
before triton is first imported, so the kernel cases run in one child python (this file
run as a script) that prints their measurements as JSON; each test asserts one case. Small
tensors and blocks (``BLOCK=64``, ``CHUNK=128``) keep the interpreter within about a
minute and put the tensor sizes (1, 37, 65, 130) off the block and chunk boundaries; a
parameter that sometimes has no gradient makes the step counts of one launch differ.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch
from conftest import interpreted

from dissecting_adam.optim import MSVAG, _fused

METHODS = ("msgd", "mssd", "msvag", "svag", "mssd_va", "mssd_erf")
SHAPES = [(37,), (5, 13), (1,), (130,)]
VEC_SHAPES = [(64,), (8, 16), (4,), (132,)]  # whole 16-byte vectors of float32
SCALES = [0.0, 1e-30, 1e-20, 1.0, 1e20, 1e30]
REF_STEPS, RTOL_REF = 50, 5e-4  # float32 kernel vs the float64 reference (measured <= 1.8e-5)


# --------------------------------------------------------------------------- the child


def _runs(method, impls, steps, dtype, gradient, shapes=SHAPES, beta=0.9, lag=True, zero=False):
    """Parameters after ``steps`` steps of each optimizer of ``impls`` on the same gradients."""
    from optim_db import ENGINE

    from dissecting_adam.optim.reference import ReferenceOptimizer

    cls = {c.method: c for c in ENGINE.values()}[method]
    gen = torch.Generator().manual_seed(0)  # the starting point too: the same every run
    init = [torch.zeros(s, dtype=torch.float64) if zero
            else torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]  # fmt: skip
    out = {}
    for name, kwargs in impls.items():
        wide = name == "reference"
        params = [p.to(torch.float64 if wide else dtype).clone().requires_grad_() for p in init]
        opt = (
            ReferenceOptimizer(params, method, lr=0.05, beta=beta)
            if wide
            else cls(params, lr=0.05, beta=beta, **kwargs)
        )
        gen.manual_seed(1)
        for t in range(steps):
            for i, p in enumerate(params):
                skip = lag and i == 2 and t % 7 == 3  # no gradient: its step count lags
                g = gradient(i, p.shape, t, gen).to(dtype)
                p.grad = None if skip else g.to(p.dtype)
            opt.step()
        out[name] = torch.cat([p.detach().double().reshape(-1) for p in params])
    return out


def _random(i, shape, t, gen):
    g = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.3
    g.view(-1)[:1] = 0.0  # m~ = v~ = 0: no move
    return g


def _hard(i, shape, t, gen):
    """Tensor i: SCALES[i % 6] times |base| in [1, 3], noisy for i >= 6; coordinate 0 is 0."""
    base = torch.linspace(1.0, 3.0, shape[0], dtype=torch.float64) * (-1.0) ** torch.arange(
        shape[0]
    )
    noise = 0.25 * (2.0 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1.0)
    g = SCALES[i % len(SCALES)] * base * (1.0 + (noise if i >= len(SCALES) else 0.0))
    g[0] = 0.0
    return g


def _rel(a, b, floor=1e-300):
    """Largest |a - b| / max(|b|, floor) (inf where a is not finite)."""
    if not torch.isfinite(a).all():
        return float("inf")
    scale = b.abs().clamp_min(floor)
    return float(((a - b).abs() / scale).max())


def _child(methods: list[str]) -> dict:
    import warnings

    from dissecting_adam.optim import _triton

    warnings.simplefilter("ignore")  # numpy's divide-by-zero in the interpreter (r = inf)
    _triton.BLOCK, _triton.CHUNK = 64, 128
    triton = {"fused": True, "fused_backend": "triton"}
    cap = {**triton, "capturable": True}
    res = {}
    for method in methods:
        runs = _runs(
            method, {"reference": {}, "loop": {"foreach": False}, "triton": triton,
                     "triton_capturable": cap}, REF_STEPS, torch.float32, _random,
        )  # fmt: skip
        res[f"reference/{method}"] = {  # parameters of order 1: errors relative to >= 0.01
            "ref": _rel(runs["triton"], runs["reference"], 1e-2),
            "loop": _rel(runs["triton"], runs["loop"], 1e-2),
            "capturable": _rel(runs["triton_capturable"], runs["triton"], 1e-2),
        }
        for dtype in (torch.bfloat16, torch.float64):
            r = _runs(method, {"loop": {"foreach": False}, "triton": triton}, 8, dtype, _random)
            res[f"{dtype}/{method}"] = {"loop": _rel(r["triton"], r["loop"], 1e-2)}
        hard = _runs(
            method, {"foreach": {}, "triton": triton, "triton_capturable": cap}, 8,
            torch.float32, _hard, shapes=[(64,)] * (2 * len(SCALES)), lag=False, zero=True,
        )  # fmt: skip
        zero = [i * 64 for i in range(2 * len(SCALES))]
        res[f"hard/{method}"] = {
            "foreach": _rel(hard["triton"], hard["foreach"]),
            "capturable": _rel(hard["triton_capturable"], hard["foreach"]),
            "zero_moved": bool((hard["triton"][zero] != 0).any()),
        }
    chosen, meta = [], _triton._meta

    def spy(*args):  # which VEC the launches were given
        out = meta(*args)
        chosen.append(out[2])
        return out

    _triton._meta = spy
    for method in methods:  # 16-byte aligned, whole vectors: the kernel's wide accesses
        chosen.clear()
        r = _runs(method, {"reference": {}, "triton": triton}, 20, torch.float32, _random,
                  shapes=VEC_SHAPES)  # fmt: skip
        res[f"vec/{method}"] = {"ref": _rel(r["triton"], r["reference"], 1e-2),
                                "vec": sorted(set(chosen))}  # fmt: skip
    _triton._meta = meta
    for method in set(methods) & {"msgd", "mssd"}:
        r = _runs(method, {"reference": {}, "triton": triton, "triton_capturable": cap}, 20,
                  torch.float32, _random, beta=0.0)  # fmt: skip
        res[f"beta0/{method}"] = {
            "ref": _rel(r["triton"], r["reference"], 1e-2),
            "capturable": _rel(r["triton_capturable"], r["triton"], 1e-2),
        }
    return res


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    """The interpreted kernels' results, computed once per test session, by two children
    (the two cores) each taking half of the methods."""
    halves = [(",".join(METHODS[i::2]),) for i in range(2)]
    return interpreted(tmp_path_factory, "triton_cases", __file__, halves)


@pytest.mark.parametrize("method", METHODS)
def test_kernel_matches_the_reference_and_the_loop(cases, method):
    """50 random steps (zero coordinates, lagging step counts) on float32 parameters."""
    case = cases[f"reference/{method}"]
    assert case["ref"] <= RTOL_REF, case
    assert case["loop"] <= 1e-4, case  # the same maths; FMA and rounding differ (a few ulp)


@pytest.mark.parametrize("method", METHODS)
def test_capturable_kernel_matches_the_host_scalars(cases, method):
    """Step counts as tensors, scalars per tensor from the device: the same parameters."""
    assert cases[f"reference/{method}"]["capturable"] <= 1e-5


@pytest.mark.parametrize("dtype", ["torch.bfloat16", "torch.float64"])
@pytest.mark.parametrize("method", METHODS)
def test_16bit_and_float64_parameters_match_the_loop(cases, method, dtype):
    """bfloat16: float32 maths and state, one rounding to nearest per step, as the loop path
    (a step's rounding may differ by one ulp where FMA moves a float32 value across a
    rounding boundary, and the 8 steps' differences add: at most two ulps, 2^-7 relative
    each); float64: float64 maths (scalars from a float64 table, not float32 arguments)."""
    tol = 2**-6 if dtype == "torch.bfloat16" else 1e-12  # bfloat16: at most two ulps
    assert cases[f"{dtype}/{method}"]["loop"] <= tol


@pytest.mark.parametrize("method", METHODS)
def test_hard_gradients_match_the_multi_tensor_path(cases, method):
    """Zero gradients, m~ = 0, constant and noisy gradients from 1e-30 to 1e30."""
    case = cases[f"hard/{method}"]
    assert not case["zero_moved"]
    assert case["foreach"] <= 1e-4 and case["capturable"] <= 1e-4, case


@pytest.mark.parametrize("method", METHODS)
def test_wide_access_kernel_matches_the_reference(cases, method):
    """Sizes in whole 16-byte vectors (``VEC`` on; test_triton_compile.py checks that it
    makes wide loads): the same maths."""
    case = cases[f"vec/{method}"]
    assert case["vec"] == [4], case  # every launch took the wide path
    assert case["ref"] <= RTOL_REF, case


@pytest.mark.parametrize("method", ["msgd", "mssd"])
def test_beta_zero(cases, method):
    case = cases[f"beta0/{method}"]
    assert case["ref"] <= RTOL_REF and case["capturable"] <= 1e-6, case


def test_triton_on_cpu_needs_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    p = torch.zeros(3, requires_grad=True)
    opt = MSVAG([p], lr=0.1, fused=True, fused_backend="triton")
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        opt.step()


def test_backend_choice_and_its_errors(monkeypatch, caplog):
    assert _fused.resolve_backend(None, torch.device("cpu")) == "native"
    assert _fused.resolve_backend("compile", torch.device("cpu")) == "compile"
    monkeypatch.setattr(_fused, "_triton_why_not", [""])
    assert _fused.resolve_backend(None, torch.device("cuda")) == "triton"
    monkeypatch.setattr(_fused, "_triton_why_not", ["triton does not import (test)"])
    with caplog.at_level(logging.WARNING):
        assert _fused.resolve_backend(None, torch.device("cuda")) == "compile"
        assert _fused.resolve_backend(None, torch.device("cuda")) == "compile"
    assert [r.getMessage().count("triton does not import") for r in caplog.records] == [1]
    with pytest.raises(ValueError, match="fused_backend"):
        MSVAG([torch.zeros(1, requires_grad=True)], lr=0.1, fused_backend="triton")
    with pytest.raises(ValueError, match="fused_backend"):
        MSVAG([torch.zeros(1, requires_grad=True)], lr=0.1, fused=True, fused_backend="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
def test_cuda_kernel_matches_the_multi_tensor_path(method):
    from optim_db import ENGINE

    cls = {c.method: c for c in ENGINE.values()}[method]
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(1000,), (37, 129), (1,), (3, 3, 64, 64)]
    init = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
    out = {}
    for name, kwargs in {"foreach": {}, "triton": {"fused": True, "fused_backend": "triton"},
                         "default": {"fused": True}}.items():  # fmt: skip
        params = [p.clone().requires_grad_() for p in init]
        opt = cls(params, lr=0.05, **kwargs)
        gen.manual_seed(1)
        for _ in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, device="cuda", generator=gen)
            opt.step()
        out[name] = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(out["triton"], out["foreach"], rtol=1e-5, atol=1e-7)
    assert torch.equal(out["default"], out["triton"])  # triton is the CUDA default


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1].split(","))))
