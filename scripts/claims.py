"""Check the paper's §6.2 claims on a replicates table: claims.md and claims.csv.

    python scripts/claims.py --replicates results/paper/runs.parquet --out results/paper/fig5
    python scripts/claims.py --replicates runs.csv --out out/ --claims conf/claims/paper.yaml

The table has the columns scripts/collect.py writes (profile, problem, optimizer, lr, seed,
step, split, loss, accuracy, status, config_hash, ...), parquet or CSV, and holds only the
runs of each method's selected step size. It prints the verdict counts of the checks and of
the sentences of §6.2, then both paths. The tests and margins: docs/claims.md. A table
that cannot be one (no rows, accuracy in percent, non-integer seeds, missing columns) is
refused with one line on stderr and exit status 1, like every bad input of the scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from dissecting_adam.protocol import aggregate, claims, stats

DEFAULT_CLAIMS = Path(__file__).resolve().parents[1] / "conf" / "claims" / "paper.yaml"


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", required=True, help="the runs table (.parquet or .csv)")
    parser.add_argument("--out", required=True, help="folder for claims.md and claims.csv")
    parser.add_argument("--claims", default=str(DEFAULT_CLAIMS), help="the claims YAML")
    args = parser.parse_args(argv)

    source, claims_file = Path(args.replicates), Path(args.claims)
    for path in (source, claims_file):
        if not path.is_file():
            print(f"error: no such file: {path}", file=sys.stderr)
            return 1
    try:
        table = claims.validate_replicates(read_table(source), str(source))
        claim_list, settings = claims.load(claims_file)
        summary = aggregate.summary(table)
        paths = claims.write(table, Path(args.out), claim_list, settings, summary,
                             claims.data_banner(table))  # fmt: skip
    except (ValueError, OSError, KeyError) as err:  # one line, even for YAML's multi-line errors
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 1
    result = pd.read_csv(paths["claims_csv"])
    counts = result.drop_duplicates(["claim", "problem"])["claim_verdict"].value_counts()
    print(", ".join(f"{counts.get(v, 0)} {v}" for v in stats.VERDICTS)
          + f" (check x problem: {int(counts.sum())})")  # fmt: skip
    sentences = claims.sentence_verdicts(result, settings)
    if len(sentences):
        top = sentences[sentences["problem"] == "all"]["verdict"].value_counts()
        print(
            "sentences of §6.2 (on the problems run): "
            + ", ".join(f"{n} {v}" for v, n in top.items())
        )
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
