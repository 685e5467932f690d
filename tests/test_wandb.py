"""What reaches wandb, read back from a recording stand-in for the ``wandb`` module: the
resume id, tags and config, mini-batch and evaluation metrics, summaries, one run per
member of a seed-parallel group, and the reproduction's fig5 run with its outputs.
(tests/test_runner.py checks a real offline run file.)"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dissecting_adam.protocol import cli
from dissecting_adam.runner import checkpoint, session
from dissecting_adam.runner.plan import plan, plan_seeds

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = ["profile=smoke", "data.variant=synthetic", "problem.batch_size=8",
        "problem.eval_batch_size=16", "train.progress=off", "train.log_every=1",
        "logger=wandb"]  # fmt: skip


class FakeRun:
    def __init__(self, kwargs):
        self.kwargs, self.logs, self.summary, self.finished = kwargs, [], {}, False

    def log(self, data, step=None):
        self.logs.append((step, data))

    def finish(self, exit_code=0):
        self.finished = True

    def logged(self, key):
        return [(step, d[key]) for step, d in self.logs if key in d]


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(kwargs))
        return module.runs[-1]

    module.init = init
    module.Image = type("Image", (), {"__init__": lambda self, path: setattr(self, "path", path)})
    module.Table = type(
        "Table", (), {"__init__": lambda self, dataframe: setattr(self, "df", dataframe)}
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def planned(root, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[*TINY, f"results_root={root}", *overrides])


def test_a_run_logs_its_metrics_tags_and_summary(tmp_path, fake_wandb):
    done = session.execute(plan(planned(tmp_path, "seed=3", "train.num_steps=4")))
    (run,) = fake_wandb.runs
    kw = run.kwargs
    assert kw["resume"] == "allow" and kw["id"].startswith("fmnist_2c2d-msvag-")
    assert {"smoke", "fmnist_2c2d", "msvag", "single", "lr=0.1", "seed=3"} <= set(kw["tags"])
    assert kw["config"]["role"] == "single" and kw["config"]["seed"] == 3
    assert kw["group"] == "fmnist_2c2d/msvag/lr=0.1"
    assert [s for s, _ in run.logged("train/minibatch_loss")] == [0, 1, 2, 3]
    assert [s for s, _ in run.logged("test/accuracy")] == [0, 2, 4]
    assert run.summary["status"] == "completed" and run.finished
    assert run.summary["final/test_accuracy"] == done["final"]["test_accuracy"]


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb, monkeypatch):
    cfg = planned(tmp_path, "train.num_steps=6", "train.checkpoint_every=2")
    real_save = checkpoint.save

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        session.execute(plan(cfg))
    monkeypatch.setattr(checkpoint, "save", real_save)
    session.execute(plan(cfg))
    first, second = fake_wandb.runs
    assert first.kwargs["id"] == second.kwargs["id"] and first.summary["status"] == "interrupted"
    assert min(s for s, _ in second.logged("train/minibatch_loss")) == 2  # where it resumed
    session.execute(plan(planned(tmp_path, "train.num_steps=6", "force=true")))
    assert fake_wandb.runs[-1].kwargs["id"] == first.kwargs["id"] + "-2"  # a new start


def test_each_member_of_a_seed_parallel_group_is_its_own_wandb_run(tmp_path, fake_wandb):
    cfg = planned(tmp_path, "seeds=[0,1]", "parallel_seeds=2", "train.num_steps=3")
    session.execute_seeds(*plan_seeds(cfg))
    a, b = fake_wandb.runs
    assert a.kwargs["id"] != b.kwargs["id"] and {
        a.kwargs["config"]["seed"],
        b.kwargs["config"]["seed"],
    } == {0, 1}
    for run in (a, b):
        assert len(run.logged("train/minibatch_loss")) == 3 and run.summary["status"] == "completed"


def test_a_reproduction_logs_roles_and_one_fig5_run_with_its_outputs(tmp_path, fake_wandb):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[
            "profile=smoke", "problems=[fmnist_2c2d]", "optimizers=[msgd,adam]",
            f"results_root={tmp_path}", "device=cpu", "estimate=false", "logger=wandb",
            "search.replicate_seeds=[0,1]",
            "overrides=['data.variant=synthetic','train.num_steps=2','problem.batch_size=4',"
            "'problem.eval_batch_size=16']",
        ])  # fmt: skip
        cli.run(cfg)
    roles = {
        r.kwargs["config"]["role"] for r in fake_wandb.runs if r.kwargs.get("job_type") == "train"
    }
    # smoke: a probe is a whole run, which then serves as the search run at its step size
    assert "replicate" in roles and "probe" in roles and roles <= {"probe", "search", "replicate"}
    (fig5,) = [r for r in fake_wandb.runs if r.kwargs.get("job_type") == "fig5"]
    assert (
        fig5.kwargs["config"]["profile"] == "smoke"
        and "smoke profile" in fig5.kwargs["config"]["note"]
    )
    assert set(fig5.kwargs["config"]["selected_lr"]) == {"fmnist_2c2d/msgd", "fmnist_2c2d/adam"}
    logged = {k: v for _, d in fig5.logs for k, v in d.items()}
    assert Path(logged["fig5"].path).suffix == ".png"
    assert {"summary", "search", "selection"} <= set(logged)
    assert set(logged["summary"].df["optimizer"]) == {"msgd", "adam"} and fig5.finished
