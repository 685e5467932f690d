"""The driver's batching (issue 20): runs that differ only in seed and step size train as
groups where that pays (``parallel_seeds=auto``: groups of 10 on CUDA, single runs on a
CPU), the plan says which and why, probe rounds probe ahead with groups, and a grouped
reproduction selects and reports what single runs do. CPU, generated data, smoke sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from dissecting_adam.protocol import batching, build, cli, driver
from dissecting_adam.protocol.launch import HydraMultirun, InProcess, Packed
from dissecting_adam.protocol.search import Outcome, Probe
from dissecting_adam.runner.plan import ConfigError, plan

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
SMALL = ("overrides=['data.variant=synthetic','train.checkpoint_every=null',"
         "'train.num_steps=3','problem.batch_size=4','problem.eval_batch_size=16']")  # fmt: skip


def _cfg(root, *extra, problems="[fmnist_2c2d,tolstoi_char_rnn]"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("reproduce", overrides=[
            "profile=smoke", f"problems={problems}", "optimizers=[msgd,adam]",
            f"results_root={root}", "device=cpu", "estimate=false", SMALL, *extra,
        ])  # fmt: skip


def _spec(root, *overrides):
    base = ["profile=smoke", "problem=fmnist_2c2d", "problem.batch_size=4",
            "problem.eval_batch_size=16", "data.variant=synthetic", f"results_root={root}",
            "train.progress=off", "train.checkpoint_every=null", "train.num_steps=2",
            "device=cpu"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return plan(compose("train", overrides=[*base, *overrides]))


# --- the setting: auto by the device, and the plan line --------------------------------
@pytest.mark.parametrize(
    "setting, devices, cuda, remote, members, why",
    [
        ("auto", ["cpu"], False, False, 1, "auto: CPU, where groups measured 0.55-0.93x"),
        ("auto", ["auto"], False, False, 1, "auto: CPU"),
        ("auto", ["auto"], True, False, 10, "auto: CUDA"),
        ("auto", ["cuda:0"], False, False, 10, "auto: CUDA"),  # the device is checked elsewhere
        ("auto", ["cpu"], True, False, 1, "auto: CPU"),  # device=cpu on a CUDA machine
        ("auto", ["auto"], True, True, 1, "cluster nodes' device is not known here"),
        (4, ["cpu"], False, False, 4, "parallel_seeds=4"),
        (1, ["auto"], True, False, 1, "parallel_seeds=1"),
    ],
)  # fmt: skip
def test_auto_groups_on_cuda_and_runs_singly_on_a_cpu(
    monkeypatch, setting, devices, cuda, remote, members, why
):
    monkeypatch.setattr(batching, "cuda_available", lambda: cuda)  # the resolver only
    k, reason = batching.members_of(setting, devices, remote)
    assert k == members and why in reason


@pytest.mark.parametrize("bad", [0, -1, "ten", 2.5, True])
def test_a_bad_group_size_is_one_line(bad):
    with pytest.raises(ConfigError, match=f"parallel_seeds={bad} must be an integer >= 1 or auto"):
        batching.members_of(bad, ["cpu"])


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-machine", "gpu-machine"])
def test_the_plan_line_says_which_batching_and_why(tmp_path, monkeypatch, cuda):
    monkeypatch.setattr(batching, "cuda_available", lambda: cuda)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[
            "profile=paper", "problems=[fmnist_2c2d]", f"results_root={tmp_path}", "device=auto",
        ])  # fmt: skip
        r = build.build(cfg)
    line, plan_text = driver.plan_line(r), driver.dry_run(r)
    if cuda:
        assert r.batching.members == 10 and isinstance(r.launch, Packed)
        assert r.launch.parallel_seeds == 10 and r.launch.jobs("fmnist_2c2d") == 4
        said = "Batching: groups of up to 10 members (auto: CUDA"
        assert "launcher packed (auto: CUDA), jobs_per_device fmnist_2c2d 4." in line
        # The first probe round of each pair is one group: start, up to the cap, below.
        assert plan_text.count("next: probe") == 4 * 10
    else:
        assert r.batching.members == 1 and r.launch == InProcess(1)
        said = "Batching: single runs (auto: CPU, where groups measured 0.55-0.93x"
        assert "launcher basic (auto: CPU)." in line
        assert plan_text.count("next: probe") == 4
    assert said in line and said in plan_text
    assert list(tmp_path.iterdir()) == []


# --- groups: the key, the probes ahead, the launchers ---------------------------------
def test_tasks_group_a_rounds_step_sizes_and_a_pairs_seeds_only(tmp_path):
    base = _spec(tmp_path, "optimizer=msgd")
    probes = [base.derive(lr=lr, seed=100, stop_at=1, role="probe") for lr in (1.0, 0.1, 0.01)]
    reps = [base.derive(lr=0.1, seed=s, role="replicate") for s in range(5)]
    other = _spec(tmp_path, "optimizer=adam").derive(seed=100)
    per_example = _spec(tmp_path, "optimizer=msvag_mb")
    mb = [per_example.derive(seed=s) for s in (0, 1)]
    out = batching.tasks([*probes, other, *reps, *mb], 4)
    assert [([s.seed for s in g], k) for g, k in out] == [
        ([100, 100, 100], 4), ([100], 1), ([0, 1, 2, 3], 4), ([4], 4), ([0], 1), ([1], 1),
    ]  # fmt: skip
    assert [s.optimizer.lr for s in out[0][0]] == [1.0, 0.1, 0.01]
    assert [(len(g), k) for g, k in batching.tasks(reps, 1)] == [(1, 1)] * 5


@pytest.mark.parametrize(
    "known, members, ahead",
    [
        ({}, 1, [1.0]),
        ({}, 4, [1.0, 3.0, 10.0, 0.3]),  # the start, up to the cap, then below
        ({}, 10, [1.0, 3.0, 10.0, 0.3, 0.1, 0.03]),
        ({1.0: "stable"}, 4, [3.0, 10.0]),
        ({1.0: "stable", 3.0: "stable"}, 4, [10.0]),
        ({1.0: "diverged"}, 2, [0.3, 0.1]),
        ({1.0: "diverged", 0.3: "diverged"}, 10, [0.1, 0.03]),
    ],
)  # fmt: skip
def test_probes_ahead_are_the_points_the_walk_may_need(known, members, ahead):
    probe = Probe((10.0, 3.0, 1.0, 0.3, 0.1, 0.03), start=2)
    outcomes = {lr: Outcome(status) for lr, status in known.items()}
    assert driver.probe_ahead(probe, outcomes, members) == ahead
    assert driver.probe_ahead(probe, outcomes, members)[0] == probe.next_lr(outcomes)


def test_only_pairs_that_can_be_grouped_probe_ahead(tmp_path):
    """Per-example gradients cannot be stacked: msvag_mb probes one step size at a time."""
    cfg = _cfg(tmp_path, "parallel_seeds=4", "optimizers=[msgd,msvag_mb]",
               problems="[fmnist_2c2d]")  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        r = build.build(cfg)
    _, batch, *_ = driver.plan(r)
    per_pair = [sum(s.optimizer.name == name for s in batch) for name in ("msgd", "msvag_mb")]
    assert per_pair == [4, 1]


def test_multirun_commands_group_seeds_and_keep_step_sizes_one_job_each(tmp_path):
    base = _spec(tmp_path, "optimizer=msgd")
    reps = [base.derive(lr=lr, seed=s, role="replicate") for lr in (0.1, 0.01) for s in range(3)]
    search = [base.derive(lr=lr, seed=100, role="search") for lr in (1.0, 0.1)]
    launcher = HydraMultirun("joblib", ("python", "train.py"), parallel_seeds=10)
    grouped, singles = launcher.commands(reps + search)
    assert grouped[-3:] == ["optimizer.lr=0.1,0.01", "seeds=[0,1,2]", "parallel_seeds=10"]
    assert singles[-2:] == ["optimizer.lr=1.0,0.1", "seed=100"]
    assert not any(o.startswith("seed=") for o in grouped)
    one = HydraMultirun("joblib", ("python", "train.py")).commands(reps)
    assert len(one) == 1 and one[0][-2:] == ["optimizer.lr=0.1,0.01", "seed=0,1,2"]


def test_packed_workers_are_kept_from_batch_to_batch(tmp_path):
    """Inside ``kept()`` a second batch reuses the first batch's worker process (no new
    process per batch, nor per run); outside it each call has its own pool."""
    launcher = Packed(1, ("cpu",), parallel_seeds=2)
    first = [_spec(tmp_path, f"seed={s}") for s in (0, 1)]
    second = [_spec(tmp_path, f"seed={s}", "optimizer.lr=0.01") for s in (0, 1)]
    with launcher.kept():
        launcher(first)
        launcher(second)

    def pids(specs):
        env = json.loads((specs[0].run_dir().path / "environment.json").read_text())
        return {s["pid"] for s in env["sessions"]}

    assert pids(first) == pids(second) and os.getpid() not in pids(first)
    group = first[0].run_dir().summary()["parallel_group"]
    assert group == [0, 1]
    assert "pool" not in launcher._kept  # shut down when the block ended


# --- a grouped reproduction equals single runs ------------------------------------------
def _outputs(out: Path) -> dict:
    return {
        "files": sorted(p.name for p in out.iterdir()),
        "selection": {
            k: (v["lr"], v["largest_stable"], v["cap_reached"], v["probes"])
            for k, v in json.loads((out / "selection.json").read_text()).items()
            if isinstance(v, dict)
        },  # fmt: skip
        "summary": pd.read_csv(out / "summary.csv"),
        "search": pd.read_csv(out / "search.csv"),
    }


def _sessions(root: Path) -> list[tuple[dict, dict]]:
    out = []
    for env in root.rglob("environment.json"):
        ident = json.loads((env.parent / "identity.json").read_text())
        out += [(ident, s) for s in json.loads(env.read_text())["sessions"]]
    return out


def test_a_grouped_reproduction_selects_and_reports_what_single_runs_do(tmp_path):
    singles = _cfg(tmp_path / "single")
    grouped = _cfg(tmp_path / "group", "parallel_seeds=4")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        single_line, group_line = (driver.plan_line(build.build(c)) for c in (singles, grouped))
        assert "single runs (auto: CPU" in single_line
        assert "groups of up to 4 members (parallel_seeds=4" in group_line
        cli.run(singles)
        cli.run(grouped)
    a, b = _outputs(Path(singles.out_dir)), _outputs(Path(grouped.out_dir))
    assert a["files"] == b["files"] and "fig5.png" in a["files"]
    assert a["selection"] == b["selection"]
    for key in ("summary", "search"):
        x, y = a[key], b[key]
        assert list(x.columns) == list(y.columns) and len(x) == len(y)
        for col in x.columns:
            if x[col].dtype.kind == "f":
                assert x[col].to_numpy() == pytest.approx(y[col].to_numpy(), rel=1e-3, abs=1e-5,
                                                          nan_ok=True), col  # fmt: skip
            else:
                assert list(x[col]) == list(y[col]), col

    # Single runs: no session trained a group. Grouped: every replicate trained with its
    # pair's other seed, and the search rounds' step sizes trained together.
    assert not any("parallel_group" in s for _, s in _sessions(tmp_path / "single"))
    sessions = _sessions(tmp_path / "group")
    reps = [s for ident, s in sessions if ident["seed"] in (0, 1)]
    assert reps and all(s.get("parallel_group") == [0, 1] for s in reps)
    search = [s for ident, s in sessions if ident["seed"] == 100]
    assert sum(len(s.get("parallel_group", [1])) > 1 for s in search) >= 4, search
    rep_summaries = [json.loads(p.read_text()) for p in (tmp_path / "group").rglob("summary.json")
                     if "seed=0-" in str(p) or "seed=1-" in str(p)]  # fmt: skip
    assert rep_summaries and all(s["parallel_group"] == [0, 1] for s in rep_summaries)
