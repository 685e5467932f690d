"""The Fig. 5 pipeline end to end on generated data: search, replicates, outputs, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from dissecting_adam.protocol import driver as rp

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(tmp_path, *extra):
    return compose(
        "reproduce",
        overrides=[
            "profile=smoke",
            "problems=[tolstoi_char_rnn]",
            "optimizers=[msgd,adam]",
            f"results_root={tmp_path}",
            "device=cpu",
            "estimate_steps=1",
            "overrides=['data.variant=synthetic','train.checkpoint_every=null','train.num_steps=3']",
            *extra,
        ],
    )


@pytest.mark.parametrize("profile", ["paper", "preview", "smoke"])
def test_reproduce_configs_compose(profile):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[f"profile={profile}"])
    assert cfg.search.name == profile and cfg.out_dir == f"results/{profile}/fig5"
    for optimizer in cfg.optimizers:
        assert cfg.search.grid.hi[optimizer] > cfg.search.grid.lo


def test_smoke_reproduction_writes_everything_and_resumes(tmp_path, capsys):
    rp._compose_train.cache_clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = _cfg(tmp_path)
        paths = rp.reproduce(cfg)
        out = Path(cfg.out_dir)
        for name in ("fig5.pdf", "fig5.png", "summary.md", "summary.csv", "claims.md",
                     "search.csv", "selection.json", "curves.csv"):  # fmt: skip
            assert (out / name).stat().st_size > 0, name
        assert paths["fig5"].exists()
        selection = json.loads((out / "selection.json").read_text())
        assert set(selection) == {"tolstoi_char_rnn/msgd", "tolstoi_char_rnn/adam"}
        for sel in selection.values():  # the top of the smoke grid: msgd 0.1, adam 0.01
            assert sel["at_grid_top"] == (sel["lr"] in (0.1, 0.01))
        printed = capsys.readouterr().out
        assert "pairs" in printed and "total: ~" in printed  # the run count and estimate
        # Every replicate seed of each selection is in the summary.
        summary = (out / "summary.csv").read_text().splitlines()
        assert len(summary) == 1 + 2 and all(",2,0,0," in row for row in summary[1:])
        assert (out / "claims.md").read_text().startswith("**Generated stand-in data")

        # Interrupt-and-rerun semantics: a second reproduction trains nothing.
        runs_before = sorted(p.parent for p in tmp_path.rglob("summary.json"))
        start = time.perf_counter()
        rp.reproduce(cfg)
        assert sorted(p.parent for p in tmp_path.rglob("summary.json")) == runs_before
        assert time.perf_counter() - start < 60


def test_profiles_never_share_outputs(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        smoke = _cfg(tmp_path)
        paper = _cfg(tmp_path, "profile=paper")
    assert smoke.out_dir != paper.out_dir
    job = rp.Job("tolstoi_char_rnn", "msgd", 0.1, 0)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        assert rp.identity_hash(smoke, job) != rp.identity_hash(paper, job)


def test_metric_modes(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = _cfg(tmp_path)
        job = rp.Job("tolstoi_char_rnn", "msgd", 0.1, 0)
        summary = {"final": {"test_accuracy": 0.25, "train_eval_loss": 1.5}}
        assert rp.metric_of(cfg, job, summary) == 0.25
        loss_cfg = _cfg(tmp_path, "search.metric=train_loss")
        assert rp.metric_of(loss_cfg, job, summary) == 1.5


@pytest.mark.parametrize("profile", ["paper", "preview", "smoke"])
def test_extended_config_composes_with_a_grid_for_every_method(profile):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce_extended", overrides=[f"profile={profile}"])
    assert cfg.out_dir == f"results/{profile}/extended"
    assert {"mssd_va", "mssd_erf", "msvag_mb"} <= set(cfg.optimizers)
    for optimizer in cfg.optimizers:
        assert cfg.search.grid.hi[optimizer] > cfg.search.grid.lo


def test_unsupported_pairs_are_skipped_and_a_missing_grid_is_named(tmp_path, caplog):
    rp._compose_train.cache_clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = _cfg(tmp_path)
        pairs = [("cifar100_wrn404", "msvag_mb"), ("cifar100_wrn404", "msvag"),
                 ("fmnist_2c2d", "msvag_mb")]  # fmt: skip
        assert rp.supported_pairs(cfg, pairs) == pairs[1:]
        assert "skipping cifar100_wrn404/msvag_mb" in caplog.text
        with open_dict(cfg):
            del cfg.search.grid.hi["mssd_erf"]
        with pytest.raises(rp.ConfigError, match="search.grid.hi.mssd_erf"):
            rp.supported_pairs(cfg, [("fmnist_2c2d", "mssd_erf")])


def test_extended_smoke_with_parallel_replicates(tmp_path):
    """§C and §D methods through the whole pipeline; replicates as one seed-parallel run."""
    rp._compose_train.cache_clear()
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
        rp.reproduce(cfg)
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
