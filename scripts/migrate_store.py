"""Move a results store's runs to the current identity format, once (nothing retrains).

    python scripts/migrate_store.py                  # results/
    python scripts/migrate_store.py /scratch/store   # another store (or any folder in one)

A run's folder is named by the hash of its identity; when the identity's format changes
(``records.IDENTITY_VERSION``) the runs recorded before are rewritten in the new format and
renamed, the old identity kept as identity.v1.json. ``make reproduce-fig5`` runs this on
results/ first; train.py and reproduce.py refuse, with one line, a store that needs it.
Runs being trained are left for a later pass (status 1). Docs: docs/runner.md.
"""

import argparse
import sys
from pathlib import Path

from dissecting_adam.protocol import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="results", help="default: results")
    parser.add_argument("--quiet", action="store_true", help="say nothing if nothing moved")
    args = parser.parse_args(argv)
    return commands.migrate_store(Path(args.root), args.quiet)


if __name__ == "__main__":
    sys.exit(main())
