"""Speed and numerics settings of a run: a compiled model (matches eager within a stated
tolerance, and is its own run), TF32 / cuDNN / deterministic settings (in the identity or
recorded with each session), and runs packed onto one device by worker processes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dissecting_adam.problems import load
from dissecting_adam.protocol.launch import InProcess, Packed
from dissecting_adam.runner import backend, session
from dissecting_adam.runner.plan import ConfigError, plan
from dissecting_adam.runner.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")

#: Compiled vs eager, per recorded loss: |a - b| <= ATOL + RTOL |b|. Inductor fuses and
#: reorders float32 reductions, so the two differ by rounding. Before the first update
#: (step 0: the same weights, the same batches) that is the forward pass alone: within
#: FIRST (measured: <= 5e-8). Training then amplifies it (M-SVAG divides by small
#: variance estimates early on; WRN-40-4's first steps raise its loss by a third): up to
#: 3.6e-3 after 20 steps here (P2 3.6e-3, WRN-40-4 3.4e-3, P1 1.2e-3). Different initial
#: weights differ by 1e-1 and more.
RTOL, ATOL, FIRST = 5e-3, 1e-5, 1e-5


def spec_of(root, *overrides):
    base = [
        "profile=smoke",
        "data.variant=synthetic",
        f"results_root={root}",
        "train.progress=off",
        "train.log_every=1",
        "train.checkpoint_every=null",
        "device=cpu",
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return plan(compose("train", overrides=[*base, *overrides]))


def losses(summary: dict) -> dict[tuple[int, str], float]:
    rows = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    return {(r["step"], r["split"]): r["loss"] for r in map(json.loads, rows)}


# (problem, optimizer, step size, batch size): every problem; the two CNNs with BatchNorm / the most
# layers take longest to compile on a CPU, so they are in the slow set.
COMPILED = [
    pytest.param("fmnist_2c2d", "msvag", 0.01, 8, id="fmnist_2c2d"),
    pytest.param("tolstoi_char_rnn", "adam", 1e-3, 4, id="tolstoi_char_rnn"),
    pytest.param("cifar10_3c3d", "mssd", 1e-3, 8, id="cifar10_3c3d", marks=pytest.mark.slow),
    pytest.param("cifar100_wrn404", "msgd", 0.01, 8, id="cifar100_wrn404",
                 marks=pytest.mark.slow),
    pytest.param("fmnist_2c2d", "msvag_mb", 0.01, 8, id="fmnist_2c2d-per-example",
                 marks=pytest.mark.slow),
]  # fmt: skip


@pytest.mark.parametrize("problem, optimizer, lr, batch", COMPILED)
def test_a_compiled_run_matches_eager_and_is_its_own_run(tmp_path, problem, optimizer, lr, batch):
    args = [f"problem={problem}", f"optimizer={optimizer}", f"optimizer.lr={lr}",
            f"problem.batch_size={batch}",
            "problem.eval_batch_size=8", "train.num_steps=20", "train.eval_every=10"]  # fmt: skip
    eager = session.execute(spec_of(tmp_path, *args))
    compiled_spec = spec_of(tmp_path, *args, "train.compile=true")
    compiled = session.execute(compiled_spec)
    assert compiled["run_dir"] != eager["run_dir"]
    assert compiled_spec.identity()["train"]["compile"] == "default"
    assert compiled["compile"] == "default" and compiled["first_step_s"] > 0
    a, b = losses(compiled), losses(eager)
    assert a.keys() == b.keys() and len(a) == 20 + 2 * 3  # 20 mini-batches, 3 evaluations
    for key in b:
        tol = FIRST if key[0] == 0 else RTOL
        assert math.isclose(a[key], b[key], rel_tol=tol, abs_tol=ATOL), (key, a[key], b[key])
    env = json.loads(Path(compiled["run_dir"], "environment.json").read_text())
    assert env["sessions"][0]["backend"]["compile"] == "default"


@pytest.mark.slow
def test_compiled_seed_parallel_group_matches_eager(tmp_path):
    args = ["optimizer=msgd", "optimizer.lr=0.01", "problem.batch_size=8", "train.num_steps=10"]
    runs = {}
    for mode in ("false", "true"):
        specs = [spec_of(tmp_path / mode, *args, f"train.compile={mode}").derive(seed=s)
                 for s in (0, 1)]  # fmt: skip
        runs[mode] = session.execute_seeds(specs, parallel_seeds=2)
    for eager, compiled in zip(runs["false"], runs["true"], strict=True):
        a, b = losses(compiled), losses(eager)
        for key in b:
            assert math.isclose(a[key], b[key], rel_tol=RTOL, abs_tol=ATOL), key


def test_compiled_model_keeps_its_state_dict_keys():
    folder = Path(torch.__file__).parent  # any folder: the model needs no data
    problem = load("fmnist_2c2d", data_root=str(folder), device="cpu")
    eager, compiled = problem.build_model(0), problem.build_model(0)
    backend.compile_model(compiled, "default")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints interchange


@pytest.mark.parametrize(
    "override, key, default, value",
    [
        ("train.compile=reduce-overhead", ("train", "compile"), None, "reduce-overhead"),
        ("precision=fp32", ("precision",), "tf32", "fp32"),
        ("allow_tf32=false", ("precision",), "tf32", "fp32"),
        ("flush_denormal=true", ("flush_denormal",), False, True),
    ],
)
def test_numerics_settings_are_in_the_identity_at_their_value(
    tmp_path, override, key, default, value
):
    def at(ident):
        return ident[key[0]] if len(key) == 1 else ident[key[0]][key[1]]

    plain, changed = spec_of(tmp_path), spec_of(tmp_path, override)
    assert plain.run_dir().path != changed.run_dir().path
    assert (at(plain.identity()), at(changed.identity())) == (default, value)
    assert "allow_tf32" not in changed.identity()  # version 1's key for fp32


def test_speed_settings_are_recorded_not_identity(tmp_path):
    default = spec_of(tmp_path)
    for override in ("cudnn_benchmark=false", "deterministic=true"):
        spec = spec_of(tmp_path, override)
        assert spec.identity() == default.identity()
        key, value = override.split("=")
        assert spec.to_dict()[key] is (value == "true") is not default.to_dict()[key]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.compile=fast"], "train.compile='fast' is not a compile setting"),
        (["allow_tf32=maybe"], "allow_tf32 must be true or false"),
        (["deterministic=yes"], "deterministic must be true or false"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words):
        spec_of(tmp_path, *overrides)


def test_configure_sets_every_flag_and_says_what_is_in_effect():
    try:
        got = backend.configure(
            device="cpu", precision="tf32", cudnn_benchmark=False, deterministic=True
        )
        assert got["deterministic"] and torch.are_deterministic_algorithms_enabled()
        assert got["tf32"] is False  # TF32 exists on CUDA only
        assert torch.backends.cudnn.deterministic
        got = backend.configure(
            device="cpu", precision="tf32", cudnn_benchmark=True, deterministic=False
        )
        assert not got["deterministic"]
        assert not torch.backends.cudnn.benchmark and not got["cudnn_benchmark"]  # CUDA only
        got = backend.configure(device="cpu", precision="tf32", cudnn_benchmark=False,
                                deterministic=False, flush_denormal=True)  # fmt: skip
        assert got["flush_denormal"] == torch.set_flush_denormal(True)  # where x86 can
        tiny = torch.tensor([1e-39], dtype=torch.float32)
        assert (tiny * 1.0).item() == (0.0 if got["flush_denormal"] else tiny.item())
    finally:
        backend.configure(device="cpu", precision="tf32", cudnn_benchmark=False,
                          deterministic=False)  # fmt: skip
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.tensor([1e-39]).mul(1.0).item() != 0.0  # subnormals are back


# --- packing -------------------------------------------------------------------------
def _sessions(summary: dict) -> list[dict]:
    env = json.loads(Path(summary["run_dir"], "environment.json").read_text())
    return env["sessions"]


def _overlap(a: dict, b: dict) -> bool:
    t = [datetime.fromisoformat(x[k]) for x in (a, b) for k in ("start", "end")]
    return t[0] < t[3] and t[2] < t[1]


def test_packed_runs_equal_in_process_runs_and_respect_the_per_problem_limit(tmp_path):
    specs = [
        spec_of(tmp_path / "packed", f"problem={p}", "train.num_steps=6", f"seed={s}")
        for p in ("fmnist_2c2d", "tolstoi_char_rnn")
        for s in (0, 1, 2)
    ]
    done = []
    Packed({"fmnist_2c2d": 2, "tolstoi_char_rnn": 1}, ("cpu",))(specs, done.append)
    assert sum(done) == len(specs)
    here = [s.derive(results_root=str(tmp_path / "here")) for s in specs]
    InProcess()(here)
    for packed, alone in zip(specs, here, strict=True):
        a, b = packed.run_dir(), alone.run_dir()
        assert a.summary()["status"] == "completed"
        la, lb = losses({"run_dir": a.path}), losses({"run_dir": b.path})
        for key in lb:
            assert math.isclose(la[key], lb[key], rel_tol=1e-5, abs_tol=1e-6), key
    records = [_sessions({"run_dir": s.run_dir().path})[0] for s in specs]
    p1 = [r for r, s in zip(records, specs, strict=True) if s.problem == "fmnist_2c2d"]
    p4 = [r for r, s in zip(records, specs, strict=True) if s.problem == "tolstoi_char_rnn"]
    assert len({r["pid"] for r in p1 + p4}) == 2  # two workers in all
    assert not any(_overlap(a, b) for i, a in enumerate(p4) for b in p4[i + 1 :])


def test_a_failing_packed_run_is_reported_after_the_others_finish(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    good = spec_of(tmp_path, "train.num_steps=4")
    bad = good.derive(results_root=str(blocked), seed=1)
    with pytest.raises(Exception, match="file"):
        Packed(2, ("cpu",))([bad, good])
    assert good.run_dir().summary()["status"] == "completed"
    assert RunDir(good.run_dir().path).is_finished(good.identity())


def test_packed_jobs_per_device_is_checked(tmp_path):
    from dissecting_adam.protocol.build import packed

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=["launcher=packed", "jobs_per_device=0"])
    with pytest.raises(ConfigError, match="jobs_per_device must be an integer >= 1"):
        packed(cfg)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=["launcher=packed"])
    launch = packed(cfg)
    assert launch.jobs("cifar100_wrn404") == 1 and launch.jobs("fmnist_2c2d") >= 1
    assert launch.resolved_devices()[0] == ("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_a_compiled_run_resumes_to_the_same_record(tmp_path):
    """Checkpoints of a compiled model are those of the eager one (same keys), and a
    compiled run interrupted after a checkpoint resumes to the record of one that was not:
    bit for bit on the CPU, where inductor's kernels are deterministic."""
    from conftest import interrupted_at_checkpoint

    args = ["train.num_steps=12", "train.checkpoint_every=4", "train.compile=true",
            "optimizer.lr=0.01", "problem.batch_size=8"]  # fmt: skip
    whole = session.execute(spec_of(tmp_path / "whole", *args))
    cut = spec_of(tmp_path / "cut", *args)
    with interrupted_at_checkpoint(2), pytest.raises(KeyboardInterrupt):
        session.execute(cut)
    resumed = session.execute(cut)
    assert resumed["status"] == "completed" and not resumed["skipped"]
    a = Path(whole["run_dir"], "metrics.jsonl").read_bytes()
    assert Path(resumed["run_dir"], "metrics.jsonl").read_bytes() == a
    assert [s["resumed"] for s in _sessions(resumed)] == [False, True]
