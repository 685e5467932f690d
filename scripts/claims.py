"""Check the paper's §6.2 claims on a replicates table: claims.md and claims.csv.

    python scripts/claims.py --replicates results/paper/runs.parquet --out results/paper/fig5
    python scripts/claims.py --replicates runs.csv --out out/ --claims conf/claims/paper.yaml

The table has the columns scripts/collect.py writes (profile, problem, optimizer, lr, seed,
step, split, loss, accuracy, status, config_hash, ...), parquet or CSV, and holds only the
runs of each method's selected step size. It prints the verdict counts of the checks and of
the sentences of §6.2, then both paths. The tests and margins: docs/claims.md. A table
that cannot be one (no rows, accuracy in percent, non-integer seeds, missing columns) is
refused with one line on stderr and exit status 1, like every bad input of the scripts.
The command is ``dissecting_adam.protocol.commands.check_claims``.
"""

import argparse
import sys
from pathlib import Path

from dissecting_adam.protocol import commands

DEFAULT_CLAIMS = Path(__file__).resolve().parents[1] / "conf" / "claims" / "paper.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", required=True, help="the runs table (.parquet or .csv)")
    parser.add_argument("--out", required=True, help="folder for claims.md and claims.csv")
    parser.add_argument("--claims", default=str(DEFAULT_CLAIMS), help="the claims YAML")
    args = parser.parse_args(argv)
    return commands.check_claims(Path(args.replicates), Path(args.out), Path(args.claims))


if __name__ == "__main__":
    sys.exit(main())
