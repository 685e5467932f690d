"""The results store as one tidy table: every run under a root, one row per measurement.

``collect`` reads each run's identity, summary and metrics through ``store``; a run whose
records cannot be read, or whose finished metrics no longer match their summary, is left
out and named (``table.attrs["skipped"]``), never used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .files import CorruptRecord, atomic_write
from .records import precision_of
from .store import FINISHED, read_identity, run_dirs

log = logging.getLogger(__name__)

#: The columns of the tidy table that ``collect`` returns.
COLUMNS = [
    "profile",
    "problem",
    "optimizer",
    "lr",
    "seed",
    "step",
    "split",
    "loss",
    "accuracy",
    "status",
    "config_hash",
]


def collect(root: Path):
    """All runs under ``root`` as one tidy pandas table (one row per measurement).

    Columns: COLUMNS plus ``data_loss`` (evaluations), ``diverged_step``, ``data_variant``
    (``real``, or ``synthetic`` for generated stand-ins) and ``precision`` (``tf32``, the
    default; ``fp32``; ``bf16``: not the paper's numerics). Runs without a
    summary (running or killed) have status ``incomplete``. A run whose records cannot be
    read is left out with a warning naming the file; ``table.attrs["skipped"]`` lists them
    as (path, reason).
    """
    import pandas as pd

    frames, skipped = [], []
    for run in run_dirs(root):
        try:
            identity = read_identity(run.identity_file)
            summary = run.summary() or {}
            lr, config = float(identity["optimizer_kwargs"]["lr"]), identity["config_hash"]
            damaged = run.verify(summary) if summary.get("status") in FINISHED else None
            if damaged:  # never a result: its "final" values may be an earlier step's
                raise CorruptRecord(run.metrics_file, damaged)
        except CorruptRecord as err:
            log.warning("skipped %s: %s", err.path, err.reason)
            skipped.append((str(err.path), err.reason))
            continue
        rows = run.read_metrics()
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df["profile"] = identity["profile"]
        df["problem"] = identity["problem"]
        df["optimizer"] = identity["optimizer"]
        df["lr"] = lr
        df["seed"] = int(identity["seed"])
        df["status"] = summary.get("status", "incomplete")
        df["diverged_step"] = summary.get("diverged_step")
        df["config_hash"] = config
        # Generated stand-in data (tests, smoke checks) must never pass for real results.
        df["data_variant"] = identity.get("data_variant", "real")
        df["precision"] = precision_of(identity)  # bf16 must not pass for float32 either
        frames.append(df)
    if not frames:
        table = pd.DataFrame(
            columns=[*COLUMNS, "data_loss", "diverged_step", "data_variant", "precision"]
        )
    else:
        table = pd.concat(frames, ignore_index=True)
        for col in ("accuracy", "data_loss", "diverged_step"):
            if col not in table:
                table[col] = None
        rest = [c for c in table.columns if c not in COLUMNS]
        table = table[[*COLUMNS, *rest]]
        sort = ["profile", "problem", "optimizer", "lr", "seed", "step", "split"]
        table = table.sort_values(sort)
    table.attrs["skipped"] = skipped
    return table


def write_table(table, path: Path) -> Path:
    """Write ``table`` atomically as parquet (``.parquet``) or CSV (any other suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    table.attrs = {}  # parquet metadata holds only JSON-able attributes

    def write(tmp: Path) -> None:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)

    return atomic_write(path, write)
