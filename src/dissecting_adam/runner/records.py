"""What a run's record files must say: the identity's hash and folder label, the shape of a
stored identity, and the digest a finished summary records of its metrics file."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .files import CorruptRecord, read_json


def config_hash(identity: dict) -> str:
    """A short, stable hash of a JSON-serialisable identity (key order does not matter)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def hashed(identity: dict) -> dict:
    """``identity`` as identity.json stores it: with its ``config_hash``."""
    return {**identity, "config_hash": config_hash(identity)}


def unhashed(stored: dict) -> dict:
    """A stored identity without its ``config_hash``: the identity that was hashed."""
    return {k: v for k, v in stored.items() if k != "config_hash"}


def run_leaf(identity: dict) -> str:
    """A run folder's name: ``seed=<seed>-<hash>`` (the hash of ``identity``, without its
    stored ``config_hash``)."""
    return f"seed={identity['seed']}-{config_hash(identity)}"


def format_lr(lr: float) -> str:
    """A readable, lossless-enough folder label: 0.3 -> '0.3', 3e-05 -> '3e-05'."""
    return format(float(lr), ".6g")


#: The identity's format. 2 (2026-12-04) lists every setting that defines the run, at its
#: value, and names its version; 1 left out the settings added later while they were at
#: their defaults, so that older runs kept their hashes. ``upgrade_identity`` turns a 1
#: into a 2 and ``runner.migrate`` moves a store's runs to their new folders, once.
IDENTITY_VERSION = 2


def identity_version(stored: dict) -> int:
    """The format of a stored identity (1: written before the version was recorded)."""
    return int(stored.get("identity_version", 1))


def upgrade_identity(stored: dict) -> dict:
    """A stored version-1 identity as version 2 (without its hash): the same run.

    Version 1 omitted ``train.stop_at`` and ``train.compile`` when None, recorded fp32 as
    ``allow_tf32: false`` and bf16 as ``precision: bf16`` (TF32, the default, not at all),
    and ``flush_denormal`` only when true.
    """
    if identity_version(stored) != 1:
        raise ValueError(f"not a version-1 identity (version {identity_version(stored)})")
    old = {k: v for k, v in stored.items() if k not in ("config_hash", "allow_tf32")}
    return {
        **old,
        "identity_version": IDENTITY_VERSION,
        "train": {"stop_at": None, "compile": None, **old["train"]},
        "precision": precision_of(stored),
        "flush_denormal": bool(stored.get("flush_denormal", False)),
    }


#: What an identity.json must hold for its folder to be placed and collected.
IDENTITY_KEYS = ("profile", "problem", "optimizer", "optimizer_kwargs", "seed", "config_hash")


def read_identity(path: Path) -> dict:
    """A stored identity; CorruptRecord when it is unreadable or not an identity."""
    stored = read_json(path)
    if not isinstance(stored, dict):
        raise CorruptRecord(path, f"not an identity (a JSON {type(stored).__name__})")
    missing = [k for k in IDENTITY_KEYS if k not in stored]
    if missing:
        raise CorruptRecord(path, f"not an identity (no {', '.join(missing)})")
    lr = (
        stored["optimizer_kwargs"].get("lr")
        if isinstance(stored["optimizer_kwargs"], dict)
        else None
    )
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise CorruptRecord(path, f"not an identity (optimizer_kwargs.lr is {lr!r})")
    if isinstance(stored["seed"], bool) or not isinstance(stored["seed"], int):
        raise CorruptRecord(path, f"not an identity (seed is {stored['seed']!r})")
    return stored


def precision_of(identity: dict) -> str:
    """A stored identity's precision: ``precision`` (always there from version 2 on; in
    version 1 only where not the default), version 1's ``allow_tf32: false`` for fp32,
    else tf32 (TF32 on CUDA; a CPU run of this setting computed in plain fp32)."""
    if "precision" in identity:
        return str(identity["precision"])
    return "fp32" if identity.get("allow_tf32") is False else "tf32"


def metrics_digest(data: bytes) -> dict:
    """What a summary records of the metrics file it summarises."""
    return {"metrics_rows": data.count(b"\n"), "metrics_sha256": hashlib.sha256(data).hexdigest()}


def same_identity(stored: dict, identity: dict) -> bool:
    """Whether a stored identity.json (which also holds its hash) records ``identity``."""
    return unhashed(stored) == json.loads(json.dumps(identity))
