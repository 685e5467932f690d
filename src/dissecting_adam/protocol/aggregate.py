"""Statistics over seeds from the tidy runs table (one row per run, step and split).

The table has the columns of ``RUN_COLUMNS`` (what ``results.collect`` writes): problem,
optimizer, lr, seed, step, split (``train_eval``, ``test``, ``minibatch``), loss,
accuracy, status. Everything here reads only that table, so figures and reports redraw
from stored results in seconds.
"""

from __future__ import annotations

import pandas as pd

RUN_COLUMNS = ("problem", "optimizer", "lr", "seed", "step", "split", "loss", "accuracy", "status")
KEYS = ["problem", "optimizer", "lr"]


def check_columns(runs: pd.DataFrame) -> None:
    missing = [c for c in RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"the runs table lacks columns {missing}; expected {list(RUN_COLUMNS)}")


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and number of seeds at each evaluation step.

    Diverged seeds stop contributing after their last finite evaluation (curves are never
    back-filled); ``n`` says how many seeds each point averages.
    """
    check_columns(runs)
    evals = runs[runs["split"].isin(["train_eval", "test"])]
    grouped = evals.groupby([*KEYS, "split", "step"], sort=True)
    out = grouped.agg(
        loss_mean=("loss", "mean"),
        loss_std=("loss", "std"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        n=("seed", "nunique"),
    )
    return out.fillna({"loss_std": 0.0, "accuracy_std": 0.0}).reset_index()


def final_values(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: status, and the final test accuracy and training loss.

    "Final" is the last evaluation of the run; a diverged run has NaN finals (it did not
    reach the end of its budget), so it never looks better than it was.
    """
    check_columns(runs)
    rows = []
    for (problem, optimizer, lr, seed), run in runs.groupby([*KEYS, "seed"], sort=True):
        status = run["status"].iloc[-1]
        row = dict(problem=problem, optimizer=optimizer, lr=lr, seed=seed, status=status)
        for split, column, name in (
            ("test", "accuracy", "test_accuracy"),
            ("test", "loss", "test_loss"),
            ("train_eval", "loss", "train_loss"),
            ("train_eval", "accuracy", "train_accuracy"),
        ):
            part = run[run["split"] == split].sort_values("step")
            ok = status == "completed" and len(part)
            row[name] = float(part[column].iloc[-1]) if ok else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (problem, optimizer, lr): final test accuracy and training loss, mean and std."""
    finals = final_values(runs)
    grouped = finals.groupby(KEYS, sort=True)
    table = grouped.agg(
        seeds=("seed", "nunique"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        failed=("status", lambda s: int((s == "failed").sum())),
        test_accuracy_mean=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        train_loss_mean=("train_loss", "mean"),
        train_loss_std=("train_loss", "std"),
    )
    return table.reset_index()


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A plain Markdown table (no optional dependency on tabulate)."""
    cols = list(table.columns)

    def fmt(x):
        if isinstance(x, float):
            return "" if x != x else f"{x:.{digits}g}"
        return str(x)

    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"
