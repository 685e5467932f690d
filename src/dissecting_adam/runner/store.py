"""The results store: one folder per run, keyed by everything that can change its result.

Layout (``root`` is ``results`` by default)::

    <root>/<profile>/<problem>/<optimizer>/lr=<lr>/seed=<seed>-<hash>/
        identity.json    the run's identity and its hash (written first)
        config.yaml      the resolved RunSpec (every value in effect)
        environment.json git commit, versions, device, host, one entry per session
        metrics.jsonl    one JSON row per measurement, appended while training runs
        checkpoint.pt    the latest checkpoint, and checkpoint.prev.pt the one before
                         (removed when the run ends)
        .lock            held by the process training the run (``files.RunLock``)
        summary.json     written last: status (completed, diverged, failed) and final metrics;
                         a finished one also records metrics.jsonl's row count and sha256

``<hash>`` is a short hash of the identity, so two configs that differ in anything but the
readable parts (lr, seed) still never share a folder, and "skip if finished" compares the
full identity. Files are written atomically (``files``): a killed run never leaves a file
that reads as complete, and a file that cannot be read is moved aside, never deleted.

A finished record verifies itself: its summary holds the row count and sha256 of the
metrics file it summarises, so a damaged or shortened metrics.jsonl (one zeroed line turns
a run's "final" accuracy into an earlier one) is named and never used: ``collect`` leaves
the run out, ``is_finished`` says no, and the next session moves both files aside and
trains the run again. Records of the wrong shape (valid JSON, but not a summary or an
identity) count as unreadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .environment import environment
from .files import (
    CorruptRecord,
    ResultsError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    dumps,
    loads,
    move_aside,
    read_json,
)
from .records import (  # noqa: F401 - config_hash, format_lr: read through store too
    config_hash,
    format_lr,
    hashed,
    metrics_digest,
    read_identity,
    run_leaf,
    same_identity,
)

log = logging.getLogger(__name__)


def run_dirs(root: Path) -> list[RunDir]:
    """Every run folder under ``root`` (those holding an identity.json), sorted by path."""
    return [RunDir(p.parent) for p in sorted(Path(root).rglob("identity.json"))]


#: Run statuses that mean "finished": a rerun of the same config returns at once.
FINISHED = ("completed", "diverged")


@dataclass(frozen=True)
class RunDir:
    """The folder of one run and the files in it."""

    path: Path

    @classmethod
    def for_identity(cls, root: Path, identity: dict) -> RunDir:
        """``<root>/<profile>/<problem>/<optimizer>/lr=<lr>/seed=<seed>-<hash>``."""
        leaf = run_leaf(identity)
        lr = format_lr(identity["optimizer_kwargs"]["lr"])
        parts = (identity["profile"], identity["problem"], identity["optimizer"], f"lr={lr}")
        return cls(Path(root).joinpath(*parts, leaf))

    identity_file = property(lambda self: self.path / "identity.json")
    config_file = property(lambda self: self.path / "config.yaml")
    environment_file = property(lambda self: self.path / "environment.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint_file = property(lambda self: self.path / "checkpoint.prev.pt")
    summary_file = property(lambda self: self.path / "summary.json")

    # --- state ----------------------------------------------------------------------
    def summary(self) -> dict | None:
        """The summary; None while there is none. A CorruptRecord if it cannot be read or
        is not a summary (a JSON object with a status)."""
        try:
            summary = read_json(self.summary_file)
        except FileNotFoundError:
            return None
        if not isinstance(summary, dict) or not isinstance(summary.get("status"), str):
            what = "no status" if isinstance(summary, dict) else f"a JSON {type(summary).__name__}"
            raise CorruptRecord(self.summary_file, f"not a summary ({what})")
        return summary

    def verify(self, summary: dict) -> str | None:
        """Why metrics.jsonl does not match ``summary`` (a finished one), or None.

        Summaries written before digests were recorded are checked for unreadable lines.
        """
        try:
            data = self.metrics_file.read_bytes()
        except FileNotFoundError:
            data = None
        if "metrics_sha256" in summary:
            found = metrics_digest(data or b"")
            if found["metrics_sha256"] != summary["metrics_sha256"]:
                has = f"{found['metrics_rows']} rows, sha256 {found['metrics_sha256'][:12]}"
                has = "missing" if data is None else has
                return (
                    f"does not match summary.json ({has}; summary.json records "
                    f"{summary.get('metrics_rows')} rows, sha256 "
                    f"{str(summary['metrics_sha256'])[:12]})"
                )
            return None
        for n, line in enumerate((data or b"").splitlines(), start=1):
            try:
                loads(line.decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                return f"line {n} of a finished run cannot be read"
        return None

    def finished(self, identity: dict) -> dict | None:
        """The summary of a finished, verified run of exactly this identity, or None.

        An unreadable record, or metrics that do not match their summary, are named and
        count as not finished (the next session keeps them aside and redoes the run).
        """
        try:
            summary = self.summary()
            if summary is None or summary.get("status") not in FINISHED:
                return None
            stored = read_identity(self.identity_file)
        except FileNotFoundError:
            return None
        except CorruptRecord as err:
            log.warning("%s; the run will be redone (the file is kept aside)", err)
            return None
        if not same_identity(stored, identity):
            return None
        damaged = self.verify(summary)
        if damaged:
            log.warning("%s: %s; the run will be redone (both files are kept aside)",
                        self.metrics_file, damaged)  # fmt: skip
            return None
        return summary

    def is_finished(self, identity: dict) -> bool:
        """Whether ``finished(identity)`` has a summary."""
        return self.finished(identity) is not None

    # --- writing --------------------------------------------------------------------
    def start(self, identity: dict, config_yaml: str, force: bool = False) -> None:
        """Create the folder and record the identity and config; ``force`` restarts it.

        A different identity already in the folder (a hash collision) is an error, never
        overwritten. Unreadable records are moved aside (``<name>.corrupt-<time>``): an
        unreadable identity takes the whole folder with it, since nothing in it can be
        trusted to belong to this run.
        """
        if self.path.exists() and self.identity_file.exists():
            try:
                stored = read_identity(self.identity_file)
            except CorruptRecord as err:
                log.warning("%s; moved the run folder to %s", err, move_aside(self.path))
            else:
                if not same_identity(stored, identity):
                    raise ResultsError(
                        f"{self.path} holds a run of a different config (hash collision): "
                        "move that folder away, then rerun."
                    )
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            summary = self.summary()
        except CorruptRecord as err:
            log.warning("%s; moved to %s", err, move_aside(self.summary_file))
            summary = None
        try:
            read_json(self.environment_file)
        except FileNotFoundError:
            pass
        except CorruptRecord as err:
            log.warning("%s; moved to %s", err, move_aside(self.environment_file))
        if summary is not None and summary["status"] in FINISHED and not force:
            damaged = self.verify(summary)
            if not damaged:  # the caller checks under the run lock; this never happens then
                raise ResultsError(
                    f"{self.path} holds a finished run; it is kept. "
                    "Use force=true to train it again."
                )
            aside = [move_aside(f) for f in (self.summary_file, self.metrics_file) if f.exists()]
            log.warning("%s: %s; moved to %s and training the run again", self.metrics_file,
                        damaged, ", ".join(map(str, aside)))  # fmt: skip
        if force:
            for f in (self.metrics_file, self.checkpoint_file, self.previous_checkpoint_file):
                f.unlink(missing_ok=True)
        self.summary_file.unlink(missing_ok=True)  # a restarted run is not finished
        atomic_write_json(self.identity_file, hashed(identity))
        atomic_write_text(self.config_file, config_yaml)

    def append_metrics(self, rows: list[dict]) -> int:
        """Append rows to metrics.jsonl (flushed); return the file's size afterwards."""
        with open(self.metrics_file, "a") as f:
            for row in rows:
                f.write(dumps(row, sort_keys=True) + "\n")
            f.flush()
            return f.tell()

    def truncate_metrics(self, size: int) -> None:
        """Keep the first ``size`` bytes of metrics.jsonl (rows written before a checkpoint)."""
        data = self.metrics_file.read_bytes()[:size] if self.metrics_file.exists() else b""
        atomic_write_text(self.metrics_file, data.decode())

    def write_summary(self, summary: dict) -> None:
        """Write summary.json; a finished one records the digest of metrics.jsonl."""
        if summary.get("status") in FINISHED:
            data = self.metrics_file.read_bytes() if self.metrics_file.exists() else b""
            summary.update(metrics_digest(data))
        atomic_write_json(self.summary_file, summary)

    def metrics_match(self, size: int, sha256: str | None) -> str | None:
        """Why metrics.jsonl does not begin with what a checkpoint recorded, or None."""
        have = self.metrics_file.stat().st_size if self.metrics_file.exists() else 0
        if have < size:
            return f"{self.metrics_file} has {have} bytes, the checkpoint expects {size}"
        if sha256 is not None and self.metrics_sha256(size) != sha256:
            return f"{self.metrics_file} differs from what the checkpoint recorded"
        return None

    def metrics_sha256(self, size: int) -> str:
        """The sha256 of the first ``size`` bytes of metrics.jsonl (recorded by checkpoints)."""
        data = b""
        if self.metrics_file.exists():
            with open(self.metrics_file, "rb") as f:
                data = f.read(size)
        return hashlib.sha256(data).hexdigest()

    def _environment(self) -> dict:
        try:
            env = read_json(self.environment_file)
        except FileNotFoundError:
            env = {"sessions": []}
        except CorruptRecord as err:
            log.warning("%s; moved to %s", err, move_aside(self.environment_file))
            env = {"sessions": []}
        if "environment" not in env:
            env["environment"] = environment()
        return env

    def add_session(self, session: dict) -> None:
        """Record one training session (start, end, wall time, host) in environment.json.

        Called under the run lock, so a session still marked running ended without its
        record (its process was killed, or the disk was full): it is marked ``lost``.
        """
        env = self._environment()
        for old in env["sessions"]:
            if old.get("status") == "running":
                old.update(status="lost", error="ended without a record (process killed, "
                           "or its disk was full); the next session resumed the run")  # fmt: skip
        env["sessions"].append(session)
        atomic_write_json(self.environment_file, env)

    def update_session(self, start: str, changes: dict) -> None:
        """Complete the session that began at ``start`` (recorded as running until then)."""
        env = self._environment()
        for session in reversed(env["sessions"]):
            if session.get("start") == start and session.get("status") == "running":
                session.update(changes)
                break
        else:
            env["sessions"].append(changes)
        atomic_write_json(self.environment_file, env)

    def adopt(self, prefix: RunDir) -> bool:
        """Start this run from ``prefix``, a finished first part of it (a step-size probe:
        the same run stopped early, which kept its checkpoint): copy its metrics and final
        checkpoint here, so that training resumes where it stopped. Only into a run that
        has not started; returns whether it did."""
        started = self.metrics_file.exists() and self.metrics_file.stat().st_size > 0
        if started or self.checkpoint_file.exists() or self.summary_file.exists():
            return False
        try:
            summary = prefix.summary()
        except CorruptRecord:
            return False
        if not prefix.checkpoint_file.exists() or summary is None:
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.metrics_file, prefix.metrics_file.read_text())
        atomic_write(self.checkpoint_file, lambda tmp: shutil.copyfile(prefix.checkpoint_file, tmp))
        steps = summary.get("steps_done")
        self.add_session({"adopted_from": str(prefix.path), "steps": steps, "status": "adopted"})
        return True

    def read_metrics(self) -> list[dict]:
        """Every complete row of metrics.jsonl (a torn last line of a killed run is dropped)."""
        if not self.metrics_file.exists():
            return []
        rows = []
        for line in self.metrics_file.read_text(errors="replace").splitlines():
            try:
                rows.append(loads(line))
            except json.JSONDecodeError:
                break
        return rows
