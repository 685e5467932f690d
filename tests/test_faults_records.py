"""Fault injection, second round: a finished record that verifies itself, a second copy
that finds a result finished under the lock, a shortened metrics file on resume, a full
disk, records of the wrong shape, a checkpoint of another method, and bad seeds. Each case
names the defect it reproduces (all of them failed before the fixes)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN, interrupted_at_checkpoint, tiny_spec
from hydra import compose, initialize_config_dir

from dissecting_adam.protocol import commands
from dissecting_adam.runner import files, session
from dissecting_adam.runner import table as store_table
from dissecting_adam.runner.plan import ConfigError, plan_seeds
from dissecting_adam.runner.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [*TINY_RUN, "train.num_steps=6"]


def spec_for(root, *overrides):
    return tiny_spec(root, "train.num_steps=6", *overrides)


def zero_last_test_row(run: RunDir) -> None:
    """Overwrite the last test evaluation's line with NUL bytes of the same length."""
    lines = run.metrics_file.read_bytes().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if b'"split": "test"' in line)
    lines[last] = b"\0" * (len(lines[last]) - 1) + b"\n"
    run.metrics_file.write_bytes(b"".join(lines))


@pytest.mark.parametrize("summary_kind", ["digest", "older summary without a digest"])
def test_a_damaged_line_of_a_finished_run_is_named_and_never_used(tmp_path, capsys, summary_kind):
    """Item 1: one zeroed line turned a run's final test accuracy into an earlier one's,
    and collect, aggregate, claims and train all used it."""
    done = session.execute(spec_for(tmp_path))
    run = RunDir(Path(done["run_dir"]))
    summary = json.loads(run.summary_file.read_text())
    assert summary["metrics_rows"] == len(run.metrics_file.read_bytes().splitlines())
    if summary_kind != "digest":
        del summary["metrics_rows"], summary["metrics_sha256"]
        run.summary_file.write_text(json.dumps(summary))
    zero_last_test_row(run)

    table = store_table.collect(tmp_path / "smoke")
    assert table.empty
    ((path, reason),) = table.attrs["skipped"]
    assert path == str(run.metrics_file)
    assert ("does not match summary.json" in reason) == (summary_kind == "digest")
    capsys.readouterr()  # drop the training output
    assert commands.collect_runs(tmp_path, "smoke") == 0
    assert str(run.metrics_file) in capsys.readouterr().err

    spec = spec_for(tmp_path)
    assert not run.is_finished(spec.identity())
    redone = session.execute(spec)  # trained again; the damaged files are kept aside
    assert not redone["skipped"] and redone["status"] == "completed"
    assert redone["final"] == done["final"]
    assert list(run.path.glob("metrics.jsonl.corrupt-*"))
    assert list(run.path.glob("summary.json.corrupt-*"))
    assert session.execute(spec)["skipped"]
    assert len(store_table.collect(tmp_path / "smoke").drop_duplicates("config_hash")) == 1


def test_a_run_finished_by_another_copy_before_the_lock_is_not_trained_again(tmp_path):
    """Item 3: execute_seeds asked is_finished before Session took the lock; a copy that
    finished in between had its summary unlinked and its run trained again from step 0."""
    spec = spec_for(tmp_path)
    first = session.execute(spec)
    run = RunDir(Path(first["run_dir"]))
    before = {p.name: p.read_bytes() for p in (run.summary_file, run.metrics_file)}
    # The second copy's view: it looked before the first had finished (the race window).
    again = session._train_group([spec])
    assert again[0]["skipped"] and again[0]["status"] == "completed"
    assert {p.name: p.read_bytes() for p in (run.summary_file, run.metrics_file)} == before
    sessions = json.loads(run.environment_file.read_text())["sessions"]
    assert len(sessions) == 1  # no second training session
    with pytest.raises(files.ResultsError, match="holds a finished run; it is kept"):
        run.start(spec.identity(), "x: 1\n")  # the last line of defence
    assert run.summary_file.read_bytes() == before["summary.json"]


@pytest.mark.parametrize("damage", ["emptied", "same size, other bytes"])
def test_a_damaged_metrics_file_restarts_the_run_instead_of_leaving_holes(tmp_path, damage):
    """Item 4: kill after a checkpoint, empty metrics.jsonl, rerun: the run resumed and was
    recorded completed with the step-0 evaluation and early rows missing. A checkpoint
    records the size and the digest of the rows before it, so other bytes are caught too."""
    whole = session.execute(spec_for(tmp_path / "whole"))
    expected = Path(whole["run_dir"], "metrics.jsonl").read_bytes()
    spec = spec_for(tmp_path / "cut")
    with interrupted_at_checkpoint(2), pytest.raises(KeyboardInterrupt):
        session.execute(spec)
    run = spec.run_dir()
    assert run.checkpoint_file.exists()
    data = bytearray(run.metrics_file.read_bytes())
    if damage == "emptied":
        data = bytearray()
    else:
        data[5:9] = b"\0\0\0\0"
    run.metrics_file.write_bytes(bytes(data))
    done = session.execute(spec)
    assert done["status"] == "completed"
    assert run.metrics_file.read_bytes() == expected  # trained again, every row once
    assert list(run.path.glob("metrics.jsonl.corrupt-*"))


def _no_room(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_the_session_is_recorded_and_the_run_resumes(tmp_path, monkeypatch):
    """Item 6: a full disk mid-run gave a chain of five tracebacks, no failed record and a
    session left running."""
    whole = session.execute(spec_for(tmp_path / "whole"))
    expected = Path(whole["run_dir"], "metrics.jsonl").read_bytes()
    spec = spec_for(tmp_path / "full")
    real, calls = RunDir.append_metrics, []

    def fills_the_disk(self, rows):
        calls.append(1)
        if len(calls) == 6:  # after the checkpoint at step 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rows)

    monkeypatch.setattr(RunDir, "append_metrics", fills_the_disk)
    with pytest.raises(files.DiskFull) as err:
        session.execute(spec)
    message = str(err.value)
    assert "\n" not in message and "No space left on the disk holding" in message
    assert str(spec.run_dir().path) in message and "rerun to resume" in message
    run = spec.run_dir()
    sessions = json.loads(run.environment_file.read_text())["sessions"]
    assert sessions[-1]["status"] == "failed"
    assert run.summary()["status"] == "failed" and "No space left" in run.summary()["error"]
    monkeypatch.setattr(RunDir, "append_metrics", real)
    done = session.execute(spec)
    assert done["status"] == "completed" and run.metrics_file.read_bytes() == expected
    assert json.loads(run.environment_file.read_text())["sessions"][-1]["resumed"]


def test_when_not_even_the_failure_record_fits_the_next_session_marks_it_lost(
    tmp_path, monkeypatch
):
    """Item 6: every write fails once the disk is full; still one line, and the session
    left 'running' is closed as 'lost' by the next one."""
    spec = spec_for(tmp_path)
    real = RunDir.append_metrics
    calls = []

    def fills_the_disk(self, rows):
        calls.append(1)
        if len(calls) == 4:
            monkeypatch.setattr(files, "atomic_write", _no_room)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rows)

    monkeypatch.setattr(RunDir, "append_metrics", fills_the_disk)
    with pytest.raises(files.DiskFull, match="No space left on the disk"):
        session.execute(spec)
    monkeypatch.undo()
    run = spec.run_dir()
    assert json.loads(run.environment_file.read_text())["sessions"][-1]["status"] == "running"
    assert session.execute(spec)["status"] == "completed"
    sessions = json.loads(run.environment_file.read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["lost", "completed"]


def test_a_real_full_disk_under_train_py_is_one_line(tmp_path):
    """Item 6 on a real 2 MiB tmpfs (root only): the finished run beside it is untouched."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY,
               f"results_root={disk / 'r'}"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        small = subprocess.run([*cmd, "train.checkpoint_every=null", "seed=7"], env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert small.returncode == 0, small.stderr[-2000:]
        (finished,) = disk.rglob("summary.json")
        kept = finished.read_bytes()
        big = subprocess.run([*cmd, "train.num_steps=400", "train.eval_every=100",
                              "train.keep_checkpoint=true", "problem.batch_size=2"],
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        out = big.stdout + big.stderr
        assert big.returncode == 1 and "Traceback" not in out, out[-3000:]
        assert "No space left on the disk holding" in out
        assert finished.read_bytes() == kept
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_records_of_the_wrong_shape_are_named_and_do_not_break_the_store(tmp_path, capsys):
    """Item 11: summary.json = [1] or an identity.json without profile broke collect and
    the dry run for the whole store."""
    good = session.execute(spec_for(tmp_path, "seed=1"))
    listed = session.execute(spec_for(tmp_path, "seed=2"))
    partial = session.execute(spec_for(tmp_path, "seed=3"))
    Path(listed["run_dir"], "summary.json").write_text("[1]")
    identity = json.loads(Path(partial["run_dir"], "identity.json").read_text())
    del identity["profile"]
    Path(partial["run_dir"], "identity.json").write_text(json.dumps(identity))
    table = store_table.collect(tmp_path / "smoke")
    assert set(table["seed"]) == {1}
    reasons = dict(table.attrs["skipped"])
    assert "not a summary (a JSON list)" in reasons[str(Path(listed["run_dir"], "summary.json"))]
    assert "no profile" in reasons[str(Path(partial["run_dir"], "identity.json"))]
    assert session.execute(spec_for(tmp_path, "seed=1"))["skipped"]
    for seed in (2, 3):  # redone, the bad file (or folder) kept aside
        redone = session.execute(spec_for(tmp_path, f"seed={seed}"))
        assert not redone["skipped"] and redone["status"] == "completed"
    assert good["final"] == session.execute(spec_for(tmp_path, "seed=1"))["final"]


def test_collect_into_a_folder_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    """Item 11: collect on a read-only results root ended in a traceback."""
    session.execute(spec_for(tmp_path))

    def refuse(table, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(commands, "write_table", refuse)
    assert commands.collect_runs(tmp_path, "smoke") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0] and "--out" in err[0]


def test_a_checkpoint_of_another_method_is_moved_aside_and_the_run_starts_over(tmp_path):
    """Item 11: a readable checkpoint of another method failed every rerun with the same
    ValueError, never a restart."""
    clean = session.execute(spec_for(tmp_path / "clean", "optimizer=mssd", "optimizer.lr=0.01"))
    other = spec_for(tmp_path, "optimizer=msvag")
    with interrupted_at_checkpoint(1), pytest.raises(KeyboardInterrupt):
        session.execute(other)
    spec = spec_for(tmp_path, "optimizer=mssd", "optimizer.lr=0.01")
    run = spec.run_dir()
    run.path.mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.jsonl"):  # as if copied over by hand
        (run.path / name).write_bytes((other.run_dir().path / name).read_bytes())
    done = session.execute(spec)
    assert done["status"] == "completed"
    assert run.metrics_file.read_bytes() == Path(clean["run_dir"], "metrics.jsonl").read_bytes()
    assert list(run.path.glob("checkpoint.pt.corrupt-*"))
    assert session.execute(spec)["skipped"]


@pytest.mark.parametrize("bad", ["seed=1.5", "seed=-1", "seed=true", "seeds=[0,1.5]"])
def test_a_seed_that_is_not_a_whole_number_is_refused(tmp_path, bad):
    """Item 12: seed=1.5 ran as seed 1 and answered with seed 1's record."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"results_root={tmp_path}", bad])
    with pytest.raises(ConfigError, match=r"seed"):
        plan_seeds(cfg)
    assert not (tmp_path / "smoke").exists()
