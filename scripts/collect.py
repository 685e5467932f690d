"""Gather every run of the results store into one tidy table (parquet, or CSV).

    python scripts/collect.py                          # results/paper -> results/paper/runs.parquet
    python scripts/collect.py --profile smoke --csv    # results/smoke/runs.csv
    python scripts/collect.py --profile all            # every profile -> results/runs.parquet

Columns: profile, problem, optimizer, lr, seed, step, split (train_eval, test, minibatch),
loss, accuracy, status, config_hash, data_loss, diverged_step. The library function is
``dissecting_adam.runner.table.collect``. A run whose records cannot be read is left
out and named (a 'skipped' line); the table is still written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dissecting_adam.runner.table import collect, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="results", help="the results root (default: results)")
    parser.add_argument("--profile", default="paper", help="a profile name, or 'all'")
    parser.add_argument("--csv", action="store_true", help="write CSV instead of parquet")
    parser.add_argument("--out", default=None, help="output file (default: next to the runs)")
    args = parser.parse_args(argv)

    root = Path(args.root)
    where = root if args.profile == "all" else root / args.profile
    if not where.is_dir():
        print(f"No results in {where}: train some runs first (scripts/train.py).", file=sys.stderr)
        return 1
    table = collect(where)
    out = Path(args.out) if args.out else where / ("runs.csv" if args.csv else "runs.parquet")
    try:
        write_table(table, out)
    except OSError as err:
        print(f"Cannot write {out} ({err.strerror or err}): choose a writable file with "
              "--out <path>. Nothing in the store was changed.", file=sys.stderr)  # fmt: skip
        return 1
    runs = table.groupby(["problem", "optimizer", "lr", "seed", "config_hash"]).ngroups
    print(f"{len(table)} rows from {runs} runs -> {out}")
    skipped = table.attrs.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} unreadable record(s):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    if len(table):
        print(table.drop_duplicates("config_hash")["status"].value_counts().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
