"""The GPU check's measuring pieces on the CPU: the optimizer rows (paths a build does not
offer, bytes moved, the compile cap), the cap inside a section's alarm, the FLOPs of a
step, steady-state packing throughput, the batch that fits generated data, and the choice
of the fastest setting per precision for the projection."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from dissecting_adam.bench import optim_step
from dissecting_adam.bench.check_runs import fastest, pack_plan
from dissecting_adam.bench.data import load_for_timing
from dissecting_adam.bench.packing import fitting_batch, steady
from dissecting_adam.bench.sections import BudgetSpent, CapReached, alarm, cap
from dissecting_adam.bench.step_settings import SETTINGS, cuda_graph_support, step_flops
from dissecting_adam.problems import PROBLEMS

SHAPES = [(4, 3), (5,)]


def refuses(params, **kwargs):
    """An optimizer of a build without the ``fused_backend`` keyword."""
    raise TypeError("__init__() got an unexpected keyword argument 'fused_backend'")


def test_a_refused_fused_backend_is_not_available_not_an_error():
    with pytest.raises(LookupError, match=optim_step.NOT_AVAILABLE):
        optim_step.make(refuses, SHAPES, "cpu")
    with pytest.raises(TypeError, match="not supported"):  # other TypeErrors are errors
        optim_step.make(lambda p: torch.optim.Adam(p, lr="x"), SHAPES, "cpu")


@pytest.mark.parametrize(
    "factory, arrays",
    [
        (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 7),  # p, m, v r/w; g read
        (lambda p: torch.optim.SGD(p, lr=1e-3), 3),  # no state: p r/w, g read
        (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), 5),
    ],
)  # fmt: skip
def test_moved_bytes_counts_parameters_state_and_gradients(factory, arrays):
    opt = optim_step.make(factory, SHAPES, "cpu")
    opt.step()
    assert optim_step.moved_bytes(opt) == arrays * 4 * (12 + 5)


def test_bench_rows_put_unavailable_paths_beside_the_timed_ones(monkeypatch):
    real = optim_step.candidates

    def some(device, builds=(None,)):
        out = {k: v for k, v in real(device, builds).items() if k.startswith(("Adam", "M-SGD"))}
        out["M-SGD fused [triton]"] = (refuses, None)
        return out

    monkeypatch.setattr(optim_step, "candidates", some)
    res = optim_step.bench("cpu", 3, 1, SHAPES, copy_mib=1)
    rows = {r["optimizer"]: r for r in optim_step.rows(res)}
    assert rows["Adam fused"]["vs_adam_fused"] == 1.0 and rows["Adam fused"]["status"] == "ok"
    assert rows["M-SGD fused [triton]"]["median_ms"] is None
    assert rows["M-SGD fused [triton]"]["status"] == optim_step.NOT_AVAILABLE
    foreach = rows["M-SGD foreach"]
    assert foreach["gb_per_s"] * 1e9 == pytest.approx(5 * 4 * 17 / (foreach["median_ms"] / 1e3))
    assert foreach["vs_copy"] == pytest.approx(foreach["gb_per_s"] * 1e9 / res["copy_bytes_per_s"])
    assert res["copy_bytes_per_s"] > 1e8  # any machine copies faster than 100 MB/s


def test_a_slow_compile_is_reported_as_such(monkeypatch):
    def slow(opt, device, lib=None):
        time.sleep(5)

    monkeypatch.setattr(optim_step, "first_step", slow)
    monkeypatch.setattr(optim_step, "make", lambda factory, shapes, device: None)
    t0 = time.perf_counter()
    out = optim_step.compiled_steps("cpu", SHAPES, cap_s=0.3)
    assert time.perf_counter() - t0 < 3
    assert "compile not finished within the 0 s cap" in out["M-SVAG"]["status"]
    (row,) = optim_step.rows({"median_ms": {}, "unavailable": {}, "copy_bytes_per_s": 1.0,
                              "bytes": {}, "first_step_ms": {}, "iqr_ms": {}}, out)  # fmt: skip
    assert row["optimizer"] == "M-SVAG fused [compile]" and "cap" in row["status"]


def test_a_cap_inside_a_section_alarm_keeps_the_alarm():
    with pytest.raises(BudgetSpent), alarm(0.6):
        with pytest.raises(CapReached), cap(0.1):
            time.sleep(1)
        time.sleep(2)  # the section's alarm, re-armed, still rings
    with alarm(0.2):  # a cap longer than the alarm leaves the alarm to ring
        with pytest.raises(BudgetSpent), cap(5):
            time.sleep(1)


def test_step_flops_are_counted_once_and_scaled_to_the_batch(tmp_path):
    """WRN-40-4's forward and backward pass at batch 128: 997 GFLOP, 7.79 per example."""
    problem, _, _ = load_for_timing("cifar100_wrn404", "cpu", tmp_path, kind="small",
                                    real=False, overrides={"batch_size": 4})  # fmt: skip
    flops = step_flops(problem, next(problem.train_batches(0)), examples=1)
    assert flops * 128 / 4 / 1e9 == pytest.approx(997.0, rel=0.01)


def test_the_lstm_is_counted_as_its_matmuls(tmp_path):
    problem, _, _ = load_for_timing("tolstoi_char_rnn", "cpu", tmp_path, kind="small",
                                    real=False, overrides={"batch_size": 4})  # fmt: skip
    batch = next(problem.train_batches(0))
    # 2 LSTM layers of 128 units (4 gates, 128 inputs + 128 recurrent): 2 x 2 x 4 x 128 x
    # 256 FLOPs per character forward, about three times that with the backward pass.
    per_char = step_flops(problem, batch) / batch.inputs.numel()
    assert per_char > 3 * 2 * 2 * 4 * 128 * 256 * 0.9


def test_settings_and_cuda_graphs():
    bf16 = [name for name, s in SETTINGS.items() if s.precision == "bf16"]
    assert bf16 == ["channels_last+bf16", "fused_bn_relu+bf16"]  # the names say bf16
    assert all(s.fused_bn_relu == name.startswith("fused") for name, s in SETTINGS.items())
    assert SETTINGS["compile"].compile == "default" and SETTINGS["compile"].cudnn_benchmark
    assert "need a CUDA device" in cuda_graph_support("cpu")


@pytest.mark.parametrize(
    "steps, train_s, members, side, wall, rate, startup",
    [
        (200, [1.0, 1.0], 1, 2, 4.0, 200.0, 0.75),  # 2 tasks side by side, 1 s each of 4 s
        (400, [2.0] * 4, 4, 1, 2.5, 200.0, 0.2),  # one group of 4: 100 steps each in 2 s
        (0, [], 1, 1, 1.0, None, None),
    ],
)  # fmt: skip
def test_steady_throughput_leaves_out_start_up(steps, train_s, members, side, wall, rate,
                                               startup):  # fmt: skip
    out = steady(steps, train_s, members, side, wall)
    assert out["steady_steps_per_s"] == (pytest.approx(rate) if rate else None)
    assert out["startup_share"] == (pytest.approx(startup) if startup is not None else None)


@pytest.mark.parametrize("batch", [128, 64, 32])
def test_the_paper_batch_fits_the_generated_data(batch):
    """The stand-ins hold at least a batch (P2's paper batch of 128 included)."""
    config = PROBLEMS["cifar10_3c3d"].Config(batch_size=batch)
    spec = SimpleNamespace(problem="cifar10_3c3d", problem_config=config, device="cpu",
                           data_variant="synthetic")  # fmt: skip
    assert fitting_batch(spec) is None
    assert fitting_batch(SimpleNamespace(data_variant="real")) is None


def test_a_standin_smaller_than_the_batch_is_packed_at_its_size(monkeypatch):
    """A problem whose stand-in ignores ``min_train`` (one a user added, say)."""
    from dissecting_adam.problems.datasets import synthetic

    cls = PROBLEMS["cifar10_3c3d"]
    monkeypatch.setattr(
        cls,
        "standin",
        classmethod(
            lambda c, folder, min_train=1: synthetic.write_cifar(folder, "cifar-10", 40, 8)
        ),
    )
    config = cls.Config(batch_size=128)
    spec = SimpleNamespace(problem="cifar10_3c3d", problem_config=config, device="cpu",
                           data_variant="synthetic")  # fmt: skip
    assert fitting_batch(spec) == 40


def test_the_projection_takes_the_fastest_setting_of_each_precision():
    times = {"p": {"eager": 0.03, "cudnn_benchmark": 0.02, "channels_last+bf16": 0.015,
                   "compile (default)": 0.025}, "q": {"eager": 0.01, "compile": None}}  # fmt: skip
    assert fastest(times, "fp32/tf32") == {"p": (0.02, "cudnn_benchmark"), "q": (0.01, "eager")}
    assert fastest(times, "bf16") == {"p": (0.015, "channels_last+bf16")}


@pytest.mark.parametrize(
    "k, jobs, sweep, plan",
    [(10, 4, (1, 2), [(1, 10), (4, 10), (1, 1), (2, 1)]),  # the driver's groups first
     (2, 1, (1,), [(1, 2), (1, 1)]),
     (1, 4, (1, 8), [(1, 1), (8, 1)])],  # no groups: single runs only
)  # fmt: skip
def test_pack_plan_measures_the_driver_first(k, jobs, sweep, plan):
    assert pack_plan(k, jobs, sweep) == plan
