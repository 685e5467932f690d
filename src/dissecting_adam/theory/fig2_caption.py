"""Check the three statements of the Fig. 2 caption against measured numbers.

The caption's words become thresholds on the paired ratio r = value_SSD / value_SGD
at a given step, summarised over seeds by its geometric mean (values are floored at
``floor`` so that a run that reached exactly 0 still gives a finite ratio):

- "vastly outperforms": r >= vast (SGD better) ...
- "roughly equal" / "evened out": 1/even <= r <= even;
- "clearly outperforms" (SSD better): r <= 1/clear.

All thresholds are arguments (config values); the verdicts are computed, never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Thresholds:
    vast: float = 10.0
    even: float = 3.0
    clear: float = 2.0
    floor: float = 1e-30


def paired_ratios(df: pd.DataFrame, step: int, floor: float) -> pd.DataFrame:
    """Per (spectrum, basis, noise): geometric-mean SSD/SGD ratio over seeds and its spread."""
    at = df[df["step"] == step]
    wide = at.pivot_table(
        index=["spectrum", "basis", "noise", "seed"], columns="method", values="value"
    )
    log_r = np.log10(np.maximum(wide["ssd"], floor)) - np.log10(np.maximum(wide["sgd"], floor))
    g = log_r.groupby(level=["spectrum", "basis", "noise"])
    out = pd.DataFrame(
        {
            "ratio": 10 ** g.mean(),
            "ratio_min": 10 ** g.min(),
            "ratio_max": 10 ** g.max(),
            "ssd_wins": (log_r < 0).groupby(level=["spectrum", "basis", "noise"]).sum(),
            "n_seeds": g.size(),
            "sgd_mean": wide["sgd"].groupby(level=["spectrum", "basis", "noise"]).mean(),
            "ssd_mean": wide["ssd"].groupby(level=["spectrum", "basis", "noise"]).mean(),
        }
    )
    return out.reset_index()


def category(r: float, th: Thresholds) -> str:
    if r >= th.vast:
        return "SGD vastly better"
    if r > th.even:
        return "SGD better"
    if r >= 1.0 / th.even:
        return "about equal"
    return "SSD better"


def _verdict(checks: list[tuple[str, bool]]) -> str:
    n_ok = sum(ok for _, ok in checks)
    return "holds" if n_ok == len(checks) else ("fails" if n_ok == 0 else "partly holds")


def check_claims(df: pd.DataFrame, step: int, th: Thresholds) -> list[dict]:
    """The three caption statements, each with its sub-checks (text, passed) and a verdict."""
    rat = paired_ratios(df, step, th.floor).set_index(["spectrum", "basis", "noise"])["ratio"]
    noises = sorted({k[2] for k in rat.index})
    noisy = [nu for nu in noises if nu > 0]
    fmt = "{:.3g}".format

    c1 = []
    for basis in ("aligned", "rotated"):
        r = rat["well", basis, 0.0]
        c1.append((f"well/{basis}, nu=0: SSD/SGD = {fmt(r)} >= {th.vast:g}", r >= th.vast))
        for nu in noisy:
            r = rat["well", basis, nu]
            ok = 1 / th.even <= r <= th.even
            c1.append((f"well/{basis}, nu={nu:g}: SSD/SGD = {fmt(r)} within x{th.even:g}", ok))
    for nu in noises:
        ra, rr = rat["well", "aligned", nu], rat["well", "rotated", nu]
        same = category(ra, th) == category(rr, th)
        c1.append(
            (
                f"well, nu={nu:g}: orientation keeps the comparison "
                f"(aligned: {category(ra, th)}, rotated: {category(rr, th)})",
                same,
            )
        )

    c2 = []
    for nu in noises:
        r = rat["ill", "rotated", nu]
        ok = 1 / th.even <= r <= th.even
        c2.append((f"ill/rotated, nu={nu:g}: SSD/SGD = {fmt(r)} within x{th.even:g}", ok))

    c3 = []
    for nu in noises:
        r = rat["ill", "aligned", nu]
        c3.append(
            (f"ill/aligned, nu={nu:g}: SSD/SGD = {fmt(r)} <= 1/{th.clear:g}", r <= 1 / th.clear)
        )

    statements = [
        (
            "Well conditioned: GD vastly outperforms SSD without noise, the difference is "
            "evened out with noise, orientation has little effect.",
            c1,
        ),
        ("Ill conditioned, rotated: the methods perform roughly equal.", c2),
        ("Ill conditioned, axis-aligned: SSD clearly outperforms SGD.", c3),
    ]
    return [{"claim": s, "checks": c, "verdict": _verdict(c)} for s, c in statements]


def claims_markdown(df: pd.DataFrame, steps: list[int], th: Thresholds, header: str = "") -> str:
    """claims.md: per checked step, the ratio table and the three verdicts."""
    lines = ["# Fig. 2 caption, checked against the numbers", ""]
    if header:
        lines += [header, ""]
    lines += [
        "Ratio = geometric mean over seeds of value_SSD / value_SGD (paired by seed; "
        f"values floored at {th.floor:g}); > 1 means SGD is better. Thresholds: vastly >= "
        f"x{th.vast:g}, roughly equal within x{th.even:g}, clearly <= 1/{th.clear:g}.",
        "",
    ]
    for step in steps:
        tab = paired_ratios(df, step, th.floor)
        lines += [f"## At step {step}", "", "| spectrum | basis | noise | SGD mean | SSD mean | "
                  "SSD/SGD (geo. mean) | min .. max over seeds | seeds SSD better |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row in tab.itertuples():
            lines.append(
                f"| {row.spectrum} | {row.basis} | {row.noise:g} | {row.sgd_mean:.3g} | "
                f"{row.ssd_mean:.3g} | {row.ratio:.3g} | {row.ratio_min:.3g} .. "
                f"{row.ratio_max:.3g} | {row.ssd_wins}/{row.n_seeds} |"
            )
        lines.append("")
        for i, c in enumerate(check_claims(df, step, th), 1):
            lines.append(f"{i}. **{c['verdict']}**: {c['claim']}")
            for text, ok in c["checks"]:
                lines.append(f"    - [{'x' if ok else ' '}] {text}")
        lines.append("")
    return "\n".join(lines)
