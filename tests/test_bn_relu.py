"""``BatchNormReLU2d`` (fused batch norm + ReLU, Triton) against eager ``relu(bn(x))``.

As in test_triton_kernels.py, the kernels run on the CPU only under ``TRITON_INTERPRET=1``
set before triton is imported: one child python (this file run as a script) computes every
case and prints the measured differences as JSON, once per test session; each test asserts
one case. Tiles are shrunk (8 x 2 rows x channels in NCHW, 4 x 4 in NHWC; the finishing
kernels read 2 tiles of 2 channels at a time) so that small tensors have several tiles and
ragged edges in both directions. The reference runs in
float64 on the same float32 values. The settings' checks (device, compile, identity,
state-dict keys) need no kernels and run here.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from conftest import interpreted
from torch import nn

from dissecting_adam.problems.models.bn_relu import BatchNormReLU2d
from dissecting_adam.problems.models.wrn import WideResNet

SHAPE = (3, 5, 4, 3)  # N, C, H, W: M = 36 rows (5 tiles of 8, the last of 4), 5 channels
#: Images and channels that split into whole tiles (no ragged edge), as WRN-40-4's do.
WHOLE_SHAPE = (2, 4, 4, 4)
STEPS = 3  # calls in training mode: running statistics accumulate


# --------------------------------------------------------------------------- the child


def _err(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def _pair(channels: int, gen: torch.Generator, bias: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """A fused module (weights in [0.5, 1.5], biases ``bias`` +- 0.5) and its float64 eager
    twin."""
    fused = BatchNormReLU2d(channels, momentum=0.1)
    with torch.no_grad():
        fused.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        fused.bias.copy_(torch.rand(channels, generator=gen) - 0.5 + bias)
    eager = nn.BatchNorm2d(channels, momentum=0.1).double()
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def _module_case(layout: str, dtype: torch.dtype, bias: float = 0.0, shape=SHAPE):
    """``STEPS`` forward and backward passes of a fused module and the float64 eager pair;
    ``masked``: the share of outputs the ReLU set to 0."""
    gen = torch.Generator().manual_seed(1)
    fused, eager = _pair(shape[1], gen, bias)
    out = {"y": 0.0, "dx": 0.0, "dweight": 0.0, "dbias": 0.0, "masked": 0.0}
    for _ in range(STEPS):
        x = (torch.randn(shape, generator=gen) * 2.0 + 0.5).to(dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(shape, generator=gen).to(dtype)
        xf, xe = x.clone().requires_grad_(), x.double().requires_grad_()
        yf = fused(xf)
        ye = torch.relu(eager(xe))
        yf.backward(dy)
        ye.backward(dy.double())
        for name, a, b in (("y", yf, ye), ("dx", xf.grad, xe.grad),
                           ("dweight", fused.weight.grad, eager.weight.grad),
                           ("dbias", fused.bias.grad, eager.bias.grad)):  # fmt: skip
            out[name] = max(out[name], _err(a, b) / max(float(b.abs().max()), 1e-30))
        out["masked"] += float((yf == 0).float().mean()) / STEPS
        fused.zero_grad(), eager.zero_grad()
        out["same_layout"] = out.get("same_layout", True) and yf.stride() == x.stride()
        out["same_layout"] = out["same_layout"] and xf.grad.stride() == x.stride()
        out["dtype"] = str(yf.dtype)
    out["running_mean"] = _err(fused.running_mean, eager.running_mean)
    out["running_var"] = _err(fused.running_var, eager.running_var) / float(eager.running_var.max())
    out["batches"] = [int(fused.num_batches_tracked), int(eager.num_batches_tracked)]
    fused.eval(), eager.eval()
    x = torch.randn(shape, generator=gen)
    out["eval"] = _err(fused(x), torch.relu(eager.float()(x)))
    return out


def _group_case(members: int = 3, channels: int = 5, size: tuple = (4, 3)) -> dict:
    """K members under vmap (stacked parameters and buffers) against each member alone."""
    from torch.func import functional_call, stack_module_state, vmap

    gen = torch.Generator().manual_seed(2)
    singles = []
    for _ in range(members):
        torch.manual_seed(len(singles))
        # No conv bias: batch norm cancels it, and its gradient is rounding noise around 0.
        conv = nn.Conv2d(2, channels, 3, padding=1, bias=False)
        net = nn.Sequential(conv, BatchNormReLU2d(channels))
        with torch.no_grad():
            net[1].weight.copy_(0.5 + torch.rand(channels, generator=gen))
            net[1].bias.copy_(torch.rand(channels, generator=gen) - 0.5)
        singles.append(net)
    stacked_nets = [copy.deepcopy(n) for n in singles]
    params, buffers = stack_module_state(stacked_nets)
    base = copy.deepcopy(singles[0]).to("meta")
    xs = torch.randn(members, 3, 2, *size, generator=gen)

    def loss(p, b, x):
        return functional_call(base, {**p, **b}, (x,)).square().mean()

    losses = vmap(loss)(params, buffers, xs)
    losses.sum().backward()
    out = {"loss": 0.0, "grad": 0.0, "buffers": 0.0}
    for k, net in enumerate(singles):
        single = net(xs[k]).square().mean()
        single.backward()
        out["loss"] = max(out["loss"], abs(float(losses[k] - single)) / float(single))
        for name, p in net.named_parameters():
            scale = float(p.grad.abs().max())
            out["grad"] = max(out["grad"], _err(params[name].grad[k], p.grad) / scale)
        for name, b in net.named_buffers():
            out["buffers"] = max(out["buffers"], _err(buffers[name][k], b))
    return out


def _wrn_case(steps: int = 3) -> dict:
    """WRN-10-2 on 4x4 images, fused and eager in float32 against eager in float64: the same
    initial weights, then SGD, at the kernels' real tile sizes. A batch norm over 4 values
    (1x1 images, batch 4) amplifies rounding, so
    each float32 model's distance from float64 is reported, not a fixed tolerance."""
    gen = torch.Generator().manual_seed(3)
    models = {}
    for name, fused in (("wide", False), ("eager", False), ("fused", True)):
        torch.manual_seed(0)
        models[name] = WideResNet(10, 2, 7, fused_bn_relu=fused)
    models["wide"].double()
    keys = [list(m.state_dict()) for m in models.values()]
    twins = zip(models["eager"].state_dict().values(), models["fused"].state_dict().values(),
                strict=True)  # fmt: skip
    out = {"same_init": keys[0] == keys[1] == keys[2] and all(torch.equal(a, b) for a, b in twins)}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.05) for n, m in models.items()}
    for name in ("eager", "fused"):
        out[name] = {"loss": 0.0, "grad": 0.0}
    for _ in range(steps):
        x = torch.randn(4, 3, 4, 4, generator=gen)
        y = torch.randint(0, 7, (4,), generator=gen)
        losses = {}
        for name, model in models.items():
            opts[name].zero_grad()
            inputs = x.double() if name == "wide" else x
            losses[name] = nn.functional.cross_entropy(model(inputs), y)
            losses[name].backward()
        wide = list(models["wide"].parameters())
        for name in ("eager", "fused"):
            rec = out[name]
            rec["loss"] = max(rec["loss"], abs(float(losses[name] - losses["wide"])))
            for p, q in zip(models[name].parameters(), wide, strict=True):
                rec["grad"] = max(rec["grad"], _err(p.grad, q.grad) / float(q.grad.abs().max()))
        for opt in opts.values():
            opt.step()
    x = torch.randn(4, 3, 4, 4, generator=gen)
    for model in models.values():
        model.eval()
    ref = models["wide"](x.double())
    for name in ("eager", "fused"):
        out[name]["state"] = max(_err(a, b) for a, b in zip(
            models[name].state_dict().values(), models["wide"].state_dict().values(),
            strict=True))  # fmt: skip
        out[name]["eval"] = _err(models[name](x), ref)
    return out


def _offset_case() -> dict:
    """Mean 1e3, standard deviation 1e-2: the variance from tile means and squared
    deviations (Chan's merge), where E[x^2] - E[x]^2 in float32 would lose every digit."""
    from dissecting_adam.problems.models.bn_relu import _BNReLU

    gen = torch.Generator().manual_seed(4)
    x = (1e3 + 1e-2 * torch.randn(1, 6, 3, 10, 10, generator=gen)).float()
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    # Momentum 1: the batch's statistics; the running mean a strided view, which the
    # kernels update in a contiguous copy that is written back.
    running_mean, running_var = torch.zeros(1, 6)[:, ::2], zeros.clone()
    _, channel = _BNReLU.apply(x, ones, zeros, running_mean, running_var, 0.0, 1.0)
    mean, m = channel[0], x[0, :, 0].numel()
    var = running_var.double() * (m - 1) / m
    ref = x.double().var(dim=(1, 3, 4), unbiased=False)
    naive = (x.square().mean(dim=(1, 3, 4)) - x.mean(dim=(1, 3, 4)).square()).double()
    return {"var": float(((var.double() - ref).abs() / ref).max()),
            "naive": float(((naive - ref).abs() / ref).max()),
            "mean": _err(mean, x.double().mean(dim=(1, 3, 4))),
            "running_mean": _err(running_mean, mean)}  # fmt: skip


def _child() -> dict:
    from dissecting_adam.problems.models import _bn_relu_triton as kern

    real_tiles, real_finish = dict(kern.TILES), kern.FINISH
    kern.TILES.update(nchw=(8, 2), nhwc=(4, 4))
    kern.FINISH = (2, 2)  # the finishing kernels loop over tiles, and mask channels
    res = {}
    for layout in ("nchw", "nhwc"):
        for dtype in (torch.float32, torch.bfloat16):
            res[f"{layout}/{dtype}"] = _module_case(layout, dtype)
    res["relu_off"] = _module_case("nchw", torch.float32, bias=-1.0)
    for layout in ("nchw", "nhwc"):
        res[f"whole/{layout}"] = _module_case(layout, torch.float32, shape=WHOLE_SHAPE)
    res["group"] = _group_case()
    res["group_whole"] = _group_case(channels=4, size=(4, 4))
    kern.TILES.update(real_tiles)
    kern.FINISH = real_finish
    res["wrn"] = _wrn_case()
    res["offset"] = _offset_case()
    from dissecting_adam.bench.bn_layer import time_bn_relu

    res["bench"] = time_bn_relu("cpu", shape=(4, 8, 4, 4), repeats=2, copy_mib=1)
    return res


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    return interpreted(tmp_path_factory, "bn_relu_cases", __file__)


@pytest.mark.parametrize("path", ["", "whole/"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_float32_matches_eager_batch_norm_and_relu(cases, layout, path):
    """Output, the three gradients and the running statistics over 3 training calls, in
    the input's memory order, with ragged tiles and with whole ones; evaluation mode is the
    eager code itself."""
    case = cases[f"{path}{layout}" if path else f"{layout}/torch.float32"]
    for name in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
        assert case[name] <= 1e-5, (name, case)  # float32 against float64: measured <= 1e-6
    assert case["batches"] == [STEPS, STEPS] and case["same_layout"], case
    assert case["eval"] <= 1e-6, case  # the eager code; running statistics differ by rounding


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bfloat16_input_is_computed_in_float32_and_stored_once(cases, layout):
    """bf16 activations (autocast): statistics and gradients in float32, y and dx rounded
    once to bf16 (2^-8 relative, the interpreter truncating: 2^-7)."""
    case = cases[f"{layout}/torch.bfloat16"]
    assert case["dtype"] == "torch.bfloat16"
    for name in ("y", "dx"):
        assert case[name] <= 2**-6, (name, case)
    for name in ("dweight", "dbias", "running_mean", "running_var"):
        assert case[name] <= 2**-6, (name, case)


def test_most_values_below_zero(cases):
    """Biases around -1: the ReLU masks most outputs and their gradients (batch norm takes
    out the input's mean, so only the shift decides)."""
    case = cases["relu_off"]
    assert case["masked"] > 0.5, case
    assert max(case[n] for n in ("y", "dx", "dweight", "dbias")) <= 1e-5, case


@pytest.mark.parametrize("name", ["group", "group_whole"])
def test_vmap_group_matches_each_member_alone(cases, name):
    """Three members with their own weights, batches and running buffers under vmap (the
    seed-parallel groups' path) against each single model; with whole tiles, each lies
    in one member."""
    case = cases[name]
    assert case["loss"] <= 1e-5 and case["grad"] <= 1e-4 and case["buffers"] <= 1e-6, case


def test_wrn_trains_as_its_eager_twin(cases):
    """WRN-10-2: identical initial weights and state-dict keys; after three SGD steps the
    fused model's distance from the float64 model is within 4x of the eager float32 one's
    (or float32 rounding where both are exact to it)."""
    case = cases["wrn"]
    assert case["same_init"], case
    for what, floor in (("loss", 1e-6), ("grad", 1e-5), ("state", 1e-6), ("eval", 1e-6)):
        assert case["fused"][what] <= 4 * case["eager"][what] + floor, (what, case)


def test_variance_of_offset_data(cases):
    case = cases["offset"]
    assert case["var"] <= 1e-3, case  # 4 digits where the one-pass formula keeps none
    assert case["naive"] > 0.5, case
    assert case["mean"] <= 1e-3 and case["running_mean"] == 0.0, case


def test_gpu_check_times_the_layer_both_ways(cases):
    """The GPU check's layer table runs (interpreted here: the figures mean nothing)."""
    rows = cases["bench"]
    assert [(r["layout"], r["dtype"]) for r in rows] == [
        ("nhwc", "float32"), ("nhwc", "bfloat16"), ("nchw", "float32")
    ]  # fmt: skip
    for r in rows:
        assert r["eager_ms"] > 0 and r["fused_ms"] > 0 and r["fused_vs_copy"] > 0, r
        assert r["speed_up"] == pytest.approx(r["eager_ms"] / r["fused_ms"])


# --- settings: no kernels needed ------------------------------------------------------


def test_state_dict_keys_match_the_eager_model():
    eager, fused = WideResNet(10, 2, 7), WideResNet(10, 2, 7, fused_bn_relu=True)
    fused.load_state_dict(eager.state_dict())  # strict: the same keys and shapes
    assert list(eager.state_dict()) == list(fused.state_dict())


def test_cpu_without_the_interpreter_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="need a CUDA device") as err:
        BatchNormReLU2d(3)(torch.randn(2, 3, 2, 2))
    assert "\n" not in str(err.value)
    # Evaluation mode is eager and runs anywhere.
    BatchNormReLU2d(3).eval()(torch.randn(2, 3, 2, 2))


def test_plan_refuses_cpu_and_compile_and_keeps_the_identity(monkeypatch):
    from hydra import compose, initialize_config_dir

    from dissecting_adam.runner.plan import plan
    from dissecting_adam.runner.spec import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(os.path.abspath(conf), version_base=None):
        base = ["problem=cifar100_wrn404", "device=cpu"]
        cfg = compose("train", base)
        with pytest.raises(ConfigError, match="need a CUDA device.*fused_bn_relu=false"):
            plan(compose("train", [*base, "problem.fused_bn_relu=true"]))
        with pytest.raises(ConfigError, match="both fuse batch norm"):
            plan(compose("train", [*base, "problem.fused_bn_relu=true", "train.compile=true"]))
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        fused = plan(compose("train", [*base, "problem.fused_bn_relu=true"]))
    assert fused.problem_config.fused_bn_relu is True
    assert fused.identity() == plan(cfg).identity()


@pytest.mark.cuda
def test_cuda_kernels_match_eager_and_capture_in_a_graph():
    """On a GPU: the compiled kernels (not the interpreter) against eager, NHWC and NCHW,
    then a training step of WRN-10-2 captured in a CUDA graph and replayed."""
    dev = "cuda"
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        fused = BatchNormReLU2d(64).to(dev)
        eager = nn.BatchNorm2d(64).to(dev)
        eager.load_state_dict(fused.state_dict())
        x = torch.randn(32, 64, 16, 16, device=dev).contiguous(memory_format=layout)
        xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        dy = torch.randn_like(x)
        fused(xf).backward(dy)
        torch.relu(eager(xe)).backward(dy)
        torch.testing.assert_close(xf.grad, xe.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.weight.grad, eager.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused.running_var, eager.running_var)
    model = WideResNet(10, 2, 7, fused_bn_relu=True).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 8, 8, device=dev), torch.randint(0, 7, (8,), device=dev)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    before = static.item()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(static) and static.item() != before


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(_child()))
