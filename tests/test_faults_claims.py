"""Claims faults: runs that stop short of the claim's step, stray rows, files written with
the wrong mode or half-written, and replicates tables that cannot be one.

Every table is hand-made (three seeds, evaluations at steps 0, 10, 50 and 100), so the
verdict each case should give is known; the reproduction whose outputs are written is a
stand-in with the attributes ``outputs.write`` reads.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.figure
import pandas as pd
import pytest

from dissecting_adam.protocol import claims, commands, outputs
from dissecting_adam.protocol.claims import Claim, ClaimSettings
from dissecting_adam.protocol.search import Outcome, Selection
from dissecting_adam.runner import store

PAPER = Path(__file__).resolve().parents[1] / "conf" / "claims" / "paper.yaml"
P1 = "fmnist_2c2d"
# Per method, per seed: (train loss, test accuracy) at step 100; at step 50 the sign-based
# methods still lag behind (loss 1.0), so reading them there reverses observation 2.
FINAL = {"adam": [(0.10, 0.91), (0.11, 0.911), (0.09, 0.909)],
         "mssd": [(0.10, 0.91), (0.11, 0.912), (0.09, 0.908)],
         "msgd": [(0.30, 0.90), (0.31, 0.901), (0.29, 0.899)],
         "msvag": [(0.30, 0.90), (0.31, 0.901), (0.29, 0.899)]}  # fmt: skip
HALFWAY = {"adam": 1.0, "mssd": 1.0, "msgd": 0.5, "msvag": 0.5}


def runs(final=FINAL, problem=P1, lr=0.1) -> pd.DataFrame:
    rows = []
    for optimizer, values in final.items():
        for seed, (loss, acc) in enumerate(values):
            at = {0: (2.3, 0.1), 10: (2.0, 0.3), 50: (HALFWAY[optimizer] + seed / 100, 0.6),
                  100: (loss, acc)}  # fmt: skip
            for step, (l_, a_) in at.items():
                for split in ("train_eval", "test"):
                    rows.append(dict(problem=problem, optimizer=optimizer, lr=lr, seed=seed,
                                     step=step, split=split, loss=l_, accuracy=a_,
                                     status="completed"))  # fmt: skip
    return pd.DataFrame(rows)


def per_check(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop_duplicates(["claim", "problem"]).set_index("claim")


# --- item 2: every value is read at exactly the claim's step ----------------------------------
def test_a_method_without_its_last_evaluation_is_left_out_as_incomplete(tmp_path):
    """The named case: one method's last-step rows removed. Read at step 50 it would
    contradict observation 2 (Adam's loss 1.0 against M-SGD's 0.3)."""
    reps = runs()
    reps = reps[~((reps["optimizer"] == "adam") & (reps["step"] == 100))]
    claim_list, settings = claims.load(PAPER)
    table = claims.check(reps, claim_list, settings)
    assert "contradicted" not in set(table["claim_verdict"])
    adam = table[table["a"] == "adam"]
    assert len(adam) and (adam["n_a"] == 0).all() and (adam["incomplete_a"] == 3).all()
    assert (adam["at_step"] == 100).all() and adam["mean_a"].isna().all()
    assert (
        "3 of Adam's 3 runs have no evaluation at step 100 (incomplete)" in adam["reason"].iloc[0]
    )
    checks = per_check(table)
    assert checks.loc["o2_sign_better_p1", "incomplete"] == 3
    assert checks.loc["o2_sign_better_p1", "claim_verdict"] == "untestable"  # no Adam value
    assert checks.loc["o3_msvag_ge_msgd_loss", "incomplete"] == 0  # Adam is not in it

    paths = claims.write(reps, tmp_path, claim_list, settings)
    md = paths["claims"].read_text()
    assert "checks left out incomplete runs**" in md
    assert "left out as incomplete (no evaluation at step 100): 3 runs (Adam 3)" in md
    back = pd.read_csv(paths["claims_csv"])
    assert back.loc[back["claim"] == "o2_sign_better_p1", "incomplete"].eq(3).all()


def test_some_seeds_without_their_last_evaluation_leave_the_others():
    reps = runs()
    reps = reps[~((reps["optimizer"] == "adam") & (reps["seed"] == 2) & (reps["step"] == 100))]
    c = Claim(id="c", sentence="s", problems=(P1,), a=("adam",), b=("msgd",),
              metric="train_loss", kind="better")  # fmt: skip
    row = claims.check(reps, [c], ClaimSettings()).iloc[0]
    assert row["mean_a"] == pytest.approx((0.10 + 0.11) / 2)  # not seed 2's 1.02 at step 50
    assert (row["n_a"], row["missing_a"], row["incomplete_a"]) == (2, 1, 1)


def test_a_stray_row_of_another_seed_is_not_a_final_value():
    """A seed with only its step-0 rows would count 2.3 (its initial loss) as a final value."""
    reps = runs()
    stray = reps[(reps["optimizer"] == "msgd") & (reps["seed"] == 0) & (reps["step"] == 0)]
    reps = pd.concat([reps, stray.assign(seed=7)], ignore_index=True)
    c = Claim(id="c", sentence="s", problems=(P1,), a=("adam",), b=("msgd",),
              metric="test_accuracy", kind="better")  # fmt: skip
    row = claims.check(reps, [c], ClaimSettings()).iloc[0]
    assert row["mean_b"] == pytest.approx(0.90)  # not pulled down by the stray 0.1
    assert row["pair_verdict"] == "confirmed"
    assert (row["n_b"], row["missing_b"], row["incomplete_b"]) == (3, 1, 1)


def test_a_run_without_the_early_evaluation_is_incomplete():
    reps = runs()
    reps = reps[~((reps["optimizer"] == "msgd") & (reps["seed"] == 1) & (reps["step"] == 10))]
    c = Claim(id="c", sentence="s", problems=(P1,), a=("adam",), b=("msgd",),
              metric="train_loss", kind="better", when="early")  # fmt: skip
    row = claims.check(reps, [c], ClaimSettings()).iloc[0]
    assert (row["at_step"], row["n_b"], row["incomplete_b"], row["incomplete"]) == (10, 2, 1, 1)


# --- item 7: one atomic writer, the umask's mode ----------------------------------------------
@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_claims_files_have_the_umask_mode(tmp_path):
    with umask(0o022):
        paths = claims.write(runs(), tmp_path, *claims.load(PAPER))
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in paths.values()} == {
        "claims.md": "0o644", "claims.csv": "0o644"}  # fmt: skip
    assert leftovers(tmp_path) == []


def reproduction(tmp_path: Path, monkeypatch):
    """A stand-in for the driver's Reproduction of P1's four methods, whose store holds
    ``runs()`` under the replicates' identity hashes; and its ``chosen``."""
    pairs = [(P1, m) for m in FINAL]
    identity = lambda pair, lr, seed: {"pair": list(pair), "lr": lr, "seed": seed}  # noqa: E731
    table = runs().assign(profile="paper", data_variant="real")
    table["config_hash"] = [store.config_hash(identity((P1, o), lr, s))
                            for o, lr, s in zip(table["optimizer"], table["lr"], table["seed"],
                                                strict=True)]  # fmt: skip
    monkeypatch.setattr(outputs, "collect", lambda root: table)
    base = SimpleNamespace(
        results_root=str(tmp_path / "results"), logger=SimpleNamespace(name="none")
    )
    r = SimpleNamespace(
        out_dir=tmp_path / "out", base=dict.fromkeys(pairs, base), pairs=pairs, profile="paper",
        search=SimpleNamespace(replicate_seeds=[0, 1, 2], metric="test_accuracy",
                               lrs=lambda method: [1.0, 0.1]),
        replicate=lambda pair, lr, seed: SimpleNamespace(identity=lambda: identity(pair, lr, seed)),
        claims=claims.load(PAPER),
    )  # fmt: skip
    ok, bad = Outcome("completed", 0.9, True), Outcome("diverged")
    state = SimpleNamespace(outcomes={0.1: ok, 1.0: bad}, top=1, cap_reached=False,
                            probes={0.1: ok, 1.0: bad})  # fmt: skip
    return r, {pair: (Selection(lr=0.1, metric=0.9), state) for pair in pairs}


OUTPUTS = ["search.csv", "search.md", "sensitivity_fmnist_2c2d.pdf", "sensitivity_fmnist_2c2d.png",
           "replicates.parquet", "summary.csv", "summary.md", "curves.csv", "fig5.pdf",
           "fig5.png", "claims.md", "claims.csv", "selection.json"]  # fmt: skip


def test_outputs_have_the_umask_mode(tmp_path, monkeypatch):
    r, chosen = reproduction(tmp_path, monkeypatch)
    with umask(0o022):
        paths = outputs.write(r, chosen)
    assert paths["fig5"] == r.out_dir / "fig5.pdf" and paths["claims"] == r.out_dir / "claims.md"
    assert sorted(p.name for p in r.out_dir.iterdir()) == sorted(OUTPUTS)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in r.out_dir.iterdir()}
    assert modes == dict.fromkeys(OUTPUTS, "0o644")


@pytest.mark.parametrize(
    "target, owner, method",
    [
        ("summary.csv", pd.DataFrame, "to_csv"),
        ("claims.csv", pd.DataFrame, "to_csv"),
        ("summary.md", pathlib.Path, "write_text"),
        ("selection.json", pathlib.Path, "write_text"),
        ("fig5.png", matplotlib.figure.Figure, "savefig"),
    ],
)
def test_an_interrupted_output_keeps_the_previous_file(tmp_path, monkeypatch, target, owner,
                                                       method):  # fmt: skip
    """Disk full halfway through one file: the file from the last reproduction stays whole
    (a plain write would leave the half), and no temp file stays behind."""
    r, chosen = reproduction(tmp_path, monkeypatch)
    outputs.write(r, chosen)
    before = (r.out_dir / target).read_bytes()
    real = getattr(owner, method)

    def half_then_fail(self, *args, **kwargs):
        path = Path(str(self if owner is pathlib.Path else (args or ("",))[0]))
        if path.name != target and not path.name.startswith(f".{target}."):
            return real(self, *args, **kwargs)
        path.write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(owner, method, half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        outputs.write(r, chosen)
    assert (r.out_dir / target).read_bytes() == before
    assert leftovers(r.out_dir) == []


# --- item 12: a table that cannot be a replicates table ---------------------------------------
BAD_TABLES = [
    ("percent", lambda t: t.assign(accuracy=100 * t["accuracy"]),
     r"accuracy must be a fraction in \[0, 1\], found 10\.0 in 96 rows; divide percentages by 100"),
    ("string seed", lambda t: t.assign(seed=t["seed"].astype(str).replace("1", "a")),
     r"seed must be an integer, found 'a' in 32 rows; give each row its run's integer seed"),
    ("float seed", lambda t: t.assign(seed=t["seed"] + 0.5),
     r"seed must be an integer, found 0\.5 in 96 rows"),
    ("header only", lambda t: t.iloc[:0], r"has no rows \(a header only\): collect the"),
    ("no accuracy", lambda t: t.drop(columns=["accuracy"]), r"lacks the columns \['accuracy'\]"),
]  # fmt: skip


@pytest.mark.parametrize("case, damage, message", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_a_bad_replicates_table_is_refused_at_load(case, damage, message):
    with pytest.raises(ValueError, match=message):
        claims.validate_replicates(damage(runs()), "runs.csv")


def test_a_good_table_passes_with_integer_seeds():
    table = runs().assign(seed=lambda t: t["seed"].astype(float))  # e.g. a CSV with gaps
    assert claims.validate_replicates(table)["seed"].dtype.kind == "i"


@pytest.mark.parametrize("case, damage, message", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_the_script_refuses_a_bad_table_in_one_line(tmp_path, capsys, case, damage, message):
    damage(runs()).to_csv(tmp_path / "runs.csv", index=False)
    paper = Path(__file__).resolve().parents[1] / "conf" / "claims" / "paper.yaml"
    code = commands.check_claims(tmp_path / "runs.csv", tmp_path / "o", paper)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == "" and not (tmp_path / "o").exists()
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert re.search(message, captured.err)
