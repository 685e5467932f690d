"""The paper's §6.2 observations on Fig. 5, as data, checked against the replicates.

Longer than ~300 lines: the claim model, its checks and the report that explains them are
read together, and so is the reading of the table at each claim's step, since the report
counts every run it leaves out; the statistics themselves are in ``stats``.

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
contradicted if any pair is, else inconclusive. A run is read at exactly the claim's step
(the budget's last evaluation, or the early one): runs without a value there are left out
and counted, as ``incomplete`` when they neither diverged nor failed (unfinished, or rows
missing from the table: an earlier evaluation never stands in for the claim's step). Fewer
than two values on a side leave a pair inconclusive. ``validate_replicates`` refuses a table
that cannot be a replicates table (no rows, percent accuracy, non-integer seeds).
docs/claims.md has the reasons behind these choices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..runner.files import atomic_write
from ..style import label
from . import stats
from .aggregate import RUN_COLUMNS, check_columns

KINDS = ("better", "non_inferior", "equivalent")
METRICS = ("train_loss", "test_accuracy")
WHENS = ("final", "early")
LOWER_IS_BETTER = {"train_loss": True, "test_accuracy": False}
RELATIVE_MARGIN = {"train_loss": True, "test_accuracy": False}
PROBLEM_LABELS = {"fmnist_2c2d": "P1", "cifar10_3c3d": "P2", "cifar100_wrn404": "P3",
                  "tolstoi_char_rnn": "P4"}  # fmt: skip
BANNERS = {"smoke": "a pipeline check, not results", "preview": "a fraction of the paper's budget"}
COLUMNS = ["problem", "claim", "kind", "metric", "when", "a", "b", "n_a", "n_b", "missing_a",
           "missing_b", "incomplete_a", "incomplete_b", "incomplete", "mean_a", "mean_b",
           "std_a", "std_b", "diff", "se", "df", "ci_low", "ci_high", "decision_low",
           "decision_high", "margin", "p_value", "p_holm", "p_opposite", "p_opposite_holm",
           "pair_verdict", "claim_verdict", "at_step", "reason", "section",
           "sentence"]  # fmt: skip
RUN = ["problem", "optimizer", "lr", "seed"]
SOURCES = {"train_loss": ("train_eval", "loss"), "test_accuracy": ("test", "accuracy")}
STOPPED = ("diverged", "failed")  # runs that end early by design: missing, not incomplete


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


def _refuse(table: pd.DataFrame, bad: pd.Series, source: str, what: str, rule: str, fix: str):
    """One line: the column, its rule, the first bad value as the reader wrote it ('a' for a
    string, 1.5 for a number), how many rows, and the fix."""
    if bad.any():
        value = table.loc[bad.to_numpy(), what].iloc[0]
        value = repr(value) if isinstance(value, str) else getattr(value, "item", lambda: value)()
        raise ValueError(f"{source}: {what} must be {rule}, found {value} in {int(bad.sum())} "
                         f"rows; {fix}")  # fmt: skip


def validate_replicates(table: pd.DataFrame, source: str = "the replicates table") -> pd.DataFrame:
    """``table`` with integer seeds and steps, or a ValueError of one line naming the problem
    and the fix: missing columns, no rows, non-integer seeds or steps, accuracy that is not
    a fraction in [0, 1] (e.g. percent), several profiles."""
    if missing := [c for c in RUN_COLUMNS if c not in table.columns]:
        raise ValueError(f"{source} lacks the columns {missing} (see scripts/collect.py)")
    if not len(table):
        raise ValueError(f"{source} has no rows (a header only): collect the replicates' "
                         "results first (scripts/collect.py)")  # fmt: skip
    numbers = {c: pd.to_numeric(table[c], errors="coerce") for c in ("seed", "step", "accuracy")}
    for column in ("seed", "step"):
        bad = ~np.isfinite(numbers[column]) | (numbers[column] != numbers[column].round())
        fix = f"give each row its run's integer {column} (as scripts/collect.py does)"
        _refuse(table, bad, source, column, "an integer", fix)
        numbers[column] = numbers[column].astype(np.int64)
    acc = numbers["accuracy"]
    bad = (acc.isna() & table["accuracy"].notna()) | (acc < 0) | (acc > 1)
    _refuse(table, bad, source, "accuracy", "a fraction in [0, 1]", "divide percentages by 100")
    if "profile" in table and table["profile"].nunique() > 1:
        raise ValueError(f"{source} mixes the profiles {sorted(table['profile'].unique())}: "
                         "pass one profile's replicates")  # fmt: skip
    return table.assign(**numbers)


def budgets(runs: pd.DataFrame) -> pd.Series:
    """Per problem, the step of the budget's last evaluation: the last in the table."""
    evals = runs[runs["split"].isin([split for split, _ in SOURCES.values()])]
    return evals.groupby("problem")["step"].max()


def values_at(runs: pd.DataFrame, steps: pd.Series, completed: bool) -> pd.DataFrame:
    """Per run: both metrics at exactly its problem's step ``steps[problem]``, never an
    earlier one. With ``completed`` (final values) only a completed run has values: a
    diverged run did not reach the end of its budget, so it never looks better than it was.

    ``<metric>_incomplete`` marks a run without a value that neither diverged nor failed:
    no evaluation at the step (unfinished, or rows missing from the table, e.g. a stray row).
    """
    check_columns(runs)
    out = runs.groupby(RUN, sort=True)["status"].last().reset_index()
    out = out[out["problem"].isin(steps.index)].reset_index(drop=True)
    out["step"] = out["problem"].map(steps).astype(np.int64)
    ok = (out["status"] == "completed") if completed else pd.Series(True, index=out.index)
    for metric, (split, column) in SOURCES.items():
        rows = runs[(runs["split"] == split) & (runs["step"] == runs["problem"].map(steps))]
        at = rows.groupby(RUN)[column].last().rename(metric).reset_index().assign(_at=True)
        merged = out[RUN].merge(at, on=RUN, how="left")
        reached = merged["_at"].notna().to_numpy() & ok.to_numpy()
        out[metric] = np.where(reached, merged[metric].to_numpy(float), math.nan)
        out[f"{metric}_incomplete"] = ~reached & ~out["status"].isin(STOPPED).to_numpy()
    return out


def early_values(runs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per run, the training loss at the evaluation step nearest ``fraction`` of the budget.

    Every run of a problem is read at the same step (NaN where a run has no finite value
    there, e.g. it diverged before, or it has no row at that step).
    """
    check_columns(runs)
    evals = runs[runs["split"] == "train_eval"]
    steps = {}
    for problem, budget in budgets(runs).items():
        have = np.sort(evals.loc[evals["problem"] == problem, "step"].unique())
        if len(have):
            steps[problem] = int(have[np.argmin(np.abs(have - fraction * budget))])
    return values_at(runs, pd.Series(steps, dtype=np.int64), completed=False)


def _pairs(claim: Claim, problem: str, part: pd.DataFrame, settings: ClaimSettings, at: int):
    """The rows of one claim on one problem (``part``: one row per run, from ``values_at``)."""
    pairs = [(a, b) for a in claim.a for b in claim.b]
    metric = claim.metric
    raw = [[part.loc[part["optimizer"] == m, metric].to_numpy(float) for m in p] for p in pairs]
    short = part.groupby("optimizer")[f"{metric}_incomplete"].sum()
    tests = [stats.welch(x, y, LOWER_IS_BETTER[metric]) for x, y in raw]
    if claim.kind == "better":
        results, margins = stats.better(tests, settings.alpha), [math.nan] * len(tests)
    else:
        margins = [settings.margin(metric, w.mean_b) for w in tests]
        test = stats.non_inferior if claim.kind == "non_inferior" else stats.equivalent
        results = [test(w, m, settings.alpha) for w, m in zip(tests, margins, strict=True)]
    overall = stats.combine([r["verdict"] for r in results])
    incomplete = int(sum(short.get(m, 0) for m in claim.a + claim.b))
    for (a, b), (x, y), w, r, m in zip(pairs, raw, tests, results, margins, strict=True):
        ci, dec = w.interval(1 - settings.alpha), w.interval(1 - 2 * settings.alpha)
        missing = (len(x) - w.n_a, len(y) - w.n_b)
        cut = (int(short.get(a, 0)), int(short.get(b, 0)))
        notes = [w.reason] * bool(w.reason)
        for k, c, o, n in zip(missing, cut, (a, b), (len(x), len(y)), strict=True):
            notes += [f"{c} of {label(o)}'s {n} runs have no evaluation at step {at} "
                      "(incomplete)"] * bool(c)  # fmt: skip
            notes += [f"{k - c} of {label(o)}'s {n} runs have no value (diverged, failed or "
                      "non-finite)"] * bool(k - c)  # fmt: skip
        yield dict(
            problem=problem, claim=claim.id, kind=claim.kind, metric=metric,
            when=claim.when, a=a, b=b, n_a=w.n_a, n_b=w.n_b, missing_a=missing[0],
            missing_b=missing[1], incomplete_a=cut[0], incomplete_b=cut[1],
            incomplete=incomplete, mean_a=w.mean_a, mean_b=w.mean_b, std_a=w.std_a,
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
    finals = values_at(replicates, budgets(replicates), completed=True)
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
    rows = []
    for claim in claims:
        values = early if claim.when == "early" else finals
        for problem in claim.problems:
            part = values[values["problem"] == problem]
            if set(claim.a + claim.b) <= set(part["optimizer"]):
                rows += _pairs(claim, problem, part, settings, int(part["step"].iloc[0]))
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
        *_incomplete_line(per_claim),
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
        f"nearest {_pct(settings.early_fraction)} of the budget. Every run is read at exactly "
        "the claim's step; runs without a value there are left out and counted (incomplete: "
        "no evaluation there, never an earlier one read instead; or diverged or failed).", "",
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
            if c["incomplete"]:
                cut = {**dict(zip(pairs["a"], pairs["incomplete_a"], strict=True)),
                       **dict(zip(pairs["b"], pairs["incomplete_b"], strict=True))}  # fmt: skip
                which = ", ".join(f"{label(m)} {k}" for m, k in cut.items() if k)
                lines.append(f"    - left out as incomplete (no evaluation at step "
                             f"{c['at_step']}): {c['incomplete']} runs ({which})")  # fmt: skip
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


def _incomplete_line(per_claim: pd.DataFrame) -> list[str]:
    short = per_claim[per_claim["incomplete"].astype(float) > 0]
    if not len(short):
        return []
    return [f"**{len(short)} of {len(per_claim)} checks left out incomplete runs** (no "
            "evaluation at the step the claim reads: unfinished, or rows missing from the "
            "replicates table); their verdicts rest on the other seeds.", ""]  # fmt: skip


def write(replicates: pd.DataFrame, out_dir: str | Path, claims: Iterable[Claim],
          settings: ClaimSettings, summary: pd.DataFrame | None = None,
          banner: str = "") -> dict[str, Path]:  # fmt: skip
    """Check the claims and write ``claims.md`` and ``claims.csv`` (atomically) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = check(replicates, claims, settings)
    text = report(table, settings, summary, banner)
    paths = {"claims": out / "claims.md", "claims_csv": out / "claims.csv"}
    atomic_write(paths["claims"], lambda p: Path(p).write_text(text, encoding="utf-8"))
    atomic_write(paths["claims_csv"], lambda p: table.to_csv(p, index=False))
    return paths
