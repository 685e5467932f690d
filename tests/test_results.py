"""The results store (identity hash, atomic writes, torn metrics) and collection into a
tidy table, including an ordinary Hydra multirun sweep over ``optimizer.lr``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dissecting_adam.runner import store as results
from dissecting_adam.runner import table as store_table
from dissecting_adam.runner.store import RunDir, atomic_write_json, config_hash

REPO = Path(__file__).resolve().parents[1]

IDENTITY = {
    "profile": "smoke",
    "problem": "fmnist_2c2d",
    "optimizer": "msvag",
    "optimizer_kwargs": {"lr": 0.3, "beta": 0.9},
    "seed": 1,
}


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(IDENTITY) == config_hash(dict(reversed(list(IDENTITY.items()))))
    changed = {**IDENTITY, "optimizer_kwargs": {"lr": 0.3, "beta": 0.5}}
    assert config_hash(changed) != config_hash(IDENTITY)
    assert len(config_hash(IDENTITY)) == 10


def test_run_folder_layout(tmp_path):
    run = RunDir.for_identity(tmp_path, IDENTITY)
    rel = run.path.relative_to(tmp_path).parts
    assert rel == ("smoke", "fmnist_2c2d", "msvag", "lr=0.3", f"seed=1-{config_hash(IDENTITY)}")
    assert results.format_lr(3e-5) == "3e-05" and results.format_lr(1) == "1"


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "completed"})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"status": object()})  # not serialisable: fails mid-write
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_torn_last_metrics_line_is_dropped_and_truncation_keeps_whole_rows(tmp_path):
    run = RunDir(tmp_path)
    size = run.append_metrics([{"step": 0, "split": "test", "loss": 1.0}])
    run.append_metrics([{"step": 1, "split": "minibatch", "loss": 0.5}])
    with open(run.metrics_file, "a") as f:
        f.write('{"step": 2, "spl')  # a process killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [0, 1]
    run.truncate_metrics(size)
    assert run.read_metrics() == [{"step": 0, "split": "test", "loss": 1.0}]


def test_finished_only_for_the_same_identity(tmp_path):
    run = RunDir.for_identity(tmp_path, IDENTITY)
    run.start(IDENTITY, "cfg: 1\n")
    assert not run.is_finished(IDENTITY)  # started, no summary
    run.write_summary({"status": "failed"})
    assert not run.is_finished(IDENTITY)  # failed runs are retried
    run.write_summary({"status": "diverged"})
    assert run.is_finished(IDENTITY)
    assert not run.is_finished({**IDENTITY, "seed": 2})
    with pytest.raises(results.ResultsError, match="different config"):
        run.start({**IDENTITY, "seed": 2}, "cfg: 2\n")
    assert run.is_finished(IDENTITY)  # the collision touched nothing


def test_collect_of_an_empty_store_has_the_columns(tmp_path):
    columns = list(store_table.collect(tmp_path).columns)
    assert columns[: len(store_table.COLUMNS)] == store_table.COLUMNS


def test_multirun_sweep_then_collect(tmp_path):
    """`train.py -m optimizer.lr=...` is an ordinary Hydra sweep; collect.py tidies it."""
    cmd = [
        sys.executable,
        "scripts/train.py",
        "-m",
        "optimizer=sgd",
        "optimizer.lr=0.01,1e6",
        "seed=0,1",
        "profile=smoke",
        "data.variant=synthetic",
        "problem.batch_size=8",
        "problem.eval_batch_size=16",
        "train.num_steps=4",
        "train.eval_every=2",
        "train.log_every=1",
        "train.progress=off",
        f"results_root={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from dissecting_adam.protocol.commands import collect_runs

    assert collect_runs(tmp_path, "smoke", csv=True) == 0  # scripts/collect.py's command
    table = pd.read_csv(tmp_path / "smoke" / "runs.csv")
    assert list(table.columns[: len(store_table.COLUMNS)]) == store_table.COLUMNS
    runs = table.drop_duplicates(["lr", "seed"]).set_index(["lr", "seed"])["status"]
    assert runs.to_dict() == {
        (0.01, 0): "completed",
        (0.01, 1): "completed",
        (1e6, 0): "diverged",
        (1e6, 1): "diverged",
    }
    ok = table[(table.lr == 0.01) & (table.seed == 0)]
    assert sorted(ok[ok.split == "test"].step) == [0, 2, 4]
    assert sorted(ok[ok.split == "minibatch"].step) == [0, 1, 2, 3]
    assert set(table.split) == {"train_eval", "test", "minibatch"}
    assert set(table.data_variant) == {"synthetic"}  # never mistaken for real results
    assert ok[ok.split == "test"].accuracy.between(0, 1).all()
    assert ok[ok.split == "minibatch"].accuracy.isna().all()
    # The library function gives the same table; parquet round-trips it.
    lib = store_table.collect(tmp_path / "smoke")
    assert len(lib) == len(table)
    store_table.write_table(lib, tmp_path / "runs.parquet")
    back = pd.read_parquet(tmp_path / "runs.parquet")
    assert back[["step", "split", "loss"]].equals(
        lib[["step", "split", "loss"]].reset_index(drop=True)
    )
