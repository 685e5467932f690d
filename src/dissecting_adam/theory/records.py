"""Provenance for every output: config, seeds, code version, environment and wall time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..runner.files import atomic_write_text

PACKAGES = ("numpy", "scipy", "torch", "pandas", "matplotlib", "tueplots", "hydra-core")


def git_state(cwd: str | Path | None = None) -> dict:
    """The commit and whether the tree has uncommitted changes (read-only git calls)."""

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_meta(out_dir: str | Path, config: dict, seeds, wall_time_s: float, **extra) -> Path:
    """Write ``meta.json`` into ``out_dir`` and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": config,
        "seeds": list(seeds),
        "git": git_state(Path(__file__).resolve().parent),
        "versions": versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "wall_time_s": round(wall_time_s, 3),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path = out_dir / "meta.json"
    atomic_write_text(path, json.dumps(meta, indent=2, default=str) + "\n")
    return path
