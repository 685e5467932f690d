"""The single-run path: records, skip-on-rerun, identities, divergence, bad input, resume,
wandb. Runs use generated data (``data.variant=synthetic``) and a few tiny steps."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import interrupted_at_checkpoint
from hydra import compose, initialize_config_dir

from dissecting_adam.problems import DataError
from dissecting_adam.runner import session
from dissecting_adam.runner.monitor import diverging
from dissecting_adam.runner.plan import ConfigError, plan
from dissecting_adam.runner.store import ResultsError, RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
FILES = [".lock", "identity.json", "config.yaml", "environment.json", "metrics.jsonl"]
FILES.append("summary.json")


def execute(cfg):
    return session.execute(plan(cfg))


def make_cfg(root, *overrides):
    base = [
        "profile=smoke",
        "data.variant=synthetic",
        f"results_root={root}",
        "problem.batch_size=8",
        "problem.eval_batch_size=16",
        "train.progress=off",
        "train.log_every=1",
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[*base, *overrides])


def test_a_run_leaves_a_complete_self_describing_record(tmp_path):
    summary = execute(make_cfg(tmp_path, "optimizer=msvag", "optimizer.lr=0.05", "seed=3"))
    run = Path(summary["run_dir"])
    assert sorted(p.name for p in run.iterdir()) == sorted(FILES)  # checkpoint removed
    assert run.relative_to(tmp_path).parts[:4] == ("smoke", "fmnist_2c2d", "msvag", "lr=0.05")
    assert run.name.startswith("seed=3-")
    ident = json.loads((run / "identity.json").read_text())
    assert ident["optimizer_kwargs"] == {"lr": 0.05, "beta": 0.9}
    env = json.loads((run / "environment.json").read_text())
    assert {"git_commit", "git_dirty", "torch", "python", "host"} <= set(env["environment"])
    (session,) = env["sessions"]
    assert session["status"] == "completed" and session["wall_time_s"] > 0
    assert session["device"] == "cpu" and session["start"] <= session["end"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = sorted({r["step"] for r in rows if r["split"] == "test"})
    assert evals == [0, 5, 10]  # step 0, the interval, the last step
    assert sorted({r["step"] for r in rows if r["split"] == "minibatch"}) == list(range(10))
    assert summary["status"] == "completed" and summary["steps_done"] == 10
    last_test = [r for r in rows if r["split"] == "test"][-1]
    assert summary["final"]["test_accuracy"] == last_test["accuracy"]


def test_rerun_of_a_finished_run_returns_at_once_and_force_reruns(tmp_path):
    cfg = make_cfg(tmp_path)
    first = execute(cfg)
    metrics = Path(first["run_dir"]) / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    again = execute(cfg)
    assert again["skipped"] and again["status"] == "completed"
    assert metrics.stat().st_mtime_ns == stamp
    # Settings outside the identity (checkpoint interval, device, progress) still skip.
    assert execute(make_cfg(tmp_path, "train.checkpoint_every=3", "device=cpu"))["skipped"]
    forced = execute(make_cfg(tmp_path, "force=true"))
    assert not forced["skipped"] and metrics.stat().st_mtime_ns != stamp
    assert forced["final"] == first["final"]  # same config, same seed: same result


@pytest.mark.parametrize(
    "change",
    ["problem.batch_size=4", "optimizer.beta=0.5", "train.num_steps=6", "schedule=piecewise"],
)
def test_a_different_config_never_shares_a_record(tmp_path, change):
    extra = ["schedule.milestones=[2]", "schedule.gamma=0.5"] if "schedule" in change else []
    base = execute(make_cfg(tmp_path, "train.num_steps=4"))
    other = execute(make_cfg(tmp_path, "train.num_steps=4", change, *extra))
    assert not other["skipped"] and other["run_dir"] != base["run_dir"]
    assert RunDir(Path(base["run_dir"])).summary()["final"] == base["final"]


def test_integer_lr_is_the_same_run_as_the_float(tmp_path):
    a = plan(make_cfg(tmp_path, "optimizer.lr=1"))
    b = plan(make_cfg(tmp_path, "optimizer.lr=1.0"))
    assert a.run_dir().path == b.run_dir().path and a.run_dir().path.parent.name == "lr=1"


def test_divergence_is_recorded_with_its_step(tmp_path):
    summary = execute(make_cfg(tmp_path, "optimizer=sgd", "optimizer.lr=1e6", "train.num_steps=10"))
    assert summary["status"] == "diverged"
    step = summary["diverged_step"]
    assert 0 < step < 10 and summary["steps_done"] == step
    rows = RunDir(Path(summary["run_dir"])).read_metrics()
    assert max(r["step"] for r in rows) == step  # nothing after it, nothing back-filled
    assert [r["split"] for r in rows if r["step"] == step] == ["minibatch"]
    assert "loss" in summary["divergence_reason"]
    assert execute(make_cfg(tmp_path, "optimizer=sgd", "optimizer.lr=1e6"))["skipped"]


def test_a_loss_spike_between_two_checks_is_caught(tmp_path, monkeypatch):
    """A blow-up at step 2, checked at step 5 only, is still divergence (the running max)."""
    from dissecting_adam.problems.base import Problem

    original, calls = Problem.training_loss, []

    def spiking(self, model, batch):
        calls.append(1)
        loss = original(self, model, batch)
        return loss * 1e6 if len(calls) == 3 else loss

    monkeypatch.setattr(Problem, "training_loss", spiking)
    cfg = make_cfg(tmp_path, "optimizer=sgd", "optimizer.lr=1e-4", "train.num_steps=10",
                   "train.log_every=5")  # fmt: skip
    summary = execute(cfg)
    assert summary["status"] == "diverged" and summary["diverged_step"] == 5
    assert "> 100 x initial loss" in summary["divergence_reason"]


def test_divergence_rule():
    assert diverging(float("nan"), 2.3, 100.0).startswith("non-finite")
    assert diverging(float("inf"), 2.3, None).startswith("non-finite")
    assert diverging(231.0, 2.3, 100.0) == "mini-batch loss 231 > 100 x initial loss 2.3"
    assert diverging(229.0, 2.3, 100.0) is None
    assert diverging(1e9, 2.3, None) is None  # factor null: non-finite losses only


def test_divergence_factor_must_exceed_one(tmp_path):
    with pytest.raises(ConfigError, match="divergence_factor"):
        plan(make_cfg(tmp_path, "train.divergence_factor=0.5"))


@pytest.mark.parametrize("bad", ["optimizer.lr=-0.1", "optimizer.beta=1.5", "optimizer.lr=0"])
def test_invalid_hyperparameters_fail_before_any_data_is_loaded(tmp_path, bad):
    root = tmp_path / "results"
    missing = tmp_path / "no-mirror"
    cfg = make_cfg(root, "data.variant=real", f"data.mirror={missing}", bad)
    with pytest.raises(ConfigError, match=r"optimizer\.(lr|beta).*Fix"):
        execute(cfg)
    assert not root.exists()
    with pytest.raises(DataError):  # the data would have failed had it been loaded
        execute(make_cfg(root, "data.variant=real", f"data.mirror={missing}"))


def test_unwritable_results_dir_is_a_clear_error_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = make_cfg(blocker / "results", "data.variant=real", f"data.mirror={tmp_path / 'none'}")
    with pytest.raises(ResultsError, match="results_root=") as err:
        execute(cfg)
    assert str(blocker / "results") in str(err.value)
    assert blocker.read_text() == "not a directory"


def test_unwritable_results_dir_leaves_finished_results_alone(tmp_path):
    done = execute(make_cfg(tmp_path, "train.num_steps=2"))
    run = Path(done["run_dir"])
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(ResultsError):
            execute(make_cfg(tmp_path, "train.num_steps=3"))
    finally:
        os.chmod(tmp_path, 0o700)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    """In-process interruption (KeyboardInterrupt after the first checkpoint) on CIFAR-10,
    whose augmentation draws random numbers per batch; the subprocess kill test is in
    test_runner_resume.py."""
    args = ["problem=cifar10_3c3d", "train.num_steps=12", "train.checkpoint_every=4"]
    whole = execute(make_cfg(tmp_path / "whole", *args))

    with interrupted_at_checkpoint(2), pytest.raises(KeyboardInterrupt):
        execute(make_cfg(tmp_path / "cut", *args))
    run = RunDir(Path(whole["run_dir"].replace(str(tmp_path / "whole"), str(tmp_path / "cut"))))
    assert run.checkpoint_file.exists() and run.summary() is None  # nothing reads as complete
    resumed = execute(make_cfg(tmp_path / "cut", *args))
    assert resumed["status"] == "completed" and not resumed["skipped"]
    whole_bytes = (Path(whole["run_dir"]) / "metrics.jsonl").read_bytes()
    assert run.metrics_file.read_bytes() == whole_bytes
    sessions = json.loads(run.environment_file.read_text())["sessions"]
    assert [s["resumed"] for s in sessions] == [False, True]


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    summary = execute(make_cfg(tmp_path / "results", "logger=wandb", "seed=2"))
    assert summary["status"] == "completed"
    (file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "fmnist_2c2d/msvag/lr=0.1"
    assert "seed=2" in run.display_name and run.job_type == "train"
    history = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    history = [h for h in history if "test/loss" in h]  # wandb adds bookkeeping rows
    stored = [r for r in RunDir(Path(summary["run_dir"])).read_metrics() if r["split"] == "test"]
    assert [h["step"] for h in history] == [r["step"] for r in stored]
    assert [h["test/loss"] for h in history] == [r["loss"] for r in stored]
    assert [h["test/accuracy"] for h in history] == [r["accuracy"] for r in stored]


def test_a_broken_wandb_never_stops_training(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, "logger=wandb", "logger.mode=not-a-mode", "train.num_steps=2")
    assert execute(cfg)["status"] == "completed"


def _wandb_records(path):
    """Parse a .wandb file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            chunks.append(buf)
            buf = b""
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def test_a_probe_is_the_first_part_of_its_run_and_the_run_goes_on_from_it(tmp_path):
    """stop_at: the same run (schedule, data, augmentation draws) stopped early, keeping
    its checkpoint; the whole run adopts it and ends byte-identical to one never stopped."""
    args = ["problem=cifar10_3c3d", "train.num_steps=12", "train.eval_every=4",
            "train.checkpoint_every=null"]  # fmt: skip
    whole = RunDir(Path(execute(make_cfg(tmp_path / "whole", *args))["run_dir"]))
    spec = plan(make_cfg(tmp_path / "cut", *args))
    probe = session.execute(spec.derive(stop_at=4))
    assert probe["status"] == "completed" and probe["steps_done"] == 4 and probe["stop_at"] == 4
    probe_run = RunDir(Path(probe["run_dir"]))
    assert probe_run.checkpoint_file.exists() and probe_run.path != spec.run_dir().path
    assert whole.metrics_file.read_bytes().startswith(probe_run.metrics_file.read_bytes())
    assert spec.run_dir().adopt(probe_run)
    assert not spec.run_dir().adopt(probe_run)  # only into a run that has not started
    resumed = session.execute(spec)
    assert resumed["status"] == "completed" and resumed["steps_done"] == 12
    assert spec.run_dir().metrics_file.read_bytes() == whole.metrics_file.read_bytes()
    sessions = json.loads(spec.run_dir().environment_file.read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["adopted", "completed"]
    assert sessions[0]["adopted_from"] == str(probe_run.path) and sessions[1]["resumed"]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="POSIX signals")
def test_a_scheduler_warning_checkpoints_before_the_scheduler_handler_runs(tmp_path, monkeypatch):
    """submitit sends SIGUSR2 before a SLURM time limit; its handler requeues the job and
    exits. The run first checkpoints at the step reached and records ``interrupted``."""
    calls = []

    def submitit_like(signum, frame):  # requeue, then exit as submitit does
        run = RunDir(Path(calls_dir[0]))
        sessions = json.loads(run.environment_file.read_text())["sessions"]
        calls.append((signum, run.checkpoint_file.exists(), sessions[-1]["status"]))
        raise SystemExit(-1)

    class WarnAtStep20:
        def log(self, metrics, step):
            if step >= 20 and not sent:
                sent.append(step)
                os.kill(os.getpid(), signal.SIGUSR2)

        def finish(self, summary):
            pass

    sent, calls_dir = [], []
    monkeypatch.setattr(session, "make_logger", lambda spec, run: calls_dir.append(str(run.path))
                        or WarnAtStep20())  # fmt: skip
    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with pytest.raises(SystemExit):
            execute(make_cfg(tmp_path, "train.num_steps=200", "train.checkpoint_every=1000"))
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [(signal.SIGUSR2, True, "interrupted")]
    run = RunDir(Path(calls_dir[0]))
    saved = torch.load(run.checkpoint_file, weights_only=False)
    assert run.summary() is None and saved["step"] >= 20
