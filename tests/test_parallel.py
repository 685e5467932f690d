"""Groups of the CNN problems in float64: member k of a group equals a single run of seed k
(and step size k: metrics and final parameters, to rounding), a diverged member is
isolated, the store layout and skip-if-finished are those of single runs, bad settings are
refused. Generated data (``data.variant=synthetic``), batches of 8, ten steps. Every problem
as a group through the runner: tests/test_groups.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dissecting_adam.problems.batching import Batch
from dissecting_adam.runner.data import problem_for
from dissecting_adam.runner.loop import train_group, train_single
from dissecting_adam.runner.plan import ConfigError, plan, plan_seeds
from dissecting_adam.runner.session import execute_seeds
from dissecting_adam.runner.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
SEEDS = [0, 1, 2]
#: In float64 a member equals its single run to rounding; in float32 batched convolutions
#: sum in another order and M-SVAG's variance ratio amplifies that over ten steps.
TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-3, 1e-4)}


def make_cfg(root, *overrides):
    base = [
        "profile=smoke",
        "data.variant=synthetic",
        f"results_root={root}",
        "problem.batch_size=8",
        "problem.eval_batch_size=16",
        "train.progress=off",
        "train.log_every=1",
        "train.eval_every=5",
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[*base, *overrides])


def execute_all(cfg):
    return execute_seeds(*plan_seeds(cfg))


def rows(run: RunDir) -> list[dict]:
    return run.read_metrics()


def assert_same_metrics(a: RunDir, b: RunDir, dtype=torch.float64) -> None:
    (rtol, atol), ra, rb = TOL[dtype], rows(a), rows(b)
    assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=rtol, abs=atol, nan_ok=True), (x, y)
        if "accuracy" in x and dtype == torch.float64:
            assert x["accuracy"] == y["accuracy"], (x, y)


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module, dtype=torch.float64) -> None:
    """Element-wise in float64; in float32 as a norm, to 1% (measured: 1e-3 for M-SVAG on
    fmnist_2c2d, where coordinates with a tiny momentum swing its factor; 1e-5 otherwise)."""
    rtol, atol = TOL[dtype]
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=name)
        else:
            assert (x - y).norm() <= 5 * rtol * y.norm(), (name, float((x - y).norm() / y.norm()))


def singles_and_group(tmp_path, cfg, poison=None, dtype=torch.float64, lrs=None):
    """Train SEEDS one by one with ``train`` and together with ``train_parallel``.

    In float64 by default, so that the comparison is of the algorithms, not of summation
    orders. ``poison(seed, step, batch)`` may rewrite batches (the same for both). Returns
    (models, runs, summaries) of the single runs and of the group.
    """
    out = {}
    base = plan(cfg)
    lrs = lrs or [base.optimizer.lr] * len(SEEDS)
    for mode in ("single", "parallel"):
        specs = [base.derive(seed=s, lr=lr, results_root=str(tmp_path / mode))
                 for s, lr in zip(SEEDS, lrs, strict=True)]  # fmt: skip
        runs = [spec.run_dir() for spec in specs]
        for spec, run in zip(specs, runs, strict=True):
            run.start(spec.identity(), "")
        with problem_for(base, "cpu") as problem:
            clean, clean_eval = problem.train_batches, problem.eval_batches

            def batches(seed, clean=clean):
                for step, batch in enumerate(clean(seed)):
                    batch = batch._replace(inputs=batch.inputs.to(dtype))
                    yield batch if poison is None else poison(seed, step, batch)

            def eval_batches(split, clean=clean_eval):
                for batch in clean(split):
                    yield batch._replace(inputs=batch.inputs.to(dtype))

            problem.train_batches, problem.eval_batches = batches, eval_batches
            models = [problem.build_model(s).to(dtype) for s in SEEDS]
            if mode == "single":
                summaries = [
                    _single(problem, m, spec, run)
                    for m, spec, run in zip(models, specs, runs, strict=True)
                ]
            else:
                summaries = train_group(problem, models, build(base), base.train, SEEDS, runs, lrs)
        out[mode] = (models, runs, summaries)
    return out["single"], out["parallel"]


def _single(problem, model, spec, run):
    optimizer = spec.optimizer.build(model.parameters())
    return train_single(problem, model, optimizer, problem.lr_scheduler(optimizer), spec.train,
                        run)  # fmt: skip


def build(spec):
    """``build_optimizer(params, lr)`` of a group: the spec's method and settings."""

    def make(params, lr):
        return spec.derive(lr=lr).optimizer.build(params)

    return make


@pytest.mark.parametrize("problem", ["fmnist_2c2d", "cifar10_3c3d"])
@pytest.mark.parametrize("optimizer,lr", [("msvag", 0.01), ("adam", 1e-3)])
def test_each_member_matches_its_single_run(tmp_path, problem, optimizer, lr):
    cfg = make_cfg(tmp_path, f"problem={problem}", f"optimizer={optimizer}", f"optimizer.lr={lr}")
    (s_models, s_runs, s_sum), (p_models, p_runs, p_sum) = singles_and_group(tmp_path, cfg)
    for k in range(len(SEEDS)):
        assert p_runs[k].path.name == s_runs[k].path.name  # same identity, same folder
        assert p_sum[k]["status"] == s_sum[k]["status"] == "completed"
        assert p_sum[k]["steps_done"] == 10
        assert_same_metrics(p_runs[k], s_runs[k])
        assert_same_parameters(p_models[k], s_models[k])
    # The members really differ from one another (own initialisation, own data).
    assert rows(p_runs[0])[2]["loss"] != rows(p_runs[1])[2]["loss"]


@pytest.mark.parametrize("optimizer,lrs", [("msvag", [0.01, 0.03, 0.003]),
                                           ("adam", [1e-3, 1e-2, 3e-4])])  # fmt: skip
def test_members_of_different_step_sizes_match_their_single_runs(tmp_path, optimizer, lrs):
    """A group's optimizer steps with member 0's step size; member k's update is scaled by
    lr_k / lr_0, exactly a run of step size lr_k (float64: to rounding)."""
    cfg = make_cfg(tmp_path, f"optimizer={optimizer}", "optimizer.lr=0.01")
    (s_models, s_runs, s_sum), (p_models, p_runs, p_sum) = singles_and_group(tmp_path, cfg, lrs=lrs)
    for k in range(len(SEEDS)):
        assert p_runs[k].path == tmp_path / "parallel" / s_runs[k].path.relative_to(
            tmp_path / "single"
        )
        assert_same_metrics(p_runs[k], s_runs[k])
        assert_same_parameters(p_models[k], s_models[k])


@pytest.mark.parametrize("problem", ["fmnist_2c2d", "cifar10_3c3d"])
def test_in_float32_members_match_to_float_tolerance(tmp_path, problem):
    cfg = make_cfg(tmp_path, f"problem={problem}", "optimizer=msvag", "optimizer.lr=0.01")
    f32 = torch.float32
    (s_models, s_runs, _), (p_models, p_runs, _) = singles_and_group(tmp_path, cfg, dtype=f32)
    for k in range(len(SEEDS)):
        assert_same_metrics(p_runs[k], s_runs[k], f32)
        assert_same_parameters(p_models[k], s_models[k], f32)


def test_a_diverged_member_is_recorded_and_the_others_go_on(tmp_path):
    def poison(seed, step, batch):  # seed 1 sees NaN images from step 3 on
        if seed == 1 and step >= 3:
            return Batch(batch.inputs * float("nan"), *batch[1:])
        return batch

    cfg = make_cfg(tmp_path, "optimizer=msvag", "optimizer.lr=0.01", "train.log_every=2")
    (s_models, s_runs, s_sum), (p_models, p_runs, p_sum) = singles_and_group(tmp_path, cfg, poison)
    assert s_sum[1]["status"] == p_sum[1]["status"] == "diverged"
    assert p_sum[1]["diverged_step"] == s_sum[1]["diverged_step"] == 4  # first check after 3
    assert p_sum[1]["divergence_reason"] == s_sum[1]["divergence_reason"]
    assert p_runs[1].summary()["status"] == "diverged"
    assert_same_metrics(p_runs[1], s_runs[1])
    for k in (0, 2):  # untouched by the NaNs of member 1
        assert p_sum[k]["status"] == "completed"
        assert_same_metrics(p_runs[k], s_runs[k])
        assert_same_parameters(p_models[k], s_models[k])


def test_runner_stores_each_seed_as_a_single_run_and_skips_finished_ones(tmp_path):
    overrides = ["seeds=[0,1,2]", "parallel_seeds=2"]
    out = execute_all(make_cfg(tmp_path / "par", *overrides))
    single = execute_all(make_cfg(tmp_path / "one", "seeds=[0,1,2]"))
    assert [s["status"] for s in out] == ["completed"] * 3 and not any(s["skipped"] for s in out)
    for a, b in zip(out, single, strict=True):
        pa, pb = Path(a["run_dir"]), Path(b["run_dir"])
        assert pa.relative_to(tmp_path / "par") == pb.relative_to(tmp_path / "one")
        assert (pa / "identity.json").read_text() == (pb / "identity.json").read_text()
        assert sorted(p.name for p in pa.iterdir()) == sorted(p.name for p in pb.iterdir())
    sessions = [json.loads((Path(s["run_dir"]) / "environment.json").read_text()) for s in out]
    # seeds 0 and 1 ran as a group of two; seed 2, alone, as an ordinary single run.
    assert sessions[0]["sessions"][0]["parallel_group"] == [0, 1]
    assert sessions[1]["sessions"][0]["parallel_seeds"] == 2
    assert "parallel_group" not in sessions[2]["sessions"][0]
    assert out[0]["parallel_group"] == [0, 1]

    again = execute_all(make_cfg(tmp_path / "par", *overrides))
    assert all(s["skipped"] for s in again)
    (Path(out[0]["run_dir"]) / "summary.json").unlink()  # as if seed 0 had been interrupted
    (Path(out[2]["run_dir"]) / "summary.json").unlink()
    stamp = (Path(out[1]["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns
    third = execute_all(make_cfg(tmp_path / "par", *overrides))
    assert [s["skipped"] for s in third] == [False, True, False]
    assert third[0]["parallel_group"] == [0, 2]  # the unfinished seeds form the new group
    assert (Path(out[1]["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns == stamp
    forced = execute_all(make_cfg(tmp_path / "par", *overrides, "force=true"))
    assert not any(s["skipped"] for s in forced)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["parallel_seeds=0"], "parallel_seeds must be an integer >= 1"),
        (["seeds=3"], "seeds must be a list of integers"),
    ],
)
def test_unsupported_settings_are_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        execute_all(make_cfg(tmp_path, "seeds=[0,1]", *overrides))
    assert not (tmp_path / "smoke").exists()
