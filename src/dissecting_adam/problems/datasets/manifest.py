"""The manifest (``MANIFEST.json``) of the files extracted or preprocessed from downloads.

The files extracted or preprocessed from the verified downloads are recorded in a
``MANIFEST.json`` (sha256 of every file) when they are produced, and checked against it on
every load. A file that does not match is regenerated from the verified download (with a
:class:`~.integrity.DataWarning` naming it), or, where the download is gone, a
:class:`~.integrity.DataError` names the file and the fix. The manifest's short hash is the
data's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .integrity import MIRROR_ENV, DataError, DataWarning, atomic_write, sha256_file

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """The sha256 of every file a data set's loader reads, recorded when they were produced.

    ``files`` maps paths relative to the manifest's folder to sha256; ``sources`` maps the
    verified downloads they came from to md5; ``preprocessing`` holds settings that shape the
    data beyond the files (tolstoi's line deletions).
    """

    dataset: str
    files: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over the data set's name, file hashes and preprocessing settings:
        the same data gives the same value on every machine and under every data root."""
        blob = json.dumps(
            {"dataset": self.dataset, "files": self.files, "preprocessing": self.preprocessing},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, folder: Path, names: Sequence[str], dataset: str, sources, preprocessing):
        files = {name: sha256_file(Path(folder) / name) for name in names}
        return cls(dataset, files, dict(sources), json.loads(json.dumps(preprocessing)))

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``; None if absent or unreadable (then it is rebuilt)."""
        path = Path(folder) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                return None
            return cls(raw["dataset"], raw["files"], raw["sources"], raw["preprocessing"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            warnings.warn(f"{path} is unreadable: rebuilding it.", DataWarning, stacklevel=3)
            return None

    def write(self, folder: Path) -> None:
        path = Path(folder) / MANIFEST_NAME
        content = {"format": MANIFEST_FORMAT, "algorithm": "sha256", **dataclasses.asdict(self)}
        try:
            with atomic_write(path) as out:
                out.write((json.dumps(content, indent=1, sort_keys=True) + "\n").encode())
        except OSError as err:
            raise DataError(f"Cannot write {path} ({err}): is the data root writable?") from err

    def mismatches(self, folder: Path) -> list[tuple[str, str, str | None]]:
        """(name, recorded sha256, actual sha256 or None if missing) of every differing file."""
        bad = []
        for name, recorded in self.files.items():
            path = Path(folder) / name
            actual = sha256_file(path) if path.is_file() else None
            if actual != recorded:
                bad.append((name, recorded, actual))
        return bad


def _existing(paths: dict[str, Path]) -> set[str]:
    return {str(p) for p in paths.values() if Path(p).is_file()}


def verify_or_rebuild(
    folder: Path,
    names: Sequence[str],
    *,
    dataset: str,
    sources: dict[str, str],
    downloads: dict[str, Path],
    fetch: Callable[[], None],
    rebuild: Callable[[list[str]], None],
    preprocessing: dict | None = None,
) -> Manifest:
    """Check the files ``names`` in ``folder`` against its manifest; rebuild them if needed.

    ``downloads`` maps each name to the verified original it comes from (md5-checked by the
    caller when present), ``fetch()`` obtains the missing ones (raising DataError),
    ``rebuild(some_names)`` produces those files (at least) from their downloads. Without a
    current manifest (first use, or different sources or settings) the files are rebuilt from
    the downloads and recorded.
    With one, files that differ are rebuilt with a DataWarning naming them; if a download is
    gone, a DataError names the files and the fix. Returns the (verified) manifest.
    """
    folder = Path(folder)
    preprocessing = dict(preprocessing or {})
    manifest = Manifest.read(folder)
    current = (
        manifest is not None
        and manifest.dataset == dataset
        and manifest.sources == sources
        and manifest.preprocessing == json.loads(json.dumps(preprocessing))
        and set(manifest.files) == set(names)
    )
    if not current:
        fetch()
        rebuild(list(names))
        fresh = Manifest.build(folder, names, dataset, sources, preprocessing)
        fresh.write(folder)
        return fresh
    bad = manifest.mismatches(folder)
    if not bad:
        return manifest
    listing = "\n".join(
        f"  {folder / name}: sha256 {actual or '(missing)'}, recorded {recorded}"
        for name, recorded, actual in bad
    )
    missing = sorted({str(downloads[name]) for name, _, _ in bad} - _existing(downloads))
    if missing:
        raise DataError(
            f"The {dataset} data under {folder} does not match its manifest "
            f"{folder / MANIFEST_NAME}:\n{listing}\nand the verified download it is produced "
            f"from is not there to regenerate it ({', '.join(missing)}). "
            f"Fix: delete {folder} and rerun `python scripts/prepare_data.py` (with network "
            f"access, or with {MIRROR_ENV}=<mirror> holding the original downloads)."
        )
    for name, recorded, actual in bad:
        warnings.warn(
            f"{folder / name} does not match its recorded checksum in {folder / MANIFEST_NAME} "
            f"(sha256 {actual or '(missing)'}, recorded {recorded}): regenerating it from the "
            f"verified download {downloads[name]}.",
            DataWarning,
            stacklevel=3,
        )
    rebuild([name for name, _, _ in bad])
    fresh = Manifest.build(folder, names, dataset, sources, preprocessing)
    if fresh.files != manifest.files:
        # Rebuilt from md5-verified downloads, so the files are right and the manifest was
        # not (edited, or written by a different extractor): record the truth.
        warnings.warn(
            f"{folder / MANIFEST_NAME} did not match the files regenerated from the verified "
            "downloads: rewriting it.",
            DataWarning,
            stacklevel=3,
        )
        fresh.write(folder)
    return fresh
