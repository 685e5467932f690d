"""The paper's Fig. 5 claims (SPEC §3), checked against the replicates with Welch's t-test.

Each claim compares methods on one metric (final training loss or final test accuracy,
or the training loss early in the budget) over seeds. For every pair (a, b) the test is
Welch's two-sided t-test on the per-seed values at significance ``alpha``:

- ``better``: confirmed if a is significantly better than b, contradicted if
  significantly worse, otherwise inconclusive;
- ``at_least_as_good``: contradicted if a is significantly worse, otherwise confirmed;
- ``similar``: confirmed if the means differ by at most ``rel_tol`` (relative),
  contradicted if they differ by more and significantly, otherwise inconclusive.

A claim over several pairs is confirmed when every pair is, contradicted when any pair
is, and inconclusive otherwise. Fewer than two finite values on a side make a pair
inconclusive. Diverged seeds have no final values and are left out (and counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import final_values
from ..style import label

LOWER_IS_BETTER = {"train_loss": True, "test_loss": True, "test_accuracy": False}
SIGN = ("adam", "mssd")
NON_SIGN = ("msgd", "msvag")


@dataclass(frozen=True)
class Claim:
    problem: str  # a DeepOBS name, or "*" for every problem
    text: str
    kind: str  # "better", "at_least_as_good" or "similar"
    a: tuple[str, ...]
    b: tuple[str, ...]
    metric: str  # "train_loss" or "test_accuracy"
    when: str = "final"  # "final", or "early": at ``early_fraction`` of the budget


#: SPEC §3, "What Fig. 5 shows".
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("fmnist_2c2d", "Sign-based methods (Adam, M-SSD) reach lower training loss than "
          "M-SGD and M-SVAG", "better", SIGN, NON_SIGN, "train_loss"),
    Claim("cifar10_3c3d", "Adam and M-SSD progress fast at first (lower training loss "
          "early on)", "better", SIGN, NON_SIGN, "train_loss", "early"),
    Claim("cifar10_3c3d", "... then plateau and are overtaken by M-SGD and M-SVAG (final "
          "training loss)", "better", NON_SIGN, SIGN, "train_loss"),
    Claim("cifar100_wrn404", "Adam and M-SSD are nearly identical (final training loss)",
          "similar", ("adam",), ("mssd",), "train_loss"),
    Claim("cifar100_wrn404", "Adam and M-SSD are nearly identical (final test accuracy)",
          "similar", ("adam",), ("mssd",), "test_accuracy"),
    Claim("cifar100_wrn404", "Adam and M-SSD reach much lower training loss than M-SGD",
          "better", SIGN, ("msgd",), "train_loss"),
    Claim("cifar100_wrn404", "... but clearly worse test accuracy than M-SGD", "better",
          ("msgd",), SIGN, "test_accuracy"),
    Claim("cifar100_wrn404", "M-SVAG is clearly better than M-SGD (training loss)",
          "better", ("msvag",), ("msgd",), "train_loss"),
    Claim("cifar100_wrn404", "... without the generalisation penalty (test accuracy at "
          "least M-SGD's)", "at_least_as_good", ("msvag",), ("msgd",), "test_accuracy"),
    Claim("tolstoi_char_rnn", "The non-sign methods are better (test accuracy)", "better",
          NON_SIGN, SIGN, "test_accuracy"),
    Claim("tolstoi_char_rnn", "M-SVAG is clearly better than M-SGD (test accuracy)",
          "better", ("msvag",), ("msgd",), "test_accuracy"),
    Claim("*", "M-SVAG is at least as good as M-SGD (test accuracy)", "at_least_as_good",
          ("msvag",), ("msgd",), "test_accuracy"),
    Claim("*", "Adam is at least as good as M-SSD (test accuracy)", "at_least_as_good",
          ("adam",), ("mssd",), "test_accuracy"),
)  # fmt: skip

#: Final test accuracies (%) quoted in SPEC §3, for orientation only: P1 read off the
#: paper's figure by others; DeepOBS baselines use another protocol (momentum 0.99, 100 or
#: 200 epochs, constant lr).
REFERENCE_ACCURACY = {
    ("fmnist_2c2d", "adam"): (91.8, "paper Fig. 5, read off"),
    ("fmnist_2c2d", "mssd"): (91.5, "paper Fig. 5, read off"),
    ("fmnist_2c2d", "msvag"): (91.0, "paper Fig. 5, read off"),
    ("fmnist_2c2d", "msgd"): (90.8, "paper Fig. 5, read off"),
    ("cifar10_3c3d", "adam"): (84.75, "DeepOBS baseline (other protocol)"),
    ("tolstoi_char_rnn", "adam"): (61.23, "DeepOBS baseline (other protocol)"),
}


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    mean_a: float
    std_a: float
    n_a: int
    mean_b: float
    std_b: float
    n_b: int
    p_value: float
    verdict: str


def compare(kind: str, x: np.ndarray, y: np.ndarray, lower_is_better: bool, alpha: float,
            rel_tol: float) -> tuple[float, str]:  # fmt: skip
    """Welch's test of per-seed values x (method a) against y (method b): (p, verdict)."""
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return math.nan, "inconclusive"
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread: the t statistic is undefined
        p = 0.0 if x[0] != y[0] else 1.0
    else:
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    diff = x.mean() - y.mean()
    a_better = diff < 0 if lower_is_better else diff > 0
    significant = p < alpha and diff != 0
    if kind == "better":
        verdict = "confirmed" if significant and a_better else "inconclusive"
        verdict = "contradicted" if significant and not a_better else verdict
    elif kind == "at_least_as_good":
        verdict = "contradicted" if significant and not a_better else "confirmed"
    elif kind == "similar":
        rel = abs(diff) / max(abs(y.mean()), 1e-12)
        verdict = "confirmed" if rel <= rel_tol else "inconclusive"
        verdict = "contradicted" if rel > rel_tol and significant else verdict
    else:
        raise ValueError(f"unknown claim kind {kind!r}")
    return p, verdict


def values_early(runs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per run, the training loss at the evaluation step nearest ``fraction`` of the budget."""
    part = runs[runs["split"] == "train_eval"]
    rows = []
    for (problem, optimizer, lr, seed), run in part.groupby(["problem", "optimizer", "lr", "seed"]):
        budget = runs.loc[runs["problem"] == problem, "step"].max()
        target = fraction * budget
        at = run.iloc[(run["step"] - target).abs().argsort()[:1]]
        rows.append(dict(problem=problem, optimizer=optimizer, lr=lr, seed=seed,
                         train_loss=float(at["loss"].iloc[0])))  # fmt: skip
    return pd.DataFrame(rows)


def evaluate(runs: pd.DataFrame, claims=PAPER_CLAIMS, alpha: float = 0.05,
             rel_tol: float = 0.05, early_fraction: float = 0.1) -> list[dict]:  # fmt: skip
    """Check every claim whose problem and methods are present in ``runs``."""
    finals = final_values(runs)
    early = values_early(runs, early_fraction)
    out = []
    for claim in claims:
        problems = sorted(runs["problem"].unique()) if claim.problem == "*" else [claim.problem]
        for problem in problems:
            table = early if claim.when == "early" else finals
            table = table[table["problem"] == problem]
            present = set(table["optimizer"])
            if not set(claim.a + claim.b) <= present:
                continue
            pairs = []
            for a in claim.a:
                for b in claim.b:
                    x = table.loc[table["optimizer"] == a, claim.metric].to_numpy(float)
                    y = table.loc[table["optimizer"] == b, claim.metric].to_numpy(float)
                    p, verdict = compare(claim.kind, x, y, LOWER_IS_BETTER[claim.metric],
                                         alpha, rel_tol)  # fmt: skip
                    fx, fy = x[np.isfinite(x)], y[np.isfinite(y)]
                    pairs.append(PairResult(
                        a, b, _mean(fx), _std(fx), len(fx), _mean(fy), _std(fy), len(fy), p,
                        verdict,
                    ))  # fmt: skip
            verdicts = {p.verdict for p in pairs}
            overall = "contradicted" if "contradicted" in verdicts else (
                "confirmed" if verdicts == {"confirmed"} else "inconclusive")  # fmt: skip
            out.append(dict(problem=problem, claim=claim, verdict=overall, pairs=pairs))
    return out


def _mean(x):
    return float(np.mean(x)) if len(x) else math.nan


def _std(x):
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def report(results: list[dict], summary: pd.DataFrame, alpha: float, rel_tol: float) -> str:
    """``claims.md``: one section per problem, every verdict with the numbers behind it."""
    lines = [
        "# Fig. 5 claims, checked against the replicates",
        "",
        f"Test: Welch's two-sided t-test over seeds, alpha = {alpha}; 'similar' means a "
        f"relative difference of the means of at most {rel_tol:.0%}. Values are per-seed "
        "finals (training loss on the train-eval set, test accuracy); diverged seeds are "
        "left out and counted in n.",
        "",
    ]
    for problem in dict.fromkeys(r["problem"] for r in results):
        lines += [f"## {problem}", ""]
        for r in (r for r in results if r["problem"] == problem):
            c = r["claim"]
            lines.append(f"- **{r['verdict']}**: {c.text} ({c.metric.replace('_', ' ')}, {c.when})")
            for p in r["pairs"]:
                lines.append(
                    f"    - {label(p.a)} {p.mean_a:.4g} ± {p.std_a:.2g} (n={p.n_a}) vs "
                    f"{label(p.b)} {p.mean_b:.4g} ± {p.std_b:.2g} (n={p.n_b}): "
                    f"p = {p.p_value:.3g}, {p.verdict}"
                )
        lines.append("")
    lines += ["## Final test accuracy against quoted figures (approximate references)", "",
              "| problem | method | reproduced (%) | reference (%) | source |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for (problem, method), (ref, source) in REFERENCE_ACCURACY.items():
        row = summary[(summary["problem"] == problem) & (summary["optimizer"] == method)]
        if len(row):
            acc = 100 * row["test_accuracy_mean"].iloc[0]
            std = 100 * row["test_accuracy_std"].iloc[0]
            lines.append(
                f"| {problem} | {label(method)} | {acc:.2f} ± {std:.2f} | {ref} | {source} |"
            )
    return "\n".join(lines) + "\n"
