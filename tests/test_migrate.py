"""The identity's format version and the one-off migration of stores recorded before it:
old identities read as the runs they recorded, a store is refused until migrated, migrated
once (a killed pass finishes on the next), and nothing retrains."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dissecting_adam.protocol import build, cli, commands
from dissecting_adam.runner import migrate, session, table
from dissecting_adam.runner.files import ResultsError, RunLock, atomic_write_json
from dissecting_adam.runner.plan import plan
from dissecting_adam.runner.records import (
    IDENTITY_VERSION,
    config_hash,
    identity_version,
    upgrade_identity,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = str(Path(__file__).resolve().parents[1] / "conf")
#: Identities as the code of commit 41ff232 (identity version 1) wrote them, with their
#: hashes: ten planned runs (fp32, bf16, compiled, flushed, smoke and preview profiles)
#: and one probe (stop_at).
V1 = json.loads((Path(__file__).parent / "data" / "identities_v1.json").read_text())


def as_version_1(identity: dict) -> dict:
    """What version 1 wrote for a version-2 identity (written out here, not imported)."""
    new_keys = ("identity_version", "config_hash", "precision", "flush_denormal")
    old = {k: v for k, v in identity.items() if k not in new_keys}
    old["train"] = {k: v for k, v in identity["train"].items()
                    if not (k in ("stop_at", "compile") and v is None)}  # fmt: skip
    if identity["precision"] == "fp32":
        old["allow_tf32"] = False
    elif identity["precision"] == "bf16":
        old["precision"] = "bf16"
    if identity["flush_denormal"]:
        old["flush_denormal"] = True
    return old


def make_old(root: Path) -> dict[Path, Path]:
    """Every run folder under ``root`` as version 1 recorded it; {old path: current path}."""
    moved = {}
    for ident_file in sorted(root.rglob("identity.json")):
        folder = ident_file.parent
        old = as_version_1(json.loads(ident_file.read_text()))
        atomic_write_json(ident_file, {**old, "config_hash": config_hash(old)})
        target = folder.with_name(f"seed={old['seed']}-{config_hash(old)}")
        os.rename(folder, target)
        moved[target] = folder
    return moved


@pytest.mark.parametrize("case", V1, ids=lambda c: c["identity"]["config_hash"])
def test_a_version_1_identity_upgrades_to_the_run_it_recorded(case):
    stored = case["identity"]
    assert (
        config_hash({k: v for k, v in stored.items() if k != "config_hash"})
        == (stored["config_hash"])
    )  # the fixture is what version 1 hashed
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        spec = plan(compose("train", overrides=case["overrides"]))
    spec = spec.derive(**case.get("derive", {}))
    new = upgrade_identity(stored)
    assert new == spec.identity() and identity_version(new) == IDENTITY_VERSION == 2
    assert as_version_1(new) == {k: v for k, v in stored.items() if k != "config_hash"}
    with pytest.raises(ValueError, match="not a version-1 identity"):
        upgrade_identity(new)


def test_every_setting_is_in_the_identity_at_its_value():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        ident = plan(compose("train", overrides=["problem=fmnist_2c2d"])).identity()
    assert ident["identity_version"] == 2 and ident["precision"] == "tf32"
    assert ident["flush_denormal"] is False
    assert ident["train"]["stop_at"] is None and ident["train"]["compile"] is None


def _cfg(root: Path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("reproduce", overrides=[
            "profile=smoke", "problems=[tolstoi_char_rnn]", "optimizers=[msgd]",
            f"results_root={root}", "device=cpu", "estimate=false",
            "search.replicate_seeds=[0]",
            "overrides=['data.variant=synthetic','train.checkpoint_every=null',"
            "'train.num_steps=3']", *extra])  # fmt: skip


def _run(cfg):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return cli.run(cfg)


def _records(root: Path) -> dict[Path, int]:
    return {p.parent: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def test_an_old_store_is_refused_then_migrated_once_and_nothing_retrains(tmp_path, capsys):
    _run(_cfg(tmp_path))
    before = _records(tmp_path)
    assert len(before) >= 3  # search runs and a replicate
    moved = make_old(tmp_path)
    with pytest.raises(ResultsError, match="older identity format") as err:
        _run(_cfg(tmp_path))
    assert "\n" not in str(err.value) and "make migrate-store RESULTS=" in str(err.value)
    cfg = _cfg(tmp_path)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):  # one run, on its own
        r = build.build(cfg)
    pair = next(iter(r.base))
    with pytest.raises(ResultsError, match="older identity format"):
        session.execute(r.replicate(pair, r.base[pair].optimizer.lr, 0))
    assert len(table.collect(tmp_path / "smoke").drop_duplicates("config_hash")) == len(before)

    assert commands.migrate_store(tmp_path) == 0
    out = capsys.readouterr().out
    assert f"{len(before)} run(s) migrated, 0 already current" in out
    assert _records(tmp_path) == before  # the same folders, the same untouched summaries
    for folder in before:
        kept = json.loads((folder / migrate.OLD_IDENTITY).read_text())
        assert kept["config_hash"] in {p.name.rsplit("-", 1)[1] for p in moved}
    _run(_cfg(tmp_path))  # finds everything
    assert _records(tmp_path) == before
    assert "0 search run(s), 0 replicate(s) to run" in capsys.readouterr().out
    assert commands.migrate_store(tmp_path, quiet=True) == 0
    assert capsys.readouterr().out == ""  # nothing to do, nothing said


def _one_old_run(tmp_path) -> tuple[Path, Path]:
    from conftest import tiny_spec

    done = session.execute(tiny_spec(tmp_path, "train.num_steps=2"))
    current = Path(done["run_dir"])
    ((old, _),) = make_old(tmp_path).items()
    return old, current


def test_a_killed_migration_finishes_on_the_next_pass(tmp_path, monkeypatch):
    old, current = _one_old_run(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(migrate.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate(tmp_path)
    monkeypatch.undo()
    assert identity_version(json.loads((old / "identity.json").read_text())) == 2
    assert migrate.unmigrated(tmp_path) == [old]  # rewritten, not yet renamed
    done = migrate.migrate(tmp_path)
    assert done.moved == [(old, current)] and migrate.unmigrated(tmp_path) == []
    # the kept identity is the version-1 one, not the rewritten one
    assert identity_version(json.loads((current / migrate.OLD_IDENTITY).read_text())) == 1


def test_a_run_being_trained_or_recorded_twice_is_left_and_named(tmp_path, capsys):
    old, current = _one_old_run(tmp_path)
    with RunLock(old):
        assert commands.migrate_store(tmp_path) == 1
    assert "being trained; migrate again when it ends" in capsys.readouterr().err
    assert old.exists() and not current.exists()
    current.mkdir()
    new = upgrade_identity(json.loads((old / "identity.json").read_text()))
    atomic_write_json(current / "identity.json", {**new, "config_hash": config_hash(new)})
    done = migrate.migrate(tmp_path)
    assert not done.moved and done.current == 1 and "also recorded in" in done.skipped[0]
    assert "\n" not in done.skipped[0]


def test_a_store_that_is_not_there_has_nothing_to_migrate(tmp_path, capsys):
    assert commands.migrate_store(tmp_path / "none") == 0
    assert "nothing to migrate" in capsys.readouterr().out
