"""capturable=True: step counts as device tensors, scalars computed on the device, no sync.

The per-tensor loop and the multi-tensor path are checked here against capturable=False
over long random runs (the Triton kernel's capturable path: tests/test_triton_kernels.py),
with state-dict round trips between the two layouts and a CUDA-graph capture on a GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_db import ENGINE

from dissecting_adam.optim import _engine

SHAPES = [(7, 3), (50,), (1,), (4, 5)]
PATHS = {"loop": {"foreach": False}, "foreach": {}}


def _run(cls, kwargs, stop, start=0, params=None, opt=None):
    """Steps ``start`` .. ``stop`` of one random run (new parameters unless given)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).requires_grad_() for s in SHAPES]
    if params is None:
        params, opt = init, cls(init, lr=0.05, **kwargs)
    for t in range(stop):
        grads = [torch.randn(s, generator=gen) * 2.0 + 0.3 for s in SHAPES]
        if t < start:
            continue
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g.view(-1)[0] = 0.0  # m~ = v~ = 0: no move
            p.grad = None if (i == 2 and t % 5 == 1) else g  # a lagging step count
        opt.step()
    return params, opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ENGINE)
def test_capturable_gives_the_same_parameters(name, path):
    """200 random steps: device scalars (float64, rounded once) = the host's Python floats
    (up to a few ulp: the loop path computes sqrt(lam / c) from rounded tensors)."""
    cls = ENGINE[name]
    host, _ = _run(cls, PATHS[path], 200)
    device, opt = _run(cls, {**PATHS[path], "capturable": True}, 200)
    for a, b in zip(device, host, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    steps = [opt.state[p]["step"] for p in device]
    assert all(s.dtype == torch.float32 and s.dim() == 0 for s in steps)
    assert [float(s) for s in steps] == [200.0, 200.0, 160.0, 200.0]


@pytest.mark.parametrize("method", _engine.METHODS)
def test_device_coefficients_are_the_host_ones(method):
    steps = [torch.tensor(float(t)) for t in (0, 1, 2, 7, 100)]
    table = _engine.device_coefficients(method, 0.3, 0.9, steps, torch.float64)
    for j, t in enumerate((0, 1, 2, 7, 100)):
        lr_eff, c, lam = _engine.coefficients(method, 0.3, 0.9, t)
        host = [lr_eff, c, lam, *_engine.k_shift(method, c, lam), 0.9]
        torch.testing.assert_close(table[:, j], torch.tensor(host, dtype=torch.float64))


@pytest.mark.parametrize("name", ["msgd", "msvag"])
@pytest.mark.parametrize("save_capturable", [False, True])
def test_state_dict_between_layouts(name, save_capturable):
    """An int-step checkpoint loads into a capturable optimizer and vice versa, and resumes."""
    cls = ENGINE[name]
    whole, _ = _run(cls, {}, 12)
    params, opt = _run(cls, {"capturable": save_capturable}, 6)
    saved = copy.deepcopy(opt.state_dict())
    assert isinstance(saved["state"][0]["step"], torch.Tensor) == save_capturable
    resumed = [p.detach().clone().requires_grad_() for p in params]
    opt2 = cls(resumed, lr=0.05, capturable=not save_capturable)
    opt2.load_state_dict(saved)
    step = opt2.state[resumed[0]]["step"]
    assert (type(step) is int) == save_capturable and int(step) == 6
    assert opt2.param_groups[0]["capturable"] is (not save_capturable)  # the live choice
    _run(cls, {}, 12, start=6, params=resumed, opt=opt2)
    for a, b in zip(resumed, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_old_state_dict_without_the_new_keys_loads():
    """Groups saved before capturable / fused_backend existed lack them: they are filled."""
    cls = ENGINE["msvag"]
    params, opt = _run(cls, {}, 3)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["capturable"], group["fused_backend"]
    opt2 = cls([p.detach().clone().requires_grad_() for p in params], lr=0.05, capturable=True)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["capturable"] is True
    assert opt2.param_groups[0]["fused_backend"] is None


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor(1.5), -1, 2.0])
def test_bad_step_counts_are_refused(bad):
    cls = ENGINE["msvag"]
    _, opt = _run(cls, {}, 1)
    saved = opt.state_dict()
    saved["state"][0]["step"] = bad
    with pytest.raises(ValueError, match="step count of parameter 0"):
        cls([torch.zeros(7, 3, requires_grad=True)], lr=0.05).load_state_dict(saved)


@pytest.mark.cuda
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ENGINE)
def test_a_captured_step_replays(name, fused):
    """Capture one step in a CUDA graph, replay it: the same parameters as eager steps."""
    cls = ENGINE[name]
    init = [torch.randn(s, device="cuda") for s in SHAPES]
    grads = [[torch.randn(s, device="cuda") for s in SHAPES] for _ in range(6)]
    eager = [p.clone().requires_grad_() for p in init]
    opt_e = cls(eager, lr=0.05, capturable=True, fused=fused or None)
    for gs in grads:
        for p, g in zip(eager, gs, strict=True):
            p.grad = g.clone()
        opt_e.step()
    params = [p.clone().requires_grad_() for p in init]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = cls(params, lr=0.05, capturable=True, fused=fused or None)
    for p, g in zip(params, grads[0], strict=True):  # warm-up step (state, caches) on a side stream
        p.grad.copy_(g)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for gs in grads[1:]:
        for p, g in zip(params, gs, strict=True):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(params, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(opt.state[params[0]]["step"]) == len(grads)
