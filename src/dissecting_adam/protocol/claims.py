"""The paper's §6.2 observations on Fig. 5, as data, checked against the replicates.

Longer than ~300 lines: the claim model, its checks and the report that explains them are
read together; the statistics themselves are in ``stats``.

The claims live in ``conf/claims/paper.yaml`` (``claims_from_dict`` / ``load`` build them).
A claim compares every method of ``a`` with every method of ``b`` on each of its problems,
on one metric (final training loss, final test accuracy, or the training loss ``early``:
at the evaluation nearest ``early_fraction`` of the step budget), over seeds. Per pair,
``d`` is the difference of means oriented so that d > 0 means a is better (loss:
mean_b - mean_a; accuracy: mean_a - mean_b), with Welch's standard error and degrees of
freedom (``stats``). Three kinds, at level ``alpha``:

- ``better`` ("outperform", "superior", "undercut"): one-sided Welch t-test of d > 0 per
  pair, Holm-Bonferroni over the claim's pairs on the problem. Confirmed if every pair is
  significant after Holm, contradicted if any pair is significant the other way (the
  opposite one-sided test, also Holm-adjusted), inconclusive otherwise.
- ``non_inferior`` ("at least as good as"), margin delta: confirmed if the one-sided
  (1 - alpha) lower bound of d is above -delta, contradicted if the one-sided (1 - alpha)
  upper bound is below -delta. Absence of a significant difference confirms nothing.
- ``equivalent`` ("identical", "similar"): two one-sided tests (TOST), margin delta:
  confirmed if the (1 - 2 alpha) interval lies inside (-delta, delta), contradicted if it
  lies wholly outside [-delta, delta].

Margins: test accuracy absolute (0.005 = half a percentage point), training loss relative
(a fraction of method b's mean). A claim on a problem is confirmed if every pair is,
contradicted if any pair is, else inconclusive. Runs without a value (diverged, failed or
unfinished) are left out and counted; fewer than two values on a side leave a pair
inconclusive. docs/claims.md has the reasons behind these choices.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..style import label
from . import stats
from .aggregate import check_columns, final_values

KINDS = ("better", "non_inferior", "equivalent")
METRICS = ("train_loss", "test_accuracy")
WHENS = ("final", "early")
LOWER_IS_BETTER = {"train_loss": True, "test_accuracy": False}
RELATIVE_MARGIN = {"train_loss": True, "test_accuracy": False}
PROBLEM_LABELS = {"fmnist_2c2d": "P1", "cifar10_3c3d": "P2", "cifar100_wrn404": "P3",
                  "tolstoi_char_rnn": "P4"}  # fmt: skip
BANNERS = {"smoke": "a pipeline check, not results", "preview": "a fraction of the paper's budget"}
COLUMNS = ["problem", "claim", "kind", "metric", "when", "a", "b", "n_a", "n_b", "missing_a",
           "missing_b", "mean_a", "mean_b", "std_a", "std_b", "diff", "se", "df", "ci_low",
           "ci_high", "decision_low", "decision_high", "margin", "p_value", "p_holm",
           "p_opposite", "p_opposite_holm", "pair_verdict", "claim_verdict", "at_step",
           "reason", "section", "sentence"]  # fmt: skip


@dataclass(frozen=True)
class Claim:
    id: str
    sentence: str
    problems: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    metric: str
    kind: str
    when: str = "final"
    section: str = ""


@dataclass(frozen=True)
class ClaimSettings:
    alpha: float = 0.05
    margins: Mapping[str, float] = field(
        default_factory=lambda: {"test_accuracy": 0.005, "train_loss": 0.05}
    )
    early_fraction: float = 0.1
    #: (problem, optimizer, accuracy in %, source): quoted figures, for orientation only.
    reference_accuracy: tuple[tuple[str, str, float, str], ...] = ()

    def margin(self, metric: str, mean_b: float) -> float:
        m = float(self.margins[metric])
        return m * abs(mean_b) if RELATIVE_MARGIN[metric] else m


def _choice(claim_id: str, key: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"claim {claim_id!r}: unknown {key} {value!r}; valid: {list(valid)}")
    return value


def _names(claim_id: str, key: str, value) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"claim {claim_id!r}: {key} must be a non-empty list of names")
    return names


def claims_from_dict(d: Mapping) -> tuple[list[Claim], ClaimSettings]:
    """The claims and settings of a claims config (``conf/claims/*.yaml``), validated."""
    margins = dict(d.get("margins") or {})
    if set(margins) != set(METRICS) or any(float(v) < 0 for v in margins.values()):
        raise ValueError(f"margins: give a non-negative margin for each of {list(METRICS)}")
    settings = ClaimSettings(
        alpha=float(d.get("alpha", 0.05)),
        margins={k: float(v) for k, v in margins.items()},
        early_fraction=float(d.get("early_fraction", 0.1)),
        reference_accuracy=tuple(
            (r["problem"], r["optimizer"], float(r["accuracy"]), str(r.get("source", "")))
            for r in d.get("reference_accuracy") or ()
        ),
    )
    if not 0 < settings.alpha < 0.5 or not 0 < settings.early_fraction <= 1:
        raise ValueError("alpha must lie in (0, 0.5) and early_fraction in (0, 1]")
    claims, keys = [], {"id", "sentence", "problems", "a", "b", "metric", "kind", "when", "section"}
    for i, c in enumerate(d.get("claims") or ()):
        cid = str(c.get("id", f"#{i}"))
        if unknown := set(c) - keys:
            raise ValueError(
                f"claim {cid!r}: unknown keys {sorted(unknown)}; valid: {sorted(keys)}"
            )
        a, b = _names(cid, "a", c.get("a")), _names(cid, "b", c.get("b"))
        if set(a) & set(b):
            raise ValueError(f"claim {cid!r}: a method on both sides: {sorted(set(a) & set(b))}")
        claims.append(Claim(
            id=cid, sentence=str(c.get("sentence", "")),
            problems=_names(cid, "problems", c.get("problems")), a=a, b=b,
            metric=_choice(cid, "metric", c.get("metric"), METRICS),
            kind=_choice(cid, "kind", c.get("kind"), KINDS),
            when=_choice(cid, "when", c.get("when", "final"), WHENS),
            section=str(c.get("section", "")),
        ))  # fmt: skip
    if len({c.id for c in claims}) != len(claims):
        raise ValueError("claim ids must be unique")
    return claims, settings


def load(path: str | Path) -> tuple[list[Claim], ClaimSettings]:
    """``claims_from_dict`` of a YAML file."""
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping with 'claims' and the settings")
    return claims_from_dict(d)


def early_values(runs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per run, the training loss at the evaluation step nearest ``fraction`` of the budget.

    The budget is the problem's last step in the table; every run of a problem is read at
    the same step (NaN where a run has no finite value there, e.g. it diverged before).
    """
    check_columns(runs)
    keys, rows = ["optimizer", "lr", "seed"], []
    for problem, part in runs.groupby("problem", sort=True):
        evals = part[part["split"] == "train_eval"]
        steps = np.sort(evals["step"].unique())
        if not len(steps):
            continue
        step = int(steps[np.argmin(np.abs(steps - fraction * part["step"].max()))])
        loss = evals[evals["step"] == step].groupby(keys)["loss"].last()
        for run in part[keys].drop_duplicates().sort_values(keys).itertuples(index=False):
            value = float(loss.get(tuple(run), math.nan))
            rows.append(dict(problem=problem, **run._asdict(), train_loss=value, step=step))
    return pd.DataFrame(rows, columns=["problem", "optimizer", "lr", "seed", "train_loss", "step"])


def _pairs(claim: Claim, problem: str, part: pd.DataFrame, settings: ClaimSettings, at: int):
    """The rows of one claim on one problem (``part``: one value per run and metric)."""
    pairs = [(a, b) for a in claim.a for b in claim.b]
    raw = [[part.loc[part["optimizer"] == m, claim.metric].to_numpy(float) for m in p]
           for p in pairs]  # fmt: skip
    tests = [stats.welch(x, y, LOWER_IS_BETTER[claim.metric]) for x, y in raw]
    if claim.kind == "better":
        results, margins = stats.better(tests, settings.alpha), [math.nan] * len(tests)
    else:
        margins = [settings.margin(claim.metric, w.mean_b) for w in tests]
        test = stats.non_inferior if claim.kind == "non_inferior" else stats.equivalent
        results = [test(w, m, settings.alpha) for w, m in zip(tests, margins, strict=True)]
    overall = stats.combine([r["verdict"] for r in results])
    for (a, b), (x, y), w, r, m in zip(pairs, raw, tests, results, margins, strict=True):
        ci, dec = w.interval(1 - settings.alpha), w.interval(1 - 2 * settings.alpha)
        missing = (len(x) - w.n_a, len(y) - w.n_b)
        notes = [w.reason] * bool(w.reason) + [
            f"{k} of {label(o)}'s {n} runs have no value (diverged, failed or unfinished)"
            for k, o, n in zip(missing, (a, b), (len(x), len(y)), strict=True) if k
        ]  # fmt: skip
        yield dict(
            problem=problem, claim=claim.id, kind=claim.kind, metric=claim.metric,
            when=claim.when, a=a, b=b, n_a=w.n_a, n_b=w.n_b, missing_a=missing[0],
            missing_b=missing[1], mean_a=w.mean_a, mean_b=w.mean_b, std_a=w.std_a,
            std_b=w.std_b, diff=w.diff, se=w.se, df=w.df, ci_low=ci[0], ci_high=ci[1],
            decision_low=dec[0], decision_high=dec[1], margin=m, p_value=r["p_value"],
            p_holm=r.get("p_holm", math.nan), p_opposite=r.get("p_opposite", math.nan),
            p_opposite_holm=r.get("p_opposite_holm", math.nan), pair_verdict=r["verdict"],
            claim_verdict=overall, at_step=at, reason="; ".join(notes), section=claim.section,
            sentence=claim.sentence,
        )  # fmt: skip


def check(replicates: pd.DataFrame, claims: Iterable[Claim], settings: ClaimSettings):
    """One row per (claim, problem, pair) present in ``replicates`` (the tidy runs table of
    the selected step sizes), with the numbers and verdicts; see the module docstring.
    Claims whose problem or methods are not all in the table are skipped."""
    claims = list(claims)
    finals = final_values(replicates)
    if not len(finals):
        return pd.DataFrame(columns=COLUMNS)
    several = finals.groupby(["problem", "optimizer"])["lr"].nunique()
    if "config_hash" in replicates:  # e.g. a short probe run next to a full one, same seed
        runs = replicates.groupby(["problem", "optimizer", "seed"])["config_hash"].nunique()
        several = pd.concat([several, runs.groupby(["problem", "optimizer"]).max()])
    if (several > 1).any():
        raise ValueError(f"several step sizes or runs per seed for "
                         f"{sorted(set(several[several > 1].index))}: pass only the "
                         "replicates of each method's selected step size")  # fmt: skip
    early = None
    if any(c.when == "early" for c in claims):
        early = early_values(replicates, settings.early_fraction)
    budget = replicates.groupby("problem")["step"].max()
    rows = []
    for claim in claims:
        values = early if claim.when == "early" else finals
        for problem in claim.problems:
            part = values[values["problem"] == problem]
            if set(claim.a + claim.b) <= set(part["optimizer"]):
                at = part["step"].iloc[0] if claim.when == "early" else budget[problem]
                rows += _pairs(claim, problem, part, settings, int(at))
    return pd.DataFrame(rows, columns=COLUMNS)


def data_banner(table: pd.DataFrame) -> str:
    """A warning line for replicates that are not the paper's protocol on real data."""
    lines = []
    if "data_variant" in table and (table["data_variant"].astype(str) != "real").any():
        lines.append("**Generated stand-in data (data.variant=synthetic): a check of the "
                     "pipeline, not results about the optimizers.**")  # fmt: skip
    for profile in sorted(set(table.get("profile", pd.Series(dtype=str)).astype(str)) - {"paper"}):
        what = BANNERS.get(profile, "not the paper's protocol")
        lines.append(f"**{profile} profile: {what}.**")
    return "".join(line + "\n\n" for line in lines)


def _pct(x: float) -> str:
    return f"{100 * x:.4g}%"


def _num(metric: str, x: float, diff: bool = False, digits: int = 4) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if metric == "test_accuracy":  # in percent / percentage points
        return f"{100 * x:+.2f} pp" if diff else f"{100 * x:.2f}%"
    return f"{x:+.{digits}g}" if diff else f"{x:.{digits}g}"


def _pair_line(r, conf: str) -> str:
    m = r.metric
    text = (f"    - {label(r.a)} {_num(m, r.mean_a)} ± {_num(m, r.std_a, digits=2)} (n={r.n_a}) "
            f"vs {label(r.b)} {_num(m, r.mean_b)} ± {_num(m, r.std_b, digits=2)} (n={r.n_b}): "
            f"d = {_num(m, r.diff, True)}, {conf} CI [{_num(m, r.ci_low, True)}, "
            f"{_num(m, r.ci_high, True)}], p = {r.p_value:.3g}")  # fmt: skip
    if r.kind == "better":
        text += f" (Holm {r.p_holm:.3g}; other way, Holm {r.p_opposite_holm:.3g})"
    else:
        low, high = _num(m, r.decision_low, True), _num(m, r.decision_high, True)
        text += f", decision [{low}, {high}] vs margin {_num(m, r.margin, True)[1:]}"
    return text + f": {r.pair_verdict}" + (f" ({r.reason})" if r.reason else "")


def report(table: pd.DataFrame, settings: ClaimSettings, summary: pd.DataFrame | None = None,
           banner: str = "") -> str:  # fmt: skip
    """``claims.md``: the tests, then one section per problem, every verdict and its numbers."""
    alpha, conf, decide = settings.alpha, _pct(1 - settings.alpha), _pct(1 - 2 * settings.alpha)
    per_claim = table.drop_duplicates(["claim", "problem"])
    counts = per_claim["claim_verdict"].value_counts()
    lines = [
        "# Fig. 5 claims (§6.2 of the paper), checked against the replicates", "",
        ", ".join(f"{counts.get(v, 0)} {v}" for v in ("confirmed", "contradicted",
                                                        "inconclusive"))
        + f" (claim x problem checks: {len(per_claim)}).", "",
        f"Per pair, d is the difference of the means over seeds, oriented so that d > 0 means "
        "a is better (loss: mean_b - mean_a; accuracy: mean_a - mean_b), with Welch's standard "
        f"error and Welch-Satterthwaite degrees of freedom; alpha = {alpha}.", "",
        "- **better**: one-sided Welch t-test of d > 0, Holm-Bonferroni over the claim's pairs "
        "on the problem; confirmed if every pair is significant, contradicted if any pair is "
        "significant the other way (opposite one-sided test, Holm-adjusted).",
        f"- **non_inferior** (at least as good as): confirmed if the one-sided {conf} lower "
        "bound of d is above -margin, contradicted if the one-sided upper bound is below it.",
        f"- **equivalent** (identical, similar): TOST; confirmed if the {decide} "
        "interval of d lies inside (-margin, margin), contradicted if wholly outside.", "",
        f"Margins: test accuracy {100 * settings.margins['test_accuracy']:g} percentage points "
        f"(absolute); training loss {_pct(settings.margins['train_loss'])} of method b's mean "
        f"(relative). 'CI' is the two-sided {conf} Welch interval of d (reported); the "
        f"verdicts of non_inferior and equivalent use the {decide} interval "
        f"('decision', its ends are the one-sided {conf} bounds), those of better the "
        "Holm-adjusted p. p: one-sided in the claimed direction (better), the "
        "non-inferiority p, or the TOST p. Early values: training loss at the evaluation "
        f"nearest {_pct(settings.early_fraction)} of the budget. Runs without a value "
        "(diverged, failed, unfinished) are left out and counted.", "",
    ]  # fmt: skip
    if not len(table):
        lines += ["No claim could be checked: no claim's problem and methods are all in the "
                  "replicates.", ""]  # fmt: skip
    order = {p: i for i, p in enumerate(PROBLEM_LABELS)}
    for problem in sorted(table["problem"].unique(), key=lambda p: (order.get(p, 99), p)):
        lines += [" ".join(filter(None, ["##", PROBLEM_LABELS.get(problem), problem])), ""]
        rows = table[table["problem"] == problem]
        for claim, pairs in rows.groupby("claim", sort=False):
            c = pairs.iloc[0]
            when = "final" if c["when"] == "final" else f"early, step {c['at_step']}"
            lines.append(f"- **{c['claim_verdict']}** `{claim}` ({c['section']}; {c['kind']}, "
                         f"{c['metric'].replace('_', ' ')}, {when}): {c['sentence']}")  # fmt: skip
            lines += [_pair_line(r, conf) for r in pairs.itertuples()]
        lines.append("")
    if summary is not None and len(summary) and settings.reference_accuracy:
        lines += ["## Final test accuracy against quoted figures (orientation only, no verdict)",
                  "", "| problem | method | reproduced (%) | reference (%) | source |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for problem, method, ref, source in settings.reference_accuracy:
            row = summary[(summary["problem"] == problem) & (summary["optimizer"] == method)]
            if len(row):
                acc, std = (100 * row[f"test_accuracy_{s}"].iloc[0] for s in ("mean", "std"))
                lines.append(f"| {problem} | {label(method)} | {acc:.2f} ± {std:.2f} | {ref:g} | "
                             f"{source} |")  # fmt: skip
        lines.append("")
    return banner + "\n".join(lines)


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(replicates: pd.DataFrame, out_dir: str | Path, claims: Iterable[Claim],
          settings: ClaimSettings, summary: pd.DataFrame | None = None,
          banner: str = "") -> dict[str, Path]:  # fmt: skip
    """Check the claims and write ``claims.md`` and ``claims.csv`` (atomically) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = check(replicates, claims, settings)
    text = report(table, settings, summary, banner)
    paths = {"claims": out / "claims.md", "claims_csv": out / "claims.csv"}
    _write_atomic(paths["claims"], lambda p: Path(p).write_text(text, encoding="utf-8"))
    _write_atomic(paths["claims_csv"], lambda p: table.to_csv(p, index=False))
    return paths
