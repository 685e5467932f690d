"""Runs submitted as objects (joblib, submitit) get the RunSpecs the driver planned; the
override path that remains (``plan.override_value``) reads back every value as it was,
quotes, spaces and ``${`` included."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dissecting_adam.protocol import build, submit
from dissecting_adam.protocol.batching import Batching
from dissecting_adam.protocol.launch import HydraMultirun
from dissecting_adam.runner.plan import ConfigError, override_value, plan, to_overrides
from dissecting_adam.runner.spec import RunSpec

CONF = str(Path(__file__).resolve().parents[1] / "conf")
pytestmark = pytest.mark.usefixtures("one_thread")
#: Strings the override grammar or OmegaConf would otherwise read as something else.
AWKWARD = ["it's", "a b/c d", "C:\\dir\\x", "end\\", "q\\'", "${oc.env:HOME}", "a\\${b}",
           "x,y=z", "[1,2]", "null", ""]  # fmt: skip


@pytest.mark.parametrize("text", AWKWARD)
def test_an_override_value_reads_back_as_it_was(text):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"results_root={override_value(text)}",
                                          f"data.root={override_value([text, 3])}"])  # fmt: skip
    assert cfg.results_root == text and list(cfg.data.root) == [text, 3]


def test_a_spec_with_a_quote_and_a_space_in_its_paths_round_trips(tmp_path):
    root = tmp_path / "it's a results root"
    data, mirror = str(tmp_path / "my data"), "/mirror/o'neil ${x}"
    spec = tiny_spec(root, f"data.root={override_value(data)}",
                     f"data.mirror={override_value(mirror)}")  # fmt: skip
    assert spec.results_root == str(root) and spec.problem_config.mirror == mirror
    assert spec.problem_config.data_root == data
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        again = plan(compose("train", overrides=to_overrides(spec)))
    assert again.identity() == spec.identity()  # the budget rule travels resolved
    assert (again.problem_config, again.train, again.results_root, again.logger) == (
        spec.problem_config, spec.train, spec.results_root, spec.logger)  # fmt: skip


HERE = "it's here"


def _reproduce(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[
            "profile=smoke", "problems=[fmnist_2c2d]", "optimizers=[msgd]", "device=cpu",
            f"results_root={override_value(str(tmp_path / HERE))}",
            "overrides=['data.variant=synthetic']", *extra,
        ])  # fmt: skip
        return build.build(cfg, ("python", "train.py"))


def test_build_passes_paths_with_quotes_and_spaces_to_every_run(tmp_path):
    r = _reproduce(tmp_path)
    (spec,) = r.base.values()
    assert spec.results_root == str(tmp_path / HERE) and spec.data_variant == "synthetic"


@pytest.mark.parametrize(
    "launcher, extra, expected",
    [
        ("local_parallel", [], submit.Joblib),
        ("joblib", ["launcher_overrides=['hydra.launcher.n_jobs=3']"], submit.Joblib),
        ("submitit_local", [], submit.Submitit),
        ("slurm", ["launcher_overrides=['hydra.launcher.partition=debug']"], submit.Submitit),
    ],
)
def test_joblib_and_submitit_launchers_take_their_hydra_settings(tmp_path, launcher, extra,
                                                                 expected):  # fmt: skip
    launch = _reproduce(tmp_path, f"launcher={launcher}", *extra).launch
    assert type(launch) is expected and "_target_" not in launch.settings
    if launcher == "local_parallel":
        assert launch.settings["n_jobs"] == 2
    if launcher == "joblib":
        assert launch.settings["n_jobs"] == 3
    if launcher == "slurm":  # conf/hydra/launcher/slurm.yaml, then the override
        assert launch.cluster == "slurm" and launch.settings["partition"] == "debug"
        assert launch.settings["max_num_timeout"] == 3
        params = launch.executor()._executor.parameters
        assert params["partition"] == "debug" and params["time"] == 720
    if expected is submit.Submitit:
        assert launch.folder.startswith(str(tmp_path / HERE / "_sweeps"))


def test_bad_launcher_overrides_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="launcher_overrides=.*cannot be applied to launcher"):
        _reproduce(tmp_path, "launcher=slurm", "launcher_overrides=['hydra.launcher.nope=1']")


def test_other_hydra_launchers_get_command_lines(monkeypatch):
    """A Hydra launcher that takes command lines only (none is installed here)."""
    monkeypatch.setattr(build, "launcher_settings", lambda *_: {"_target_": "x.RayLauncher"})
    cfg = OmegaConf.create({"launcher_overrides": ["hydra.launcher.a=1"], "results_root": "r"})
    ray = Batching(launcher="ray")
    launch = build.launcher(cfg, ray, ("python", "train.py"))
    assert launch == HydraMultirun("ray", ("python", "train.py"), ("hydra.launcher.a=1",))
    with pytest.raises(ConfigError, match="launcher=ray starts scripts/train.py"):
        build.launcher(cfg, ray)


def _specs(root):
    base = tiny_spec(root, "problem=fmnist_2c2d", "train.num_steps=2")
    return [base.derive(seed=s, lr=lr) for s, lr in ((0, 0.1), (1, 0.1), (0, 0.01))]


def _trained_as_planned(specs):
    for spec in specs:
        run = spec.run_dir()
        assert run.is_finished(spec.identity()), run.path
        assert RunSpec.from_dict(yaml.safe_load((run.path / "config.yaml").read_text())) == spec


def test_joblib_workers_train_the_planned_specs(tmp_path):
    specs = _specs(tmp_path / "a b's")
    done = []
    submit.Joblib({"n_jobs": 2}, parallel_seeds=3)(specs, done.append)
    assert sum(done) == len(specs)
    _trained_as_planned(specs)


def test_submitit_jobs_get_the_planned_specs(tmp_path):
    """submitit's local cluster: each job unpickles the groups it was given, equal to the
    planned RunSpecs, and trains them."""
    specs = _specs(tmp_path / "a b's")
    folder = tmp_path / "jobs" / "%j"
    done = []
    submit.Submitit("local", str(folder), {"timeout_min": 10}, 3)(specs, done.append)
    assert sum(done) == len(specs)
    _trained_as_planned(specs)
    submitted = []
    for path in (tmp_path / "jobs").rglob("*_submitted.pkl"):
        with path.open("rb") as f:
            submitted += pickle.load(f).args[0]
    assert sorted(submitted, key=str) == sorted(specs, key=str)


def test_a_failing_run_is_named_after_the_others_finish(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the results root should be")
    good, *_ = _specs(tmp_path / "ok")
    bad = good.derive(results_root=str(blocked), lr=0.3)
    with pytest.raises(submit.RunsFailed, match="1 run\\(s\\) failed: .*blocked"):
        submit.Joblib({"n_jobs": 1})([bad, good])
    _trained_as_planned([good])
