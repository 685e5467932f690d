"""The Fig. 5 pipeline end to end on generated data: search, replicates, outputs, resume,
the dry run, and a toy optimizer added through the registry alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from dissecting_adam import methods
from dissecting_adam.protocol import build, cli, driver
from dissecting_adam.protocol.search import SearchSettings
from dissecting_adam.protocol.settings import search_settings
from dissecting_adam.runner.plan import ConfigError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(tmp_path, *extra, problems="[tolstoi_char_rnn]", optimizers="[msgd,adam]"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "reproduce",
            overrides=[
                "profile=smoke",
                f"problems={problems}",
                f"optimizers={optimizers}",
                f"results_root={tmp_path}",
                "device=cpu",
                "estimate_steps=1",
                "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
                "'train.num_steps=3']",
                *extra,
            ],
        )


def _run(cfg):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return cli.run(cfg)


def _build(cfg):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return build.build(cfg)


@pytest.mark.parametrize("profile", ["paper", "preview", "smoke"])
@pytest.mark.parametrize("config", ["reproduce", "reproduce_extended"])
def test_reproduce_configs_compose_with_a_grid_for_every_method(profile, config):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config, overrides=[f"profile={profile}"])
    assert cfg.search.name == profile and cfg.claims.name == "paper"
    assert cfg.out_dir == f"results/{profile}/" + ("fig5" if config == "reproduce" else "extended")
    search = search_settings(cfg.search)
    for optimizer in cfg.optimizers:
        assert search.grid_top(methods.get(optimizer)) > search.lo


def test_smoke_reproduction_writes_everything_and_resumes(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    paths = _run(cfg)
    out = Path(cfg.out_dir)
    for name in ("fig5.pdf", "fig5.png", "summary.md", "summary.csv", "claims.md", "claims.csv",
                 "search.csv", "selection.json", "curves.csv", "replicates.parquet"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert paths["fig5"].exists()
    selection = json.loads((out / "selection.json").read_text())
    assert selection.pop("note").startswith("Generated stand-in data")
    assert set(selection) == {"tolstoi_char_rnn/msgd", "tolstoi_char_rnn/adam"}
    for sel in selection.values():  # the cap: one grid point above the start (0.1, 0.01)
        assert sel["cap_reached"] == (sel["largest_stable"] in (1.0, 0.1))
        assert sel["lr"] <= sel["largest_stable"] and set(sel["probes"].values()) <= {
            "stable", "diverged", "no progress"}  # fmt: skip
    printed = capsys.readouterr().out
    assert "pairs" in printed and "total: ~" in printed  # the run count and estimate
    lines = printed.splitlines()  # the plan first, before the estimate; then the progress
    assert lines[1].startswith("Plan: 0 search run(s) and 0 replicate(s) in the store")
    assert printed.index("Plan:") < printed.index("total: ~") < printed.index("search round 1:")
    assert "replicates: 4 run(s)" in printed and "ETA for the whole reproduction ~" in printed
    # Every replicate seed of each selection is in the summary.
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 and all(",2,0,0," in row for row in summary[1:])
    assert (out / "claims.md").read_text().startswith("**Generated stand-in data")
    reps = pd.read_parquet(out / "replicates.parquet")
    assert sorted(reps.groupby("optimizer")["seed"].unique().map(list).sum()) == [0, 0, 1, 1]
    search = pd.read_csv(out / "search.csv")  # the search seed is none of the replicates'
    assert len(search) >= 2

    # Interrupt-and-rerun semantics: a second reproduction trains nothing.
    runs_before = sorted(p.parent for p in tmp_path.rglob("summary.json"))
    start = time.perf_counter()
    _run(cfg)
    assert sorted(p.parent for p in tmp_path.rglob("summary.json")) == runs_before
    assert time.perf_counter() - start < 60

    # The dry run of a finished reproduction: everything is in the store.
    capsys.readouterr()
    _run(_cfg(tmp_path, "dry_run=true"))
    plan = capsys.readouterr().out
    assert "Next round: 0 run(s); replicates to run: 0" in plan and "planned in" in plan
    assert "selected lr=" in plan


def test_dry_run_of_the_paper_profile_prints_the_plan_fast_and_writes_nothing(tmp_path, capsys):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[f"results_root={tmp_path}", "dry_run=true"])
        start = time.perf_counter()
        cli.run(cfg)
        took = time.perf_counter() - start
    plan = capsys.readouterr().out
    assert "16 (problem, optimizer) pairs" in plan
    for problem in ("fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"):
        assert f"{problem}/msvag: 0 search run(s) in the store" in plan
    # Each pair's first probe: its start on the grid, the first 10% of a paper run, with
    # the search seed (outside the replicate seeds 0-9).
    assert "next: probe lr=10 seed=100 (600 steps)" in plan  # fmnist_2c2d, M-SGD
    assert "next: probe lr=1 seed=100 (8000 steps)" in plan  # cifar100_wrn404, Adam
    assert "Next round: 16 run(s)" in plan and "ms/step" not in plan  # no estimate
    assert took < 60, took  # seconds on a CPU (most of it composing 16 configs); not a benchmark
    assert list(tmp_path.iterdir()) == []


def test_profiles_never_share_runs(tmp_path):
    smoke, paper = _build(_cfg(tmp_path)), _build(_cfg(tmp_path, "profile=paper"))
    assert smoke.out_dir != paper.out_dir
    pair = ("tolstoi_char_rnn", "msgd")
    a, b = smoke.search_run(pair, 0.1), paper.search_run(pair, 0.1)
    assert a.identity() != b.identity() and a.run_dir().path != b.run_dir().path


def test_runs_derived_from_a_base_spec_are_the_runs_a_config_would_plan(tmp_path):
    """The driver's derive(lr, seed, budget) equals composing that run's config anew."""
    from dissecting_adam.runner.plan import plan

    r = _build(_cfg(tmp_path))
    probe = r.probe(("tolstoi_char_rnn", "adam"), 0.003)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[
            "problem=tolstoi_char_rnn", "optimizer=adam", "profile=smoke", "device=cpu",
            f"results_root={tmp_path}", "train.progress=lines", "data.variant=synthetic",
            "train.checkpoint_every=null", "train.num_steps=3", "optimizer.lr=0.003", "seed=100",
            "role=probe",
        ])  # fmt: skip
    assert probe == plan(cfg)


def test_metric_modes(tmp_path):
    spec = _build(_cfg(tmp_path)).search_run(("tolstoi_char_rnn", "msgd"), 0.1)
    summary = {"final": {"test_accuracy": 0.25, "train_eval_loss": 1.5}}
    assert driver.metric_of(spec, summary, SearchSettings("smoke")) == 0.25
    loss = SearchSettings("smoke", metric="train_loss")
    assert driver.metric_of(spec, summary, loss) == 1.5


def test_unsupported_pairs_are_skipped_and_a_missing_grid_is_named(tmp_path, caplog):
    cfg = _cfg(tmp_path, problems="[cifar100_wrn404,fmnist_2c2d]", optimizers="[msvag_mb,msvag]")
    r = _build(cfg)
    assert r.pairs == [("cifar100_wrn404", "msvag"), ("fmnist_2c2d", "msvag_mb"),
                       ("fmnist_2c2d", "msvag")]  # fmt: skip
    assert "skipping cifar100_wrn404/msvag_mb" in caplog.text
    methods.register(methods.Method("nogrid", "torch.optim.SGD", "No grid", "#000", "non_sign"))
    try:
        with pytest.raises(ConfigError, match="no grid start for optimizer=nogrid"):
            _build(_cfg(tmp_path, optimizers="[nogrid]"))
    finally:
        methods.unregister("nogrid")


def test_extended_smoke_with_parallel_replicates(tmp_path):
    """§C and §D methods through the whole pipeline; replicates as one seed-parallel run."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "reproduce_extended",
            overrides=[
                "profile=smoke", "problems=[fmnist_2c2d]", "optimizers=[mssd_va,msvag_mb]",
                f"results_root={tmp_path}", "device=cpu", "estimate_steps=1",
                "parallel_seeds=2", "search.replicate_seeds=[0,1,2]",  # seed 0: the search's
                "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
                "'train.num_steps=2','problem.batch_size=4','problem.eval_batch_size=16']",
            ],
        )  # fmt: skip
        cli.run(cfg)
    out = Path(cfg.out_dir)
    assert out == tmp_path / "smoke" / "extended"
    summary = (out / "summary.csv").read_text()
    assert "mssd_va" in summary and "msvag_mb" in summary
    assert (out / "fig5.png").stat().st_size > 0
    # mssd_va's replicates ran as one parallel group; msvag_mb (per-example) one by one.
    groups = {}
    for env in tmp_path.rglob("environment.json"):
        ident = json.loads((env.parent / "identity.json").read_text())
        sessions = json.loads(env.read_text())["sessions"]
        groups.setdefault(ident["optimizer"], set()).add(sessions[-1].get("parallel_seeds", 1))
    assert groups["mssd_va"] >= {2} and groups["msvag_mb"] == {1}


class Toy(torch.optim.Optimizer):
    """Sign descent with a fixed step, element-wise: the smallest complete optimizer."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


def test_a_toy_optimizer_joins_the_whole_pipeline_through_the_registry(tmp_path):
    """Its module (here, this test file), one registry entry and its Hydra config file."""
    conf = tmp_path / "extra_conf" / "optimizer"
    conf.mkdir(parents=True)
    (conf / "toy.yaml").write_text("name: toy\nlr: 0.01\n")
    methods.register(methods.Method("toy", f"{__name__}.Toy", "Toy", "#123456", "sign",
                                    {"smoke": 0.01}))  # fmt: skip
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("reproduce", overrides=[
                "profile=smoke", "problems=[fmnist_2c2d]", "optimizers=[msgd,toy]",
                f"results_root={tmp_path / 'results'}", "device=cpu", "estimate=false",
                "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
                "'train.num_steps=2','problem.batch_size=4','problem.eval_batch_size=16',"
                f"'hydra.searchpath=[file://{tmp_path / 'extra_conf'}]']",
            ])  # fmt: skip
            cli.run(cfg)
    finally:
        methods.unregister("toy")
    out = Path(cfg.out_dir)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["optimizer"]) == {"msgd", "toy"} and (summary["seeds"] == 2).all()
    assert json.loads((out / "selection.json").read_text())["fmnist_2c2d/toy"]["lr"] > 0
    claims = pd.read_csv(out / "claims.csv") if (out / "claims.csv").exists() else None
    assert claims is None or "toy" not in set(claims["a"]) | set(claims["b"])
    assert (out / "fig5.png").stat().st_size > 0


def test_probes_are_prefixes_and_their_runs_go_on_from_them(tmp_path):
    """probe_fraction < 1: probes stop early (stop_at) with the whole run's schedule, and
    the search run at a probed step size adopts the probe's checkpoint."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[
            "profile=smoke", "problems=[fmnist_2c2d]", "optimizers=[adam]",
            f"results_root={tmp_path}", "device=cpu", "estimate=false",
            "search.probe_fraction=0.5", "search.replicate_seeds=[0]",
            "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
            "'train.num_steps=4','problem.batch_size=4','problem.eval_batch_size=16']",
        ])  # fmt: skip
        cli.run(cfg)
    idents = [json.loads(p.read_text()) for p in tmp_path.rglob("identity.json")]
    probes = [i for i in idents if i["train"].get("stop_at") is not None]
    assert probes and all(i["train"]["stop_at"] == 2 and i["seed"] == 100 for i in probes)
    adopted = []
    for env in tmp_path.rglob("environment.json"):
        sessions = json.loads(env.read_text())["sessions"]
        adopted += [s for s in sessions if s["status"] == "adopted"]
    assert adopted, "no search run started from its probe"
    selection = json.loads((Path(cfg.out_dir) / "selection.json").read_text())
    assert selection["fmnist_2c2d/adam"]["probes"]
