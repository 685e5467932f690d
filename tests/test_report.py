"""Aggregation, the claims report and the figures, on a hand-made runs table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dissecting_adam.protocol import aggregate, claims, plots


def fake_runs(values: dict[str, tuple[float, float]], problem="fmnist_2c2d", seeds=5,
              steps=(0, 50, 100), diverge=None, lr=0.1) -> pd.DataFrame:  # fmt: skip
    """Runs whose final (train loss, test accuracy) per optimizer are ``values`` +- noise."""
    rng = np.random.default_rng(0)
    rows = []
    for optimizer, (loss, acc) in values.items():
        for seed in range(seeds):
            status = "diverged" if diverge == (optimizer, seed) else "completed"
            for step in steps:
                frac = step / steps[-1]
                for split in ("train_eval", "test"):
                    noise = rng.normal(0, 0.01)
                    rows.append(dict(
                        problem=problem, optimizer=optimizer, lr=lr, seed=seed, step=step,
                        split=split, loss=2.3 * (1 - frac) + loss * frac + noise,
                        accuracy=0.1 * (1 - frac) + acc * frac + noise, status=status,
                    ))  # fmt: skip
    return pd.DataFrame(rows)


def test_curves_mean_and_std_over_seeds():
    runs = fake_runs({"msgd": (0.3, 0.9)}, seeds=4)
    c = aggregate.curves(runs)
    last = c[(c["split"] == "test") & (c["step"] == 100)].iloc[0]
    values = runs[(runs["split"] == "test") & (runs["step"] == 100)]["accuracy"]
    assert last["n"] == 4
    assert last["accuracy_mean"] == pytest.approx(values.mean())
    assert last["accuracy_std"] == pytest.approx(values.std())


def test_summary_counts_diverged_and_leaves_them_out():
    runs = fake_runs({"msgd": (0.3, 0.9)}, seeds=4, diverge=("msgd", 2))
    table = aggregate.summary(runs)
    row = table.iloc[0]
    assert row["diverged"] == 1 and row["seeds"] == 4
    finals = aggregate.final_values(runs)
    assert math.isnan(finals.loc[finals["seed"] == 2, "test_accuracy"].iloc[0])
    expected = finals.loc[finals["seed"] != 2, "test_accuracy"].mean()
    assert row["test_accuracy_mean"] == pytest.approx(expected)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks columns.*status"):
        aggregate.curves(pd.DataFrame({"problem": ["x"]}))


PAPER_CLAIMS = Path(__file__).resolve().parents[1] / "conf" / "claims" / "paper.yaml"


def test_p1_claim_confirmed_when_sign_methods_reach_lower_loss():
    runs = fake_runs({"adam": (0.10, 0.91), "mssd": (0.12, 0.91), "msgd": (0.30, 0.90),
                      "msvag": (0.28, 0.90)})  # fmt: skip
    claim_list, settings = claims.load(PAPER_CLAIMS)
    table = claims.check(runs, claim_list, settings)
    p1 = table[table["claim"] == "o2_sign_better_p1"]
    assert len(p1) == 4 and set(p1["claim_verdict"]) == {"confirmed"}
    text = claims.report(table, settings, aggregate.summary(runs))
    assert "- **confirmed** `o2_sign_better_p1`" in text
    assert "| fmnist_2c2d | Adam | 91." in text  # the reproduced accuracy beside 91.8


def test_p1_claim_contradicted_when_the_order_is_reversed():
    runs = fake_runs({"adam": (0.30, 0.91), "mssd": (0.32, 0.91), "msgd": (0.10, 0.90),
                      "msvag": (0.12, 0.90)})  # fmt: skip
    table = claims.check(runs, *claims.load(PAPER_CLAIMS))
    assert set(table.loc[table["claim"] == "o2_sign_better_p1", "claim_verdict"]) == {
        "contradicted"
    }


def test_claims_skip_problems_and_methods_not_run():
    runs = fake_runs({"msgd": (0.3, 0.9), "msvag": (0.3, 0.9)}, problem="tolstoi_char_rnn")
    table = claims.check(runs, *claims.load(PAPER_CLAIMS))
    assert set(table["problem"]) == {"tolstoi_char_rnn"}
    assert not {"adam", "mssd"} & (set(table["a"]) | set(table["b"]))
    expected = {"o3_msvag_ge_msgd_loss", "o3_msvag_ge_msgd_acc", "o3_msvag_better_msgd_loss",
                "o3_msvag_better_msgd_acc"}  # fmt: skip
    assert set(table["claim"]) == expected


def test_figures_are_written(tmp_path):
    runs = pd.concat([
        fake_runs({m: (0.3, 0.9) for m in ("msgd", "mssd", "msvag", "adam")}),
        fake_runs({m: (1.3, 0.6) for m in ("msgd", "adam")}, problem="tolstoi_char_rnn"),
    ])  # fmt: skip
    selected = {(p, m): 0.1 for p in ("fmnist_2c2d", "tolstoi_char_rnn")
                for m in ("msgd", "mssd", "msvag", "adam")}  # fmt: skip
    paths = plots.fig5(aggregate.curves(runs), selected, ["fmnist_2c2d", "tolstoi_char_rnn"],
                       tmp_path / "fig5")  # fmt: skip
    assert [p.suffix for p in paths] == [".pdf", ".png"] and all(p.stat().st_size for p in paths)
    finals = aggregate.final_values(runs)
    finals.loc[0, "status"] = "diverged"
    paths = plots.sensitivity(finals, "fmnist_2c2d", "test_accuracy", tmp_path / "sens")
    assert all(p.exists() for p in paths)
