"""The environment a run records: code version, package versions, machine and device."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path


def _git(*args: str) -> str | None:
    """Ask git about the checkout the code runs from: the package's own folder (an editable
    install), else the working directory (a regular install, run from a checkout)."""
    for where in (Path(__file__).resolve().parent, Path(os.getcwd())):
        try:
            out = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict:
    """Code version, package versions and machine of this process."""
    import numpy
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    env = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    for package in ("dissecting-adam", "hydra-core", "scipy", "pandas", "wandb"):
        try:
            env[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    # Which scheduler job ran it (SLURM; submitit's array jobs set both).
    slurm = {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
             "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST") if k in os.environ}  # fmt: skip
    if slurm:
        env["slurm"] = slurm
    if device is not None:
        env["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        else:
            env["device_name"] = cpu_model()
    return env
