"""One training loop for K members on every problem (runner level): a group of two equals
its single runs on all four problems; groups checkpoint and resume (SIGTERM: byte-identical
to an uninterrupted group; a kill between two members' checkpoints: the members at different
steps train as separate groups); a member's checkpoint resumes as a single run and single
runs' checkpoints resume as a group. Generated data, a few steps."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
from conftest import interrupted_at_checkpoint
from hydra import compose, initialize_config_dir

from dissecting_adam.runner.plan import plan_seeds
from dissecting_adam.runner.session import execute_seeds
from dissecting_adam.runner.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
SIZES = {  # small enough for the fast suite; an LSTM epoch of a few batches
    "fmnist_2c2d": ["problem.batch_size=8"],
    "cifar10_3c3d": ["problem.batch_size=8"],
    "cifar100_wrn404": ["problem.batch_size=8", "optimizer.lr=0.01"],
    "tolstoi_char_rnn": ["problem.batch_size=4", "+problem.seq_length=10"],
}
OPTIMIZER = {"fmnist_2c2d": "msvag", "cifar10_3c3d": "mssd", "cifar100_wrn404": "msgd",
             "tolstoi_char_rnn": "adam"}  # fmt: skip


def run_all(root, problem, *overrides):
    base = ["profile=smoke", "data.variant=synthetic", f"results_root={root}",
            "problem.eval_batch_size=16", "train.progress=off", "train.log_every=1",
            "train.num_steps=6", "train.eval_every=3", "train.checkpoint_every=2",
            f"problem={problem}", f"optimizer={OPTIMIZER[problem]}", *SIZES[problem]]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[*base, *overrides])
    return execute_seeds(*plan_seeds(cfg))


def metrics(summary) -> list[dict]:
    return RunDir(Path(summary["run_dir"])).read_metrics()


def assert_close_runs(a: dict, b: dict, rel: float) -> None:
    ra, rb = metrics(a), metrics(b)
    assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=rel, abs=1e-6), (x, y)


@pytest.mark.parametrize("problem", list(SIZES))
def test_every_problem_trains_as_a_group_of_two_equal_to_its_single_runs(tmp_path, problem):
    group = run_all(tmp_path / "group", problem, "seeds=[0,1]", "parallel_seeds=2")
    singles = run_all(tmp_path / "single", problem, "seeds=[0,1]")
    for g, s in zip(group, singles, strict=True):
        assert g["status"] == s["status"] == "completed" and g["parallel_group"] == [0, 1]
        # float32: batched kernels sum in another order (max-pool and ReLU choices may flip)
        assert_close_runs(g, s, rel=2e-3)
        gp, sp = Path(g["run_dir"]), Path(s["run_dir"])
        assert gp.relative_to(tmp_path / "group") == sp.relative_to(tmp_path / "single")
        assert sorted(p.name for p in gp.iterdir()) == sorted(p.name for p in sp.iterdir())
    assert metrics(group[0]) != metrics(group[1])  # the members are different runs


def rerun_resumes(caplog, *args, step: int) -> list[dict]:
    """``run_all(*args)``, checking that it resumed from the checkpoints at ``step`` (a run
    that started over would end with the same metrics)."""
    with caplog.at_level(logging.INFO, logger="dissecting_adam.runner.loop"):
        done = run_all(*args)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed ")]
    assert resumed and all(m.endswith(f"at step {step}") for m in resumed), resumed
    for summary in done:
        assert not list(Path(summary["run_dir"]).glob("checkpoint.pt.corrupt-*"))
    return done


def _sigterm_at(step: int, monkeypatch) -> None:
    """SIGTERM to this process while the loss of training step ``step`` is computed."""
    from dissecting_adam.runner import engine

    original, calls = engine.Stacked.losses, []

    def losses(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine.Stacked, "losses", losses)


@pytest.mark.parametrize("problem", ["fmnist_2c2d", "tolstoi_char_rnn"])
def test_a_group_stopped_by_sigterm_resumes_byte_identically(
    tmp_path, problem, monkeypatch, caplog
):
    from dissecting_adam.runner.loop import Interrupted

    whole = run_all(tmp_path / "whole", problem, "seeds=[0,1]", "parallel_seeds=2")
    args = (tmp_path / "cut", problem, "seeds=[0,1]", "parallel_seeds=2")
    _sigterm_at(3, monkeypatch)
    with pytest.raises(Interrupted, match="stopped at step 4"):
        run_all(*args)
    monkeypatch.undo()
    done = rerun_resumes(caplog, *args, step=4)
    for a, b in zip(done, whole, strict=True):
        run = Path(a["run_dir"])
        assert (run / "metrics.jsonl").read_bytes() == Path(
            b["run_dir"], "metrics.jsonl"
        ).read_bytes()
        sessions = json.loads((run / "environment.json").read_text())["sessions"]
        assert [s["status"] for s in sessions] == ["interrupted", "completed"]
        assert sessions[-1]["resumed"] and sessions[-1]["parallel_group"] == [0, 1]


def test_a_group_killed_after_a_checkpoint_resumes_byte_identically(tmp_path, caplog):
    """kill -9 right after both members saved step 4 (rows written later are dropped)."""
    whole = run_all(tmp_path / "whole", "cifar10_3c3d", "seeds=[0,1]", "parallel_seeds=2")
    args = (tmp_path / "cut", "cifar10_3c3d", "seeds=[0,1]", "parallel_seeds=2")
    with interrupted_at_checkpoint(4), pytest.raises(KeyboardInterrupt):
        run_all(*args)
    for a, b in zip(rerun_resumes(caplog, *args, step=4), whole, strict=True):
        expected = Path(b["run_dir"], "metrics.jsonl").read_bytes()
        assert Path(a["run_dir"], "metrics.jsonl").read_bytes() == expected
        assert a["parallel_group"] == [0, 1]


def test_members_killed_between_their_checkpoints_resume_in_separate_groups(tmp_path):
    """kill -9 after member 0 saved step 4 and before member 1 did: member 0 resumes at 4,
    member 1 at 2, each as its own group; both end equal to the uninterrupted group."""
    whole = run_all(tmp_path / "whole", "fmnist_2c2d", "seeds=[0,1]", "parallel_seeds=2")
    args = (tmp_path / "cut", "fmnist_2c2d", "seeds=[0,1]", "parallel_seeds=2")
    with interrupted_at_checkpoint(3), pytest.raises(KeyboardInterrupt):
        run_all(*args)
    done = run_all(*args)
    for a, b in zip(done, whole, strict=True):
        assert a["status"] == "completed" and "parallel_group" not in a
        assert_close_runs(a, b, rel=2e-3)


def test_a_member_resumes_as_a_single_run_and_single_runs_as_a_group(tmp_path, caplog):
    whole = run_all(tmp_path / "whole", "tolstoi_char_rnn", "seeds=[0,1]")
    # Member checkpoints (a group stopped after step 2) -> single runs.
    args = (tmp_path / "a", "tolstoi_char_rnn", "seeds=[0,1]")
    with interrupted_at_checkpoint(2), pytest.raises(KeyboardInterrupt):
        run_all(*args, "parallel_seeds=2")
    for a, b in zip(rerun_resumes(caplog, *args, step=2), whole, strict=True):
        assert "parallel_group" not in a
        assert_close_runs(a, b, rel=1e-4)
    # Single runs' checkpoints (both stopped after step 2) -> one group.
    args = (tmp_path / "b", "tolstoi_char_rnn", "seeds=[0,1]")
    for seed in (0, 1):
        with interrupted_at_checkpoint(1), pytest.raises(KeyboardInterrupt):
            run_all(tmp_path / "b", "tolstoi_char_rnn", f"seed={seed}")
    caplog.clear()
    for a, b in zip(rerun_resumes(caplog, *args, "parallel_seeds=2", step=2), whole, strict=True):
        assert a["parallel_group"] == [0, 1]
        assert_close_runs(a, b, rel=1e-4)
        sessions = json.loads(Path(a["run_dir"], "environment.json").read_text())["sessions"]
        assert sessions[-1]["resumed"]


def test_members_of_other_step_sizes_and_a_diverged_member_of_an_lstm_group(tmp_path):
    """A group of two step sizes (one far too large): that member diverges and stops alone,
    the other equals its single run; both are recorded as single runs are."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[
            "profile=smoke", "data.variant=synthetic", f"results_root={tmp_path / 'g'}",
            "problem=tolstoi_char_rnn", "optimizer=msgd", "problem.batch_size=4",
            "+problem.seq_length=10", "train.progress=off", "train.log_every=1",
            "train.num_steps=6", "train.eval_every=3", "problem.eval_batch_size=16",
            "train.divergence_factor=3"])  # fmt: skip
    base = plan_seeds(cfg)[0][0]
    specs = [base.derive(lr=0.3), base.derive(lr=3e5)]
    group = execute_seeds(specs, 2)
    single = execute_seeds([s.derive(results_root=str(tmp_path / "s")) for s in specs])
    assert [g["status"] for g in group] == [s["status"] for s in single]
    assert group[1]["status"] == "diverged" and group[0]["status"] == "completed"
    assert group[1]["diverged_step"] == single[1]["diverged_step"]
    assert_close_runs(group[0], single[0], rel=1e-4)
    assert RunDir(Path(group[1]["run_dir"])).summary()["status"] == "diverged"
    assert Path(group[0]["run_dir"]).parent.name == "lr=0.3"


@pytest.mark.cuda
@pytest.mark.parametrize("problem", list(SIZES))
def test_on_cuda_every_problem_trains_as_a_group_equal_to_its_single_runs(tmp_path, problem):
    """The GPU path of groups (cuDNN, TF32 off for the comparison, CUDA RNG streams)."""
    extra = ["device=cuda", "allow_tf32=false", "seeds=[0,1]"]
    group = run_all(tmp_path / "group", problem, *extra, "parallel_seeds=2")
    singles = run_all(tmp_path / "single", problem, *extra)
    for g, s in zip(group, singles, strict=True):
        assert g["status"] == s["status"] == "completed" and g["parallel_group"] == [0, 1]
        assert_close_runs(g, s, rel=2e-3)


@pytest.mark.cuda
def test_on_cuda_a_group_resumes_after_sigterm_like_an_uninterrupted_one(tmp_path, monkeypatch):
    from dissecting_adam.runner.loop import Interrupted

    args = ("tolstoi_char_rnn", "seeds=[0,1]", "parallel_seeds=2", "device=cuda",
            "deterministic=true")  # fmt: skip
    whole = run_all(tmp_path / "whole", *args)
    _sigterm_at(3, monkeypatch)
    with pytest.raises(Interrupted):
        run_all(tmp_path / "cut", *args)
    monkeypatch.undo()
    for a, b in zip(run_all(tmp_path / "cut", *args), whole, strict=True):
        assert_close_runs(a, b, rel=1e-6)


@pytest.mark.parametrize("problem", ["cifar10_3c3d", "tolstoi_char_rnn"])
def test_checkpoints_keep_the_data_position_and_older_ones_still_resume(tmp_path, problem, caplog):
    """A checkpoint holds its batches' position (resume in constant time); one written
    before positions were saved (no "data") resumes by drawing the batches again."""
    import torch

    whole = run_all(tmp_path / "whole", problem)[0]
    expected = Path(whole["run_dir"], "metrics.jsonl").read_bytes()
    for variant in ("position", "older"):
        root = tmp_path / variant
        with interrupted_at_checkpoint(2), pytest.raises(KeyboardInterrupt):
            run_all(root, problem)
        (path,) = root.rglob("checkpoint.pt")
        payload = torch.load(path, weights_only=False)
        assert payload["data"]["step"] == payload["step"] == 4
        if variant == "older":
            del payload["data"]
            torch.save(payload, path)
        caplog.clear()
        done = rerun_resumes(caplog, root, problem, step=4)[0]
        assert Path(done["run_dir"], "metrics.jsonl").read_bytes() == expected, variant
