"""The results store: one folder per run, keyed by everything that can change its result.

Layout (``root`` is ``results`` by default)::

    <root>/<profile>/<problem>/<optimizer>/lr=<lr>/seed=<seed>-<hash>/
        identity.json    the run's identity and its hash (written first)
        config.yaml      the resolved Hydra config
        environment.json git commit, versions, device, host, one entry per session
        metrics.jsonl    one JSON row per measurement, appended while training runs
        checkpoint.pt    the latest checkpoint (removed when the run ends)
        summary.json     written last: status (completed, diverged, failed) and final metrics

``<hash>`` is a short hash of the identity, so two configs that differ in anything but the
readable parts (lr, seed) still never share a folder, and "skip if finished" compares the
full identity. JSON files are written atomically (temp file + rename): a killed run never
leaves a file that reads as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .environment import environment

#: Run statuses that mean "finished": a rerun of the same config returns at once.
FINISHED = ("completed", "diverged")

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


class ResultsError(RuntimeError):
    """A problem with the results directory; the message says how to fix it."""


def config_hash(identity: dict) -> str:
    """A short, stable hash of a JSON-serialisable identity (key order does not matter)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def format_lr(lr: float) -> str:
    """A readable, lossless-enough folder label: 0.3 -> '0.3', 3e-05 -> '3e-05'."""
    return format(float(lr), ".6g")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def check_writable(root: Path) -> Path:
    """Create ``root`` if needed and prove it writable, or raise a ResultsError with the fix."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ResultsError(
            f"Cannot write to the results directory {root} ({err.strerror or err}). "
            "Fix its permissions or choose another one with results_root=<dir>. "
            "No results were touched."
        ) from err
    return root


def _same_identity(stored: dict, identity: dict) -> bool:
    """Whether a stored identity.json (which also holds its hash) records ``identity``."""
    stored = {k: v for k, v in stored.items() if k != "config_hash"}
    return stored == json.loads(json.dumps(identity))


@dataclass(frozen=True)
class RunDir:
    """The folder of one run and the files in it."""

    path: Path

    @classmethod
    def for_identity(cls, root: Path, identity: dict) -> RunDir:
        """``<root>/<profile>/<problem>/<optimizer>/lr=<lr>/seed=<seed>-<hash>``."""
        leaf = f"seed={identity['seed']}-{config_hash(identity)}"
        lr = format_lr(identity["optimizer_kwargs"]["lr"])
        parts = (identity["profile"], identity["problem"], identity["optimizer"], f"lr={lr}")
        return cls(Path(root).joinpath(*parts, leaf))

    identity_file = property(lambda self: self.path / "identity.json")
    config_file = property(lambda self: self.path / "config.yaml")
    environment_file = property(lambda self: self.path / "environment.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    summary_file = property(lambda self: self.path / "summary.json")

    # --- state ----------------------------------------------------------------------
    def summary(self) -> dict | None:
        try:
            return read_json(self.summary_file)
        except FileNotFoundError:
            return None

    def is_finished(self, identity: dict) -> bool:
        """A summary with a finished status, written by a run of exactly this identity."""
        summary = self.summary()
        if summary is None or summary.get("status") not in FINISHED:
            return False
        try:
            stored = read_json(self.identity_file)
        except FileNotFoundError:
            return False
        return _same_identity(stored, identity)

    # --- writing --------------------------------------------------------------------
    def start(self, identity: dict, config_yaml: str, force: bool = False) -> None:
        """Create the folder and record the identity and config; ``force`` restarts it.

        A different identity already in the folder (a hash collision) is an error, never
        overwritten.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.identity_file.exists():
            stored = read_json(self.identity_file)
            if not _same_identity(stored, identity):
                raise ResultsError(
                    f"{self.path} holds a run of a different config (hash collision): "
                    "move that folder away, then rerun."
                )
        if force:
            for f in (self.summary_file, self.metrics_file, self.checkpoint_file):
                f.unlink(missing_ok=True)
        self.summary_file.unlink(missing_ok=True)  # a restarted run is not finished
        atomic_write_json(self.identity_file, {**identity, "config_hash": config_hash(identity)})
        atomic_write_text(self.config_file, config_yaml)

    def append_metrics(self, rows: list[dict]) -> int:
        """Append rows to metrics.jsonl (flushed); return the file's size afterwards."""
        with open(self.metrics_file, "a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            return f.tell()

    def truncate_metrics(self, size: int) -> None:
        """Keep the first ``size`` bytes of metrics.jsonl (rows written before a checkpoint)."""
        data = self.metrics_file.read_bytes()[:size] if self.metrics_file.exists() else b""
        atomic_write_text(self.metrics_file, data.decode())

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_file, summary)

    def add_session(self, session: dict) -> None:
        """Record one training session (start, end, wall time, host) in environment.json."""
        try:
            env = read_json(self.environment_file)
        except FileNotFoundError:
            env = {"sessions": []}
        if "environment" not in env:
            env["environment"] = environment()
        env["sessions"].append(session)
        atomic_write_json(self.environment_file, env)

    def read_metrics(self) -> list[dict]:
        """Every complete row of metrics.jsonl (a torn last line of a killed run is dropped)."""
        if not self.metrics_file.exists():
            return []
        rows = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows


# --- collection -------------------------------------------------------------------------
def run_dirs(root: Path) -> list[RunDir]:
    """Every run folder under ``root`` (those holding an identity.json), sorted by path."""
    return [RunDir(p.parent) for p in sorted(Path(root).rglob("identity.json"))]


def collect(root: Path):
    """All runs under ``root`` as one tidy pandas table (one row per measurement).

    Columns: COLUMNS plus ``data_loss`` (evaluations), ``diverged_step`` and
    ``data_variant`` (``real``, or ``synthetic`` for generated stand-ins). Runs without a
    summary (running or killed) have status ``incomplete``.
    """
    import pandas as pd

    frames = []
    for run in run_dirs(root):
        identity = read_json(run.identity_file)
        summary = run.summary() or {}
        rows = run.read_metrics()
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df["profile"] = identity["profile"]
        df["problem"] = identity["problem"]
        df["optimizer"] = identity["optimizer"]
        df["lr"] = float(identity["optimizer_kwargs"]["lr"])
        df["seed"] = int(identity["seed"])
        df["status"] = summary.get("status", "incomplete")
        df["diverged_step"] = summary.get("diverged_step")
        df["config_hash"] = identity["config_hash"]
        # Generated stand-in data (tests, smoke checks) must never pass for real results.
        df["data_variant"] = identity.get("data_variant", "real")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "data_loss", "diverged_step", "data_variant"])
    table = pd.concat(frames, ignore_index=True)
    for col in ("accuracy", "data_loss", "diverged_step"):
        if col not in table:
            table[col] = None
    rest = [c for c in table.columns if c not in COLUMNS]
    table = table[[*COLUMNS, *rest]]
    return table.sort_values(["profile", "problem", "optimizer", "lr", "seed", "step", "split"])


def write_table(table, path: Path) -> Path:
    """Write ``table`` atomically as parquet (``.parquet``) or CSV (any other suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
