"""Kill a training process mid-run (SIGKILL, no clean-up) and resume it: the resumed run's
metrics are byte-identical to an uninterrupted run's.

P4 (tolstoi) is the demanding case: dropout draws from the global RNG, the LSTM state is
carried from batch to batch and reset at every epoch (several epochs of generated text).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dissecting_adam.runner.plan import plan
from dissecting_adam.runner.session import execute
from dissecting_adam.runner.store import RunDir

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "problem=tolstoi_char_rnn",
    "optimizer=msvag",
    "optimizer.lr=0.3",
    "profile=smoke",
    "data.variant=synthetic",
    "problem.batch_size=4",
    "+problem.seq_length=10",
    "train.num_steps=300",
    "train.eval_every=50",
    "train.checkpoint_every=20",
    "train.log_every=1",
    "train.progress=off",
]


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGKILL, id="SIGKILL"),
        pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow),
    ],
)
def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path, sig):
    """SIGKILL: no clean-up at all. SIGTERM (a SLURM time limit): checkpoint, exit 143."""
    # One thread here and in the subprocesses: the same arithmetic, and no spinning threads
    # on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill_and_resume(tmp_path, sig)
    finally:
        torch.set_num_threads(threads)


def _kill_and_resume(tmp_path, sig):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*ARGS, f"results_root={tmp_path / 'whole'}"])
    whole = RunDir(Path(execute(plan(cfg))["run_dir"]))
    run = RunDir(tmp_path / "cut" / whole.path.relative_to(tmp_path / "whole"))

    cmd = [sys.executable, "scripts/train.py", *ARGS, f"results_root={tmp_path / 'cut'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not run.checkpoint_file.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within two minutes"
            time.sleep(0.01)
        os.kill(proc.pid, sig)
    finally:
        proc.wait(timeout=30)
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 143
    assert proc.returncode == expected, proc.stderr.read().decode()[-2000:]
    assert run.summary() is None  # killed mid-run: nothing reads as complete
    partial = run.read_metrics()
    assert 0 < len(partial) < len(whole.read_metrics())

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run.summary()["status"] == "completed"
    assert run.metrics_file.read_bytes() == whole.metrics_file.read_bytes()
    assert not run.checkpoint_file.exists()
