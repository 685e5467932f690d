"""Gather every run of the results store into one tidy table (parquet, or CSV).

    python scripts/collect.py                          # results/paper -> results/paper/runs.parquet
    python scripts/collect.py --profile smoke --csv    # results/smoke/runs.csv
    python scripts/collect.py --profile all            # every profile -> results/runs.parquet

Columns: profile, problem, optimizer, lr, seed, step, split (train_eval, test, minibatch),
loss, accuracy, status, config_hash, data_loss, diverged_step. The library function is
``dissecting_adam.runner.table.collect``; the command ``protocol.commands.collect_runs``. A
run whose records cannot be read is left out and named (a 'skipped' line); the table is
still written.
"""

import argparse
import sys
from pathlib import Path

from dissecting_adam.protocol import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="results", help="the results root (default: results)")
    parser.add_argument("--profile", default="paper", help="a profile name, or 'all'")
    parser.add_argument("--csv", action="store_true", help="write CSV instead of parquet")
    parser.add_argument("--out", default=None, help="output file (default: next to the runs)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    return commands.collect_runs(Path(args.root), args.profile, args.csv, out)


if __name__ == "__main__":
    sys.exit(main())
