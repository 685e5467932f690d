"""Moving a store's runs to the current identity format, once (``make migrate-store``).

A run's folder is named by the hash of its identity (``store``), so a change of the
identity's format (``records.IDENTITY_VERSION``) would leave every recorded run where the
runner no longer looks, and a reproduction would train it again. ``migrate`` rewrites each
old ``identity.json`` in the current format (``records.upgrade_identity``: the same run,
nothing else in the folder changes) and renames the folder to its new hash; the old
identity is kept beside it as ``identity.v1.json``. Each folder is migrated under its run
lock (a run being trained is left for a later pass) in two steps that a killed migration
finishes on its next pass: the identity is rewritten first, the folder renamed second.

``unmigrated`` finds what is left; the runner and the reproduction refuse to start on a
store that holds old records of the runs they want (``refuse_unmigrated``), with one line
that names the command, instead of training them again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import CorruptRecord, ResultsError, RunLock, RunLocked, atomic_write_json
from .records import (
    hashed,
    identity_version,
    read_identity,
    run_leaf,
    unhashed,
    upgrade_identity,
)
from .store import run_dirs

OLD_IDENTITY = "identity.v1.json"


@dataclass
class Migration:
    """What one pass did, folder by folder."""

    moved: list[tuple[Path, Path]] = field(default_factory=list)
    current: int = 0  # already in the current format and folder
    skipped: list[str] = field(default_factory=list)  # one line each: the folder and why

    def headline(self) -> str:
        return f"{len(self.moved)} run(s) migrated, {self.current} already current"


def _folders(root: Path) -> list[Path]:
    return [run.path for run in run_dirs(root)]


def _needs_work(folder: Path) -> bool | None:
    """Whether the folder is an old record or misnamed; None if it cannot be read."""
    try:
        stored = read_identity(folder / "identity.json")
    except (CorruptRecord, FileNotFoundError):
        return None
    if identity_version(stored) == 1:
        return True
    return folder.name != run_leaf(unhashed(stored))


def unmigrated(root: Path) -> list[Path]:
    """The run folders under ``root`` still in an old format (or not yet renamed)."""
    return [f for f in _folders(root) if _needs_work(f)] if Path(root).exists() else []


def _migrate_one(folder: Path) -> Path:
    """The folder's new path, after rewriting its identity and renaming it (the identity
    read again under the run lock: it may have changed since ``_needs_work`` looked)."""
    stored = read_identity(folder / "identity.json")
    if identity_version(stored) == 1:
        new = upgrade_identity(stored)
        atomic_write_json(folder / OLD_IDENTITY, stored)
        atomic_write_json(folder / "identity.json", hashed(new))
    else:
        new = unhashed(stored)
    target = folder.with_name(run_leaf(new))
    if target != folder:
        if target.exists():
            raise ResultsError(
                f"{folder}: its run is also recorded in {target.name}; keep the one you "
                "want (the other is the same run) and migrate again"
            )
        os.rename(folder, target)
    return target


def migrate(root: Path) -> Migration:
    """Move every old record under ``root`` to the current format; safe to run again."""
    done = Migration()
    for folder in _folders(root):
        work = _needs_work(folder)
        if work is None:
            done.skipped.append(f"{folder}: identity.json cannot be read (left as it is)")
            continue
        if not work:
            done.current += 1
            continue
        try:
            with RunLock(folder):
                done.moved.append((folder, _migrate_one(folder)))
        except RunLocked:
            done.skipped.append(f"{folder}: being trained; migrate again when it ends")
        except ResultsError as err:
            done.skipped.append(str(err))
    return done


def refuse_unmigrated(folders) -> None:
    """A ResultsError (one line) if any of ``folders`` holds runs in an old format."""
    old = [f for folder in folders for f in unmigrated(Path(folder))]
    if old:
        where = os.path.commonpath([str(f) for f in old])
        raise ResultsError(
            f"{len(old)} run(s) under {where} were recorded in an older identity format "
            f"and would be trained again; migrate them once (nothing retrains): make "
            f"migrate-store RESULTS={where}"
        )
