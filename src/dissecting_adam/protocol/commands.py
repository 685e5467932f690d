"""The small commands' bodies: ``scripts/train.py``, ``prepare_data.py``, ``collect.py``,
``migrate_store.py`` and ``claims.py`` parse their arguments and call one of these (``cli`` is
``reproduce.py``'s).

Each returns an exit status: 0 when done, 1 with one line on stderr (or in the log) that
names the problem and the fix (a bad setting or table, a data set that is missing or
corrupt, an unwritable file); a training stopped by SIGTERM returns 143 and by Ctrl-C 130,
checkpointed: rerun the same command to resume.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd

from ..problems import PROBLEMS, DataError, load
from ..runner import migrate
from ..runner.loop import Interrupted
from ..runner.plan import ConfigError, plan_seeds
from ..runner.session import execute_seeds
from ..runner.store import ResultsError
from ..runner.table import collect, write_table
from . import aggregate, claims, stats

log = logging.getLogger("train")


# --- scripts/train.py ---------------------------------------------------------------------
def train(cfg) -> tuple[int, list[dict]]:
    """Plan ``cfg`` (conf/train.yaml) and train its seeds; the exit status and the runs'
    summaries (a finished run of the same spec returns at once)."""
    try:
        specs, parallel_seeds = plan_seeds(cfg)
        summaries = execute_seeds(specs, parallel_seeds)
    except (ConfigError, ResultsError, DataError) as err:
        log.error("%s", err)
        return 1, []
    except Interrupted as err:  # SIGTERM: checkpointed, resumes when rerun
        log.warning("%s", err)
        return 143, []
    except KeyboardInterrupt:
        log.warning("interrupted; rerun the same command to resume from the last checkpoint")
        return 130, []
    for summary in summaries:
        log.info("%s", describe(summary))
    return 0, summaries


def describe(summary: dict) -> str:
    """One line: how the run ended, its final metrics, its wall time and its record."""
    word = ("already " if summary["skipped"] else "") + summary["status"]
    final = summary.get("final") or {}
    parts = [word]
    if summary.get("diverged_step") is not None:
        parts.append(f"at step {summary['diverged_step']}")
    if final.get("test_accuracy") is not None:
        parts.append(f"final test accuracy {final['test_accuracy']:.4f}")
    if final.get("train_eval_loss") is not None:
        parts.append(f"training loss {final['train_eval_loss']:.4f}")
    if summary.get("train_time_s") is not None:
        parts.append(f"{summary.get('steps_done', 0)} steps in {summary['train_time_s']:.1f} s")
    if summary.get("precision", "tf32") != "tf32":  # not the default numerics: say so
        parts.append(f"precision {summary['precision']}")
    return ", ".join(parts) + f" -> {summary['run_dir']}"


# --- scripts/prepare_data.py --------------------------------------------------------------
def selected(value) -> list[str]:
    """``problems`` (a list, or comma-separated) as names; ``all``: every problem."""
    names = str(value).split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [n.strip() for n in names if n.strip()]
    return list(PROBLEMS) if names == ["all"] else names


def prepare_data(cfg) -> int:
    """Download (or copy), verify and preprocess the data of ``cfg.problem`` or
    ``cfg.problems`` (conf/prepare_data.yaml); one line per problem."""
    for name in selected(cfg.problem if cfg.problem else cfg.problems):
        start = time.perf_counter()
        try:
            problem = load(name, data_root=cfg.data.root, mirror=cfg.data.mirror)
            problem.prepare()
            fingerprint = problem.data_fingerprint()
        except (DataError, ValueError) as err:
            print(f"{name}: FAILED\n{err}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - start
        print(f"{name}: ready in {cfg.data.root} (data {fingerprint}, {elapsed:.1f} s)")
    return 0


# --- scripts/collect.py -------------------------------------------------------------------
def collect_runs(root: Path, profile: str, csv: bool = False, out: Path | None = None) -> int:
    """Every run of ``root/profile`` (``all``: of ``root``) as one table, written next to the
    runs (or to ``out``); a summary of it on stdout, unreadable records on stderr."""
    where = root if profile == "all" else root / profile
    if not where.is_dir():
        print(f"No results in {where}: train some runs first (scripts/train.py).", file=sys.stderr)
        return 1
    table = collect(where)
    out = out or where / ("runs.csv" if csv else "runs.parquet")
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


# --- scripts/migrate_store.py -------------------------------------------------------------
def migrate_store(root: Path, quiet: bool = False) -> int:
    """``root``'s runs moved to the current identity format (``runner.migrate``): what
    moved on stdout (nothing with ``quiet`` when there was nothing to do), folders left
    (being trained, unreadable, recorded twice) on stderr, and status 1 if any were."""
    if not root.exists():
        if not quiet:
            print(f"{root}: no results store here; nothing to migrate")
        return 0
    done = migrate.migrate(root)
    if done.moved or done.skipped or not quiet:
        print(f"{root}: {done.headline()}")
        for old, new in done.moved:
            print(f"  {old} -> {new.name}")
        for line in done.skipped:
            print(f"  skipped {line}", file=sys.stderr)
    return 1 if done.skipped else 0


# --- scripts/claims.py --------------------------------------------------------------------
def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def check_claims(replicates: Path, out: Path, claims_file: Path) -> int:
    """The §6.2 claims on the replicates table: claims.md and claims.csv in ``out``; the
    verdict counts of the checks and of the sentences, then both paths."""
    for path in (replicates, claims_file):
        if not path.is_file():
            print(f"error: no such file: {path}", file=sys.stderr)
            return 1
    try:
        table = claims.validate_replicates(read_table(replicates), str(replicates))
        claim_list, settings = claims.load(claims_file)
        summary = aggregate.summary(table)
        paths = claims.write(table, out, claim_list, settings, summary,
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
