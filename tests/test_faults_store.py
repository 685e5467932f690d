"""Fault injection on the runner and the results store: a crash at every write, corrupt and
truncated files, two copies of one run, bad devices, permissions, leftovers, non-finite
numbers, and an interrupted reproduction. Each case names the failure it reproduces."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, tiny_spec

from dissecting_adam.runner import checkpoint, files, session, store
from dissecting_adam.runner import table as store_table
from dissecting_adam.runner.plan import ConfigError
from dissecting_adam.runner.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [*TINY_RUN, "train.num_steps=4"]


def spec_for(root, *overrides):
    return tiny_spec(root, "train.num_steps=4", *overrides)


def strict(text: str):
    """JSON as the standard defines it: NaN and Infinity literals are errors."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


class Crash(BaseException):
    """A process dying at this point (nothing catches it, no later write happens)."""


def test_a_crash_at_any_write_loses_nothing_and_the_rerun_matches(tmp_path, monkeypatch):
    """Kill at each write point: every atomic file write, metrics append and checkpoint."""
    reference = session.execute(spec_for(tmp_path / "ref"))
    expected = RunDir(Path(reference["run_dir"])).metrics_file.read_bytes()
    points = {"write": files.atomic_write, "save": checkpoint.save,
              "append": store.RunDir.append_metrics}  # fmt: skip
    calls, state = [], {"crash_at": None}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            if state["crash_at"] is not None and len(calls) >= state["crash_at"]:
                raise Crash(f"{name} #{len(calls)}")
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(files, "atomic_write", counting("write", points["write"]))
    monkeypatch.setattr(checkpoint, "save", counting("save", points["save"]))
    monkeypatch.setattr(store.RunDir, "append_metrics", counting("append", points["append"]))
    session.execute(spec_for(tmp_path / "count"))
    total = len(calls)
    assert {"write", "save", "append"} <= set(calls) and total > 10
    for n in range(1, total + 1):
        root = tmp_path / f"crash{n}"
        calls.clear()
        state["crash_at"] = n
        with pytest.raises(Crash):
            session.execute(spec_for(root))
        state["crash_at"] = None
        rerun = session.execute(spec_for(root))
        assert rerun["status"] == "completed", n
        run = RunDir(Path(rerun["run_dir"]))
        assert run.metrics_file.read_bytes() == expected, f"crash at write {n}"
        assert not list(run.path.glob(".*.tmp")), "leftover temp files"
        assert not run.checkpoint_file.exists() and not run.previous_checkpoint_file.exists()


def test_one_corrupt_record_is_named_skipped_moved_aside_and_redone(tmp_path, capsys):
    """Case 1: '{oops' in one run's summary.json broke collect, train and reproduce."""
    good = session.execute(spec_for(tmp_path, "seed=1"))
    bad = session.execute(spec_for(tmp_path, "seed=2"))
    bad_summary = Path(bad["run_dir"]) / "summary.json"
    bad_summary.write_text("{oops")
    table = store_table.collect(tmp_path / "smoke")
    assert set(table["seed"]) == {1}
    ((path, reason),) = table.attrs["skipped"]
    assert path == str(bad_summary) and "not valid JSON" in reason
    from dissecting_adam.protocol.commands import collect_runs

    assert collect_runs(tmp_path, "smoke") == 0
    assert "skipped 1 unreadable record(s)" in capsys.readouterr().err
    assert session.execute(spec_for(tmp_path, "seed=1"))["skipped"]  # others unaffected
    redone = session.execute(spec_for(tmp_path, "seed=2"))  # redone, the bad file kept
    assert not redone["skipped"] and redone["status"] == "completed"
    assert list(Path(bad["run_dir"]).glob("summary.json.corrupt-*"))
    assert good["final"] == session.execute(spec_for(tmp_path, "seed=1"))["final"]
    # An unreadable identity takes the folder aside: nothing in it can be trusted.
    (Path(good["run_dir"]) / "identity.json").write_text("")
    again = session.execute(spec_for(tmp_path, "seed=1"))
    assert not again["skipped"] and list(Path(good["run_dir"]).parent.glob("*.corrupt-*"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "both"])
def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_goes_on(tmp_path, damage):
    """Case 5: a truncated checkpoint.pt failed every rerun with torch's zip error."""
    spec = spec_for(tmp_path, "train.num_steps=8")
    whole = session.execute(spec_for(tmp_path / "whole", "train.num_steps=8"))
    run = spec.run_dir()
    real_save, saves = checkpoint.save, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(kwargs["step"])
        if len(saves) == 3:
            raise Crash

    checkpoint.save = save_then_die
    try:
        with pytest.raises(Crash):
            session.execute(spec)
    finally:
        checkpoint.save = real_save
    assert run.checkpoint_file.exists() and run.previous_checkpoint_file.exists()
    data = run.checkpoint_file.read_bytes()
    run.checkpoint_file.write_bytes(data[: len(data) // 3] if damage != "garbage" else b"x")
    if damage == "both":
        run.previous_checkpoint_file.write_bytes(b"")
    done = session.execute(spec)
    assert done["status"] == "completed" and done["steps_done"] == 8
    assert run.metrics_file.read_bytes() == (Path(whole["run_dir"]) / "metrics.jsonl").read_bytes()
    assert list(run.path.glob("checkpoint.pt.corrupt-*"))


def test_two_copies_of_one_run_never_write_together(tmp_path):
    """Case 2: both copies exited 0 as completed and metrics.jsonl held rows twice."""
    args = [*TINY, f"results_root={tmp_path}", "train.num_steps=60", "train.eval_every=30"]
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("metrics.jsonl")) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        out = first.communicate(timeout=120)[0].decode()
    assert first.returncode == 0, out[-2000:]
    assert "completed, final test accuracy " in out and " steps in " in out  # train.py's line
    if second.returncode == 0:  # the first had finished already: the second found it
        assert "already completed" in second.stdout + second.stderr
    else:
        assert second.returncode == 1
        assert "being trained by another process" in second.stdout + second.stderr
        assert '"pid"' in second.stdout + second.stderr and "Traceback" not in second.stderr
    (metrics,) = tmp_path.rglob("metrics.jsonl")
    rows = [strict(line) for line in metrics.read_text().splitlines()]
    assert len([r for r in rows if r["split"] == "minibatch"]) == 60  # once each


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    spec = spec_for(tmp_path)
    run = spec.run_dir()
    run.path.mkdir(parents=True)
    (run.path / ".lock").write_text('{"host": "gone", "pid": 999999}')
    assert session.execute(spec)["status"] == "completed"
    with files.RunLock(run.path), pytest.raises(files.RunLocked, match="another process"):
        with files.RunLock(run.path):
            pass


def test_files_get_the_mode_of_the_umask(tmp_path):
    """Case 6: every record file and runs.parquet was 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        done = session.execute(spec_for(tmp_path, "train.keep_checkpoint=true"))
        table = store_table.collect(tmp_path / "smoke")
        store_table.write_table(table, tmp_path / "runs.parquet")
    finally:
        os.umask(old)
    paths = [*Path(done["run_dir"]).iterdir(), tmp_path / "runs.parquet"]
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o644, path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_is_one_clear_line_before_any_folder(tmp_path):
    """Case 8: a full traceback and a run folder without a summary."""
    with pytest.raises(ConfigError, match="no usable CUDA device.*device=cpu"):
        session.execute(spec_for(tmp_path / "r", "device=cuda"))
    assert not (tmp_path / "r").exists()
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "device=cuda",
           f"results_root={tmp_path / 'r'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "no usable CUDA device" in done.stderr + done.stdout
    assert not (tmp_path / "r").exists()


def test_leftovers_go_and_environment_is_recorded_before_the_first_step(tmp_path, monkeypatch):
    """Case 9: temp files were never cleaned; environment.json was lost in killed runs."""
    from dissecting_adam.problems.base import Problem

    spec = spec_for(tmp_path)
    run = spec.run_dir()
    run.path.mkdir(parents=True)
    (run.path / ".checkpoint.pt.abc.tmp").write_bytes(b"\0" * 1000)
    (run.path / ".summary.json.def.tmp").write_text("{")
    original, seen = Problem.training_loss, []

    def first_step(self, model, batch):
        if not seen:
            env = json.loads(run.environment_file.read_text())
            seen.append(env["sessions"][-1]["status"])
            assert {"torch", "host", "git_commit"} <= set(env["environment"])
        return original(self, model, batch)

    monkeypatch.setattr(Problem, "training_loss", first_step)
    session.execute(spec)
    assert seen == ["running"]
    assert not list(run.path.glob(".*.tmp"))


def test_diverged_records_are_strict_json_and_read_back(tmp_path):
    """Case 10: summary.json of a diverged run contained NaN."""
    args = ["optimizer=sgd", "optimizer.lr=1e8", "train.num_steps=6"]
    args.append("train.divergence_factor=null")
    done = session.execute(spec_for(tmp_path, *args))
    assert done["status"] == "diverged"
    run = RunDir(Path(done["run_dir"]))
    for name in ("summary.json", "identity.json", "environment.json"):
        strict((run.path / name).read_text())
    rows = [strict(line) for line in run.metrics_file.read_text().splitlines()]
    assert any(r["loss"] in ("NaN", "Infinity") for r in rows)
    back = run.read_metrics()
    assert any(isinstance(r["loss"], float) and not math.isfinite(r["loss"]) for r in back)
    assert files.loads(files.dumps({"x": math.inf, "y": [math.nan]}))["x"] == math.inf


def test_an_interrupted_reproduction_says_one_line_and_resumes(tmp_path):
    """Case 12: SIGTERM printed a traceback and recorded the running session as failed."""
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "profile=smoke",
           "problems=[fmnist_2c2d]", "optimizers=[msgd]", f"results_root={tmp_path}",
           "device=cpu", "estimate=false", "search.replicate_seeds=[0]",
           "overrides=['data.variant=synthetic','train.num_steps=400','train.checkpoint_every=50',"
           "'problem.batch_size=4','problem.eval_batch_size=16']"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("checkpoint.pt")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within two minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted; rerun the same command to continue" in out + err
    assert "Traceback" not in err
    (env_file,) = [p for p in tmp_path.rglob("environment.json")
                   if (p.parent / "checkpoint.pt").exists()]  # fmt: skip
    assert json.loads(env_file.read_text())["sessions"][-1]["status"] == "interrupted"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    sessions = json.loads(env_file.read_text())["sessions"]
    assert sessions[-1]["status"] == "completed" and sessions[-1]["resumed"]


class _Stopped(Exception):
    pass


@pytest.mark.parametrize("before", ["handler", "default"])
def test_a_sigterm_after_the_last_step_is_passed_on_not_lost(tmp_path, monkeypatch, before):
    """Case: the GPU check's reproduction got SIGTERM while its last replicate finished;
    the signal was swallowed, outputs went on and the process was killed (-9)."""
    real = RunDir.write_summary

    def finish_then_signal(self, summary):  # after the loop's last look at stop()
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, summary)

    def handler(signum, frame):
        raise _Stopped

    monkeypatch.setattr(RunDir, "write_summary", finish_then_signal)
    previous = signal.signal(signal.SIGTERM, handler if before == "handler" else signal.SIG_DFL)
    try:
        with pytest.raises(_Stopped if before == "handler" else session.Interrupted):
            session.execute(spec_for(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    (summary,) = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    assert summary["status"] == "completed"  # recorded first, then passed on
    assert session.execute(spec_for(tmp_path))["skipped"]
