"""A command run until a deadline, then stopped as SLURM stops a job: SIGTERM, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from .timing import Deadline


def run_until(cmd: list[str], deadline: Deadline, log: Path, cwd: Path, grace_s: float) -> dict:
    """Run ``cmd`` (output to ``log``); at ``deadline`` send SIGTERM, and SIGKILL if it has
    not ended ``grace_s`` later."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        stopped = False
        try:
            try:
                proc.wait(timeout=max(deadline.left(), 0.1))
            except subprocess.TimeoutExpired:
                stopped = True
                stop(proc, grace_s)
        finally:
            if proc.poll() is None:  # stopped from outside (the section's alarm, Ctrl-C)
                stop(proc, grace_s=5.0)
    return {
        "exit_status": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "stopped_at_deadline": stopped,
    }


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (a run checkpoints and exits), then SIGKILL after ``grace_s`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_exit(res: dict, log: Path) -> None:
    """Raise if the command failed (not stopped by us: that exits 143), naming its log."""
    if res["exit_status"] != 0 and not res["stopped_at_deadline"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"exit status {res['exit_status']}, see {log}: " + " | ".join(tail))
