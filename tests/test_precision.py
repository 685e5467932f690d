"""A run's precision (fp32, tf32, bf16) and the efficiency settings around it: identities
kept from before ``precision`` existed, bf16 autocast where the forward pass and the loss
run, the label on every output, cuDNN autotuning and channels_last defaults, and the L2
term as one reduction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_spec
from hydra import compose, initialize_config_dir
from torch import nn

from dissecting_adam.problems import load
from dissecting_adam.problems.batching import Batch
from dissecting_adam.problems.models.layers import decayed_weights, l2_term
from dissecting_adam.problems.models.wrn import WideResNet
from dissecting_adam.runner import backend, engine, session, table
from dissecting_adam.runner.plan import plan
from dissecting_adam.runner.records import precision_of
from dissecting_adam.runner.spec import ConfigError, RunSpec, precision_setting
from dissecting_adam.runner.store import config_hash

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")


def planned(*overrides) -> RunSpec:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return plan(compose("train", overrides=list(overrides)))


#: Identity-version-2 hashes (records.IDENTITY_VERSION), pinned when it was introduced: a
#: change of them is a change of format, with a migration (tests/test_migrate.py). The
#: ``allow_tf32=false`` runs are the ``precision=fp32`` runs.
PINNED = [
    (["problem=fmnist_2c2d", "optimizer=msvag"], "5097e799e5"),
    (["problem=fmnist_2c2d", "optimizer=msvag", "allow_tf32=false"], "d32dc4013c"),
    (["problem=cifar100_wrn404", "optimizer=msgd", "profile=smoke", "allow_tf32=false",
      "seed=3"], "26241332c5"),
    (["problem=cifar100_wrn404", "optimizer=mssd", "optimizer.lr=0.01"], "42e71ffd81"),
    (["problem=cifar10_3c3d", "optimizer=adam", "train.compile=true", "allow_tf32=false"],
     "29ee34d0c7"),
    (["problem=tolstoi_char_rnn", "optimizer=msvag", "flush_denormal=true", "allow_tf32=false"],
     "05886ab0c4"),
    (["problem=fmnist_2c2d", "optimizer=msgd", "cudnn_benchmark=true"], "f09f3fdd51"),
    (["problem=fmnist_2c2d", "optimizer=msgd", "deterministic=true"], "f09f3fdd51"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, digest", PINNED)
def test_identities_are_pinned(overrides, digest):
    spec = planned(*overrides)
    assert config_hash(spec.identity()) == digest
    fp32 = "allow_tf32=false" in overrides
    assert spec.precision == ("fp32" if fp32 else "tf32")
    # The same run named by its precision: fp32 is what allow_tf32=false meant.
    again = spec.derive(precision="tf32").derive(precision=spec.precision)
    assert config_hash(again.identity()) == digest


def test_precision_on_the_command_line_plans_to_the_same_runs():
    if planned("precision=bf16").precision != "bf16":
        pytest.skip("runner/plan.py does not read `precision` yet")
    for overrides, digest in PINNED:
        named = [o.replace("allow_tf32=false", "precision=fp32") for o in overrides]
        assert config_hash(planned(*named).identity()) == digest, named


def test_bf16_is_its_own_run_and_says_so_in_its_identity():
    tf32 = planned("problem=cifar100_wrn404", "optimizer=msgd")
    bf16 = tf32.derive(precision="bf16")
    assert bf16.identity() == {**tf32.identity(), "precision": "bf16"}
    assert tf32.identity()["precision"] == "tf32"
    fp32 = tf32.derive(precision="fp32")
    assert len({config_hash(s.identity()) for s in (tf32, bf16, fp32)}) == 3
    assert RunSpec.from_dict(bf16.to_dict()) == bf16
    # An old config.yaml (allow_tf32, no precision) reads back as the run it recorded.
    old = {k: v for k, v in tf32.to_dict().items() if k != "precision"}
    assert RunSpec.from_dict({**old, "allow_tf32": False}).precision == "fp32"
    assert RunSpec.from_dict({**old, "allow_tf32": True}) == tf32


@pytest.mark.parametrize(
    "identity, label",
    [
        ({}, "tf32"),
        ({"allow_tf32": False}, "fp32"),
        ({"precision": "bf16"}, "bf16"),
        ({"precision": "fp32"}, "fp32"),
        ({"precision": "tf32"}, "tf32"),
    ],
)
def test_a_stored_identity_names_its_precision(identity, label):
    assert precision_of(identity) == label


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: precision_setting("fp16"), "precision='fp16' is not a precision; use one of"),
        (lambda: precision_setting("bf16", False), "contradict each other; drop allow_tf32"),
        (lambda: precision_setting("tf32", "no"), "allow_tf32 must be true or false"),
        (lambda: planned().derive(precision="half"), "precision='half' is not a precision"),
    ],
)
def test_a_bad_precision_is_one_clear_line(call, words):
    with pytest.raises(ConfigError, match=words) as err:
        call()
    assert "\n" not in str(err.value)


def test_allow_tf32_false_is_fp32_with_a_deprecation_note(caplog):
    with caplog.at_level("WARNING"):
        assert precision_setting("tf32", False) == "fp32"
    assert "deprecated" in caplog.text and "precision=fp32" in caplog.text
    assert precision_setting("bf16", True) == precision_setting("bf16", None) == "bf16"
    fp32 = planned("allow_tf32=false")
    caplog.clear()
    with caplog.at_level("WARNING"):  # a derived fp32 run stays fp32, without a new note
        assert fp32.derive(seed=1, results_root="elsewhere").precision == "fp32"
    assert "deprecated" not in caplog.text


# --- autocast where the forward pass and the loss run ---------------------------------
def _problem():
    return load("fmnist_2c2d", data_root=str(Path(torch.__file__).parent), device="cpu")


def _batch(k: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(k)
    return Batch(torch.rand(4, 1, 28, 28, generator=gen), torch.tensor([0, 1, 2, 3]), 0, True)


def _dtypes(model: nn.Module) -> list[torch.dtype]:
    """Records the dtype of every Linear layer's output."""
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("precision, inside", [("bf16", torch.bfloat16), ("fp32", torch.float32),
                                               ("tf32", torch.float32)])  # fmt: skip
def test_single_runs_forward_and_loss_in_its_precision(precision, inside):
    problem = _problem()
    model = problem.build_model(0)
    seen = _dtypes(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    single = engine.Single(problem, model, opt, problem.lr_scheduler(opt), 0, precision)
    loss = single.losses([_batch()], torch.ones(1, dtype=torch.bool))
    assert seen == [inside, inside]
    assert loss.dtype == torch.float32  # cross-entropy and L2 in float32 under autocast
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    assert not torch.is_autocast_enabled("cpu")  # the backward pass ran outside it
    single.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_stacked_group_runs_forward_and_loss_under_autocast_in_bf16():
    """Inside vmap the dtypes do not show it (a Linear adds its bias in float32, pytorch
    issue 192617; the CPU's autocast skips vmap's convolution): that autocast is on does,
    and so do the losses, whose products were rounded to bf16."""
    problem = _problem()
    losses = {}
    for precision in ("fp32", "bf16"):
        models = [problem.build_model(s) for s in (0, 1)]
        enabled: list[bool] = []

        def note(mod, args, enabled=enabled):
            enabled.append(torch.is_autocast_enabled("cpu"))

        models[0].register_forward_pre_hook(note)  # the batched loss runs a copy, hooks too

        def build(params, lr):
            return torch.optim.SGD(params, lr=lr)

        stacked = engine.Stacked(problem, models, build, [0.1, 0.1], [0, 1], None, precision)
        losses[precision] = stacked.losses([_batch(0), _batch(1)], torch.ones(2, dtype=torch.bool))
        assert enabled == [precision == "bf16"] and losses[precision].dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in stacked.params.values())
    assert not torch.equal(losses["bf16"], losses["fp32"])
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=0.0)


def test_a_bf16_run_is_labelled_on_every_output(tmp_path, caplog):
    with caplog.at_level("INFO"):
        runs = [session.execute(tiny_spec(tmp_path, "train.num_steps=2").derive(precision=p))
                for p in ("tf32", "bf16")]  # fmt: skip
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert [r["precision"] for r in runs] == ["tf32", "bf16"]
    assert "precision bf16 (not the default tf32" in caplog.text  # the run's header line
    env = json.loads(Path(runs[1]["run_dir"], "environment.json").read_text())
    assert env["sessions"][0]["backend"]["precision"] == "bf16"
    got = table.collect(tmp_path)
    assert "precision" in got.columns
    labels = dict(zip(got["config_hash"], got["precision"], strict=False))
    assert sorted(labels.values()) == ["bf16", "tf32"]
    assert "precision" in table.collect(tmp_path / "empty").columns


def test_a_bf16_run_evaluates_in_bf16(tmp_path):
    """At step 0 the two runs hold the same parameters: their evaluated losses differ only
    because the bf16 run's evaluation passes ran under autocast too."""
    rows = {}
    for p in ("fp32", "bf16"):
        run = session.execute(tiny_spec(tmp_path, "train.num_steps=2").derive(precision=p))
        first = json.loads(Path(run["run_dir"], "metrics.jsonl").read_text().splitlines()[0])
        assert first["step"] == 0
        rows[p] = first["loss"]
    assert rows["bf16"] != rows["fp32"]
    assert abs(rows["bf16"] - rows["fp32"]) < 0.02 * abs(rows["fp32"])


# --- efficiency settings ---------------------------------------------------------------
@pytest.mark.parametrize(
    "device, precision, benchmark, deterministic, tf32, autotuned",
    [
        ("cuda", "tf32", True, False, True, True),  # the defaults on CUDA
        ("cuda", "bf16", True, True, True, False),  # deterministic turns autotuning off
        ("cuda", "fp32", True, False, False, True),
        ("cpu", "tf32", True, False, False, False),  # the CPU: neither exists
    ],
)
def test_backend_flags_follow_precision_and_determinism(
    monkeypatch, device, precision, benchmark, deterministic, tf32, autotuned
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set for cuda+deterministic
    try:
        got = backend.configure(device=device, precision=precision, cudnn_benchmark=benchmark,
                                deterministic=deterministic)  # fmt: skip
        assert (got["tf32"], got["cudnn_benchmark"]) == (tf32, autotuned)
        assert got["precision"] == precision
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        backend.configure(device="cpu")
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_autotuning_is_on_by_default_and_not_part_of_the_identity():
    default = planned()
    assert default.cudnn_benchmark is True
    assert planned("cudnn_benchmark=false").identity() == default.identity()
    assert planned("deterministic=true").cudnn_benchmark  # asked for, not in effect


def test_channels_last_is_on_cuda_only_by_default_and_changes_no_value():
    folder = str(Path(torch.__file__).parent)
    default = load("cifar10_3c3d", data_root=folder, device="cpu")
    nhwc = load("cifar10_3c3d", data_root=folder, device="cpu", channels_last=True)
    assert not default.channels_last and nhwc.channels_last
    assert load("cifar10_3c3d", data_root=folder, device="cuda").channels_last
    model, model_nhwc = default.build_model(0), nhwc.build_model(0)
    conv = model_nhwc.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(4, 3, 32, 32)
    assert nhwc.layout(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_nhwc(nhwc.layout(x)), model(x), rtol=1e-5, atol=1e-6)
    assert "channels_last" not in planned("problem=cifar10_3c3d").identity()["problem_config"]
    with pytest.raises(ValueError, match="channels_last must be true, false or null"):
        load("cifar10_3c3d", data_root=folder, channels_last="yes")


# --- the L2 term as one reduction --------------------------------------------------------
def _old_l2(model: nn.Module, wd: float) -> torch.Tensor:
    """The per-tensor sum the L2 term was before (one reduction per kernel)."""
    return 0.5 * wd * torch.stack([w.square().sum() for w in decayed_weights(model)]).sum()


def test_the_l2_term_is_the_per_tensor_sum():
    wrn = WideResNet(16, 2, 100)
    new, old = l2_term(wrn, 5e-4), _old_l2(wrn, 5e-4)
    torch.testing.assert_close(new, old, rtol=2e-6, atol=0.0)  # grouped otherwise: rounding
    new.backward()
    for w in decayed_weights(wrn):  # its gradient is wd * w, kernel by kernel
        torch.testing.assert_close(w.grad, 5e-4 * w.detach(), rtol=1e-6, atol=0.0)
    one = nn.Sequential(nn.Linear(300, 200))  # one kernel: the same reduction, bit for bit
    assert torch.equal(l2_term(one, 2e-3), _old_l2(one, 2e-3))
    assert l2_term(one, 0.0).item() == 0.0
