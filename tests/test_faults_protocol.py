"""Faults of the reproduction's protocol layer: a packed worker killed in the middle of a
run, and settings that must stop ``scripts/reproduce.py`` with one line, before any run
folder exists (for ``dry_run=true`` too)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dissecting_adam.protocol import cli, launch
from dissecting_adam.runner.plan import plan

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = "overrides=['data.variant=synthetic','train.checkpoint_every=null','train.num_steps=3']"


def _spec(root, *overrides):
    base = [
        "profile=smoke",
        "problem=tolstoi_char_rnn",
        "problem.batch_size=4",
        "problem.eval_batch_size=16",
        "data.variant=synthetic",
        f"results_root={root}",
        "train.progress=off",
        "train.checkpoint_every=null",
        "device=cpu",
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return plan(compose("train", overrides=[*base, *overrides]))


def _sessions(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "environment.json").read_text())["sessions"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def _running_pid(run_dir: Path) -> int | None:
    pids = [s["pid"] for s in _sessions(run_dir) if s.get("status") == "running"]
    return pids[-1] if pids else None


def _training(run_dir: Path) -> bool:
    """Its session runs and has written its first evaluation (it is in the step loop)."""
    metrics = run_dir / "metrics.jsonl"
    return _running_pid(run_dir) is not None and metrics.exists() and metrics.stat().st_size > 0


def _kill_when(ready, pid_of, killed: list, timeout: float = 240.0) -> None:
    """SIGKILL the worker process ``pid_of()`` names once ``ready()``; record its pid. If
    that never happens, end this process's workers (the test fails, and does not hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = pid_of()
        if pid is not None and ready():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)
    for child in multiprocessing.active_children():
        child.kill()


# --- item 5: a killed packed worker -----------------------------------------------------
def test_a_killed_packed_worker_fails_its_run_and_the_others_go_on(tmp_path, one_thread):
    """``kill -9`` of the worker training one run: that run has a failed session and a
    failed summary, the run stopped with the pool resumes in a new pool, the runs not yet
    started run there, and the batch ends with one line naming the killed run."""
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    doomed = _spec(tmp_path, "train.num_steps=1000000", "seed=0")  # killed long before its end
    beside = _spec(tmp_path, "train.num_steps=2000", "seed=1")  # stopped with the pool
    later = [_spec(tmp_path, "train.num_steps=4", f"seed={s}") for s in (2, 3)]
    specs = [doomed, *([beside] if workers == 2 else []), *later]
    killed: list[int] = []
    target, other = doomed.run_dir().path, beside.run_dir().path
    stopped_beside = []  # whether the other run was training when its pool broke

    def ready() -> bool:
        if not _training(target):
            return False
        if workers == 2 and _training(other):
            stopped_beside.append(True)
            return True
        return workers == 1 or (other / "summary.json").exists()

    killer = threading.Thread(
        target=_kill_when, args=(ready, lambda: _running_pid(target), killed), daemon=True
    )
    killer.start()
    done: list[int] = []
    try:
        with pytest.raises(Exception) as failed:
            launch.Packed(workers, ("cpu",))(specs, done.append)
    finally:
        killer.join(timeout=5)
    assert killed, "the run to kill never started training"
    assert not isinstance(failed.value, BrokenProcessPool), "the batch ended with the pool"
    assert isinstance(failed.value, launch.RunsFailed)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("1 run(s) failed: ")
    assert str(target) in message and "SIGKILL" in message
    assert sum(done) == len(specs)  # every run is accounted for, the killed one too

    for spec in specs[1:]:  # the others finished: in the new pool, or resumed there
        assert spec.run_dir().summary()["status"] == "completed", spec.run_dir().path
        assert all(s["status"] != "running" for s in _sessions(spec.run_dir().path))
    resumed = _sessions(other)
    if len(resumed) > 1:  # stopped with the pool (checkpointed), then resumed in a new one
        assert [s["status"] for s in resumed] == ["interrupted", "completed"], resumed
        assert resumed[-1]["resumed"] is True
    else:  # it had finished by the time the pool broke
        assert not stopped_beside or resumed[0]["status"] == "completed"

    summary = doomed.run_dir().summary()
    assert summary["status"] == "failed" and "SIGKILL" in summary["error"]
    sessions = _sessions(target)
    mine = [s for s in sessions if s.get("pid") == killed[0]]
    assert [s["status"] for s in mine] == ["failed"] and "SIGKILL" in mine[0]["error"]
    assert all(s["status"] != "running" for s in sessions)


def test_a_packed_run_that_raises_is_reported_in_one_line_after_the_others(tmp_path):
    """A worker's exception (here the results root is a file: the runner's ResultsError; an
    OSError goes the same way) is one line naming the run, after the other runs finished."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    good = _spec(tmp_path, "train.num_steps=2")
    bad = good.derive(results_root=str(blocked), seed=1)
    with pytest.raises(Exception) as failed:
        launch.Packed(1, ("cpu",))([bad, good])
    assert isinstance(failed.value, launch.RunsFailed)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("1 run(s) failed: ")
    assert str(bad.run_dir().path) in message and "ResultsError" in message
    assert good.run_dir().summary()["status"] == "completed"


def test_failed_runs_end_the_command_with_one_line(monkeypatch, caplog, sigterm_kept):
    """What ``Packed`` raises after its batch (``RunsFailed``) is printed as one line with
    a non-zero exit, like a bad setting, not as a traceback."""
    failures = ["results/a (worker process 7 died (killed by signal SIGKILL))",
                "results/b (OSError: [Errno 5] Input/output error)"]  # fmt: skip

    def run(cfg, train_command=()):
        raise launch.RunsFailed(failures)

    monkeypatch.setattr(cli, "run", run)
    assert cli.main(OmegaConf.create({})) not in (0, None)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("2 run(s) failed: results/a (worker process 7 died")


@pytest.mark.slow
def test_a_killed_worker_under_reproduce_ends_with_one_line(tmp_path):
    """``reproduce launcher=packed jobs_per_device=1``, one worker killed: no traceback,
    the other run of the round still runs (in a new pool), and one summary line."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "reproduce.py"), "profile=smoke",
        "problems=[tolstoi_char_rnn]", "optimizers=[msgd,adam]", f"results_root={tmp_path}",
        "device=cpu", "estimate=false", "launcher=packed", "jobs_per_device=1", "devices=[cpu]",
        "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
        "'train.num_steps=300','problem.batch_size=4','problem.eval_batch_size=16']",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)  # fmt: skip
    killed: list[int] = []
    found: list[Path] = []

    def first_running() -> int | None:
        for env_file in tmp_path.rglob("environment.json"):
            pid = _running_pid(env_file.parent)
            if pid is not None:
                found[:] = [env_file.parent]
                return pid
        return None

    killer = threading.Thread(
        target=_kill_when, args=(lambda: True, first_running, killed), daemon=True
    )
    killer.start()
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
        killer.join(timeout=5)
    assert killed, out
    assert proc.returncode not in (0, None), out
    assert "Traceback" not in out and "BrokenProcessPool" not in out, out
    lines = [line for line in out.splitlines() if "run(s) failed" in line]
    assert len(lines) == 1 and str(found[0]) in lines[0] and "SIGKILL" in lines[0], out
    sessions = _sessions(found[0])
    assert [s["status"] for s in sessions if s.get("pid") == killed[0]] == ["failed"]
    # The other probe of the round ran to its end in a new pool.
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.rglob("summary.json"))
    assert len(statuses) == 2 and statuses[0] in ("completed", "diverged"), statuses
    assert statuses[1] == "failed", statuses


# --- items 8, 9, 11, 12: bad settings stop the command with one line --------------------
NO_CUDA_HERE = "cuda" if not torch.cuda.is_available() else "cuda:99"

BAD = [  # (override, what the one line must say)
    pytest.param(f"device={NO_CUDA_HERE}", f"device={NO_CUDA_HERE}", id="device"),
    pytest.param("problems=[]", "problems=[] names none", id="no-problems"),
    pytest.param("optimizers=[]", "optimizers=[] names none", id="no-optimizers"),
    pytest.param(
        "overrides=['data.variant=synthetic','train.num_steps=-1']",
        "no (problem, optimizer) pair can run: tolstoi_char_rnn/msgd",
        id="override-invalid-for-every-pair",
    ),
    pytest.param("search.points=0", "search.points=0 must be an integer >= 1", id="points"),
    pytest.param("search.grid.lo=0", "search.grid.lo=0 must be a positive", id="grid-lo"),
    pytest.param("search.grid.mantissas=[]", "search.grid.mantissas=[] is not", id="mantissas"),
    pytest.param(
        "search.grid.mantissas=[0,3]", "search.grid.mantissas=[0,3] must", id="mantissa-zero"
    ),
    pytest.param(
        "+search.grid.hi.msgd=0", "search.grid.hi.msgd=0 must be a positive", id="grid-hi"
    ),
    pytest.param(
        "search.grid.lo=1",
        "search.grid.lo=1 is above optimizer=msgd's grid start",
        id="grid-lo-above-start",
    ),
    pytest.param(
        "search.probe_fraction=2", "search.probe_fraction=2 must be in (0, 1]", id="probe-fraction"
    ),
    pytest.param(
        "launcher=bogus",
        "launcher=bogus is not a launcher; choose one of auto, basic",
        id="launcher",
    ),
    pytest.param("parallel_seeds=0", "parallel_seeds=0 must be an integer >= 1", id="parallel"),
    pytest.param(
        "parallel_seeds=many", "parallel_seeds=many must be an integer >= 1 or auto", id="group"
    ),
    pytest.param("estimate_steps=0", "estimate_steps=0 must be an integer >= 1", id="estimate"),
    pytest.param(
        "search.tolerance=nan", "search.tolerance=nan must be a finite number", id="tolerance"
    ),
    pytest.param(
        "search.replicate_seeds=[]", "search.replicate_seeds=[] is not", id="no-replicate-seeds"
    ),
    pytest.param(
        "search.replicate_seeds=[1,1]",
        "search.replicate_seeds=[1,1] repeats a seed",
        id="repeated-seed",
    ),
]


@pytest.fixture
def sigterm_kept():
    """``main`` installs its SIGTERM handler; this test process keeps its own."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(("override", "says"), BAD)
def test_bad_settings_stop_with_one_line_before_anything_runs(
    override, says, dry_run, tmp_path, caplog, sigterm_kept, one_thread
):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reproduce", overrides=[
            "profile=smoke", "problems=[tolstoi_char_rnn]", "optimizers=[msgd]",
            f"results_root={tmp_path}", "device=cpu", "estimate_steps=1", TINY,
            f"dry_run={str(dry_run).lower()}", override,
        ])  # fmt: skip
        status = cli.main(cfg)
    assert status not in (0, None)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert says in errors[0] and ";" in errors[0], errors[0]  # what is wrong; the fix
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing trained


def test_reproduce_on_a_machine_without_the_device_prints_one_line(tmp_path):
    """``scripts/reproduce.py device=cuda`` without CUDA: one line, as ``train.py`` does."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "reproduce.py"), "profile=smoke",
        "problems=[tolstoi_char_rnn]", "optimizers=[msgd]", f"results_root={tmp_path}",
        f"device={NO_CUDA_HERE}", "estimate_steps=1", TINY,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    out = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode not in (0, None)
    assert len(out) == 1 and f"device={NO_CUDA_HERE}" in out[0], out
    assert list(tmp_path.iterdir()) == []
