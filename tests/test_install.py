"""The package works from a regular (non-editable) install: a run started from a checkout's
``scripts/train.py`` imports the installed copy and locates nothing relative to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_from_a_regular_install(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--target", str(site), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import dissecting_adam; print(dissecting_adam.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(site)
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "profile=smoke",
         "data.variant=synthetic", f"results_root={results}", "problem.batch_size=8",
         "problem.eval_batch_size=16", "train.num_steps=2", "train.progress=off"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (summary,) = results.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"
    env_record = json.loads((summary.parent / "environment.json").read_text())
    assert env_record["environment"]["dissecting_adam"] == "0.1.0"
