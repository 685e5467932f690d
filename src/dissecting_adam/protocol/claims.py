"""The paper's §6.2 observations on Fig. 5, as data, checked against the replicates.

Longer than 300 lines: the claim model (checks and the sentences they serve), the reading
of the table at each check's step (the report counts every run it leaves out), the checks
and the report that explains them are read together; the statistics are in ``stats``.

The statements live in ``conf/claims/paper.yaml`` (``claims_from_dict`` / ``load``): a list
of **checks** (one per statement, problems, metric and pair of methods) and a list of the
§6.2 **sentences**, each with the checks it rests on (a check may serve several sentences,
a sentence may use part of a check: some problems, some pairs) and the project's
``reading`` of it beside the paper's words. A check compares every method of ``a`` with
every method of ``b`` on each of its problems, on one metric (final training loss, final
test accuracy, or the training loss ``early``: at the evaluation nearest ``early_fraction``
of the step budget), over seeds. Per pair, ``d`` is the difference of means oriented so
that d > 0 means a is better, with Welch's standard error and degrees of freedom. Kinds:
``better`` (one-sided Welch t-test), ``non_inferior`` and ``equivalent`` (a margin: the
one-sided bounds of d against it, TOST), ``different`` (two-sided, every pair the same way),
``share`` (the part of the gap a - b that a difference ``parts`` makes, Fieller's interval).

Pairs combine by the statement's ``quantifier``: ``every`` (the default: "the sign methods
outperform the non-sign methods") is an intersection-union test, confirmed when every pair
is confirmed at alpha and contradicted when a pair's contrary survives Holm over the pairs;
``any`` ("often better") the other way round. Verdicts: confirmed, contradicted,
underpowered (a margin test that even an observed difference of zero could not pass at
this spread and n), untestable (no test: too few values, no spread) and inconclusive.

Margins: test accuracy absolute (0.005 = half a percentage point), training loss relative
to the pair's mean (the same whichever method is written first). A run is read at exactly
the check's step; runs without a value there are left out and counted, as ``incomplete``
when they neither diverged nor failed (an earlier evaluation never stands in for the
check's step). ``validate_replicates`` refuses a table that cannot be a replicates table.
docs/claims.md has the reasons behind these choices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..runner.files import atomic_write
from ..style import label
from . import stats
from .aggregate import RUN_COLUMNS, check_columns

KINDS = ("better", "non_inferior", "equivalent", "different", "share")
MARGIN_KINDS = ("non_inferior", "equivalent", "different")
METRICS = ("train_loss", "test_accuracy")
WHENS = ("final", "early")
LOWER_IS_BETTER = {"train_loss": True, "test_accuracy": False}
RELATIVE_MARGIN = {"train_loss": True, "test_accuracy": False}
PROBLEM_LABELS = {"fmnist_2c2d": "P1", "cifar10_3c3d": "P2", "cifar100_wrn404": "P3",
                  "tolstoi_char_rnn": "P4"}  # fmt: skip
BANNERS = {"smoke": "a pipeline check, not results", "preview": "a fraction of the paper's budget"}
COLUMNS = ["problem", "claim", "kind", "quantifier", "metric", "when", "a", "b", "part", "n_a",
           "n_b", "missing_a", "missing_b", "incomplete_a", "incomplete_b", "incomplete",
           "mean_a", "mean_b", "std_a", "std_b", "diff", "se", "df", "ci_low", "ci_high",
           "decision_low", "decision_high", "margin", "min_margin", "power_at_zero", "p_value",
           "p_holm", "p_contra", "p_contra_holm", "pair_verdict", "claim_verdict", "at_step",
           "reason", "cites", "section", "sentence", "reading"]  # fmt: skip
SENTENCE_COLUMNS = ["sentence", "section", "part", "problem", "verdict", "pairs", "checks",
                    "not_run"]  # fmt: skip
RUN = ["problem", "optimizer", "lr", "seed"]
SOURCES = {"train_loss": ("train_eval", "loss"), "test_accuracy": ("test", "accuracy")}
STOPPED = ("diverged", "failed")  # runs that end early by design: missing, not incomplete
NOT_CHECKED, NOT_RUN = "not checked", "not run"


@dataclass(frozen=True)
class Claim:
    """One check: every pair of ``a`` x ``b`` on each problem (``share``: each difference
    ``parts`` (x, y) against the gap a - b), on one metric at one time, of one kind."""

    id: str
    sentence: str
    problems: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    metric: str
    kind: str
    when: str = "final"
    section: str = ""
    reading: str = ""
    quantifier: str = "every"
    parts: tuple[tuple[str, str], ...] = ()
    share: float = 0.5

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.a for b in self.b]

    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.a + self.b + sum(self.parts, ())))


@dataclass(frozen=True)
class Ref:
    """A sentence's use of a check: the problems and pairs it rests on (all by default)."""

    check: str
    problems: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]

    def selects(self, check: str, problem: str, a: str, b: str) -> bool:
        return check == self.check and problem in self.problems and (a, b) in self.pairs


@dataclass(frozen=True)
class Sentence:
    """A sentence of §6.2 (``part``: the clause checked, when it has several), the project's
    reading of it, and the checks it rests on (none: ``reading`` says why)."""

    id: str
    section: str
    text: str
    reading: str = ""
    part: str = ""
    quantifier: str = "every"
    checks: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class ClaimSettings:
    alpha: float = 0.05
    margins: Mapping[str, float] = field(
        default_factory=lambda: {"test_accuracy": 0.005, "train_loss": 0.05}
    )
    early_fraction: float = 0.1
    #: (problem, optimizer, accuracy in %, source): quoted figures, for orientation only.
    reference_accuracy: tuple[tuple[str, str, float, str], ...] = ()
    sentences: tuple[Sentence, ...] = ()

    def margin(self, metric: str, mean_a: float, mean_b: float) -> float:
        """Accuracy: absolute. Loss: relative to the pair's mean, so the same margin whichever
        of the two methods is written first."""
        m = float(self.margins[metric])
        return m * (abs(mean_a) + abs(mean_b)) / 2 if RELATIVE_MARGIN[metric] else m


def _choice(claim_id: str, key: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"claim {claim_id!r}: unknown {key} {value!r}; valid: {list(valid)}")
    return value


def _names(claim_id: str, key: str, value) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"claim {claim_id!r}: {key} must be a non-empty list of names")
    return names


def _couples(cid: str, key: str, value) -> tuple[tuple[str, str], ...]:
    out = tuple(tuple(_names(cid, key, v)) for v in value or ())
    if any(len(p) != 2 for p in out):
        raise ValueError(f"claim {cid!r}: {key} must be a list of [method, method] pairs")
    return out  # type: ignore[return-value]


CHECK_KEYS = {"id", "sentence", "problems", "a", "b", "metric", "kind", "when", "section",
              "reading", "quantifier", "parts", "share"}  # fmt: skip
SENTENCE_KEYS = {"id", "section", "text", "part", "reading", "quantifier", "checks"}


def _unknown(what: str, d: Mapping, keys: set[str]) -> None:
    if unknown := set(d) - keys:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)}; valid: {sorted(keys)}")


def _check(i: int, c: Mapping) -> Claim:
    cid = str(c.get("id", f"#{i}"))
    _unknown(f"claim {cid!r}", c, CHECK_KEYS)
    a, b = _names(cid, "a", c.get("a")), _names(cid, "b", c.get("b"))
    if set(a) & set(b):
        raise ValueError(f"claim {cid!r}: a method on both sides: {sorted(set(a) & set(b))}")
    kind = _choice(cid, "kind", c.get("kind"), KINDS)
    parts = _couples(cid, "parts", c.get("parts"))
    if (kind == "share") != bool(parts):
        raise ValueError(f"claim {cid!r}: parts (the differences [x, y] whose share of a - b "
                         "is tested) go with kind share, and only with it")  # fmt: skip
    share = float(c.get("share", 0.5))
    if not 0 < share < 1:
        raise ValueError(f"claim {cid!r}: share must lie in (0, 1)")
    return Claim(
        id=cid, sentence=str(c.get("sentence", "")),
        problems=_names(cid, "problems", c.get("problems")), a=a, b=b,
        metric=_choice(cid, "metric", c.get("metric"), METRICS), kind=kind,
        when=_choice(cid, "when", c.get("when", "final"), WHENS),
        section=str(c.get("section", "")), reading=str(c.get("reading", "")),
        quantifier=_choice(cid, "quantifier", c.get("quantifier", "every"), stats.QUANTIFIERS),
        parts=parts, share=share,
    )  # fmt: skip


def _sentence(i: int, s: Mapping, checks: Mapping[str, Claim]) -> Sentence:
    sid = str(s.get("id", f"#{i}"))
    _unknown(f"sentence {sid!r}", s, SENTENCE_KEYS)
    if not s.get("text") or not s.get("section"):
        raise ValueError(f"sentence {sid!r}: give its section and text")
    refs = []
    for r in s.get("checks") or ():
        r = {"check": r} if isinstance(r, str) else dict(r)
        _unknown(f"sentence {sid!r}", r, {"check", "problems", "pairs"})
        if r.get("check") not in checks:
            raise ValueError(f"sentence {sid!r}: no check {r.get('check')!r}")
        c = checks[r["check"]]
        ref = Ref(
            c.id,
            tuple(r.get("problems") or c.problems),
            _couples(sid, "pairs", r.get("pairs")) or tuple(c.pairs()),
        )
        if not set(ref.problems) <= set(c.problems) or not set(ref.pairs) <= set(c.pairs()):
            raise ValueError(f"sentence {sid!r}: problems or pairs that check {c.id!r} lacks")
        refs.append(ref)
    if not refs and not s.get("reading"):
        raise ValueError(f"sentence {sid!r}: no checks; say why in its reading")
    return Sentence(
        id=sid, section=str(s["section"]), text=" ".join(str(s["text"]).split()),
        reading=" ".join(str(s.get("reading", "")).split()), part=str(s.get("part", "")),
        quantifier=_choice(sid, "quantifier", s.get("quantifier", "every"), stats.QUANTIFIERS),
        checks=tuple(refs),
    )  # fmt: skip


def claims_from_dict(d: Mapping) -> tuple[list[Claim], ClaimSettings]:
    """The checks and settings of a claims config (``conf/claims/*.yaml``), validated; the
    sentences go into ``settings.sentences``."""
    if "claims" in d:
        raise ValueError("the list 'claims' is now 'checks' (with 'sentences' citing them): "
                         "see conf/claims/paper.yaml")  # fmt: skip
    margins = dict(d.get("margins") or {})
    if set(margins) != set(METRICS) or any(float(v) < 0 for v in margins.values()):
        raise ValueError(f"margins: give a non-negative margin for each of {list(METRICS)}")
    alpha, early = float(d.get("alpha", 0.05)), float(d.get("early_fraction", 0.1))
    if not 0 < alpha < 0.5 or not 0 < early <= 1:
        raise ValueError("alpha must lie in (0, 0.5) and early_fraction in (0, 1]")
    claims = [_check(i, c) for i, c in enumerate(d.get("checks") or ())]
    by_id = {c.id: c for c in claims}
    if len(by_id) != len(claims):
        raise ValueError("check ids must be unique")
    sentences = tuple(_sentence(i, s, by_id) for i, s in enumerate(d.get("sentences") or ()))
    if len({s.id for s in sentences}) != len(sentences):
        raise ValueError("sentence ids must be unique")
    settings = ClaimSettings(
        alpha=alpha, margins={k: float(v) for k, v in margins.items()}, early_fraction=early,
        reference_accuracy=tuple(
            (r["problem"], r["optimizer"], float(r["accuracy"]), str(r.get("source", "")))
            for r in d.get("reference_accuracy") or ()
        ),
        sentences=sentences,
    )  # fmt: skip
    return claims, settings


def load(path: str | Path) -> tuple[list[Claim], ClaimSettings]:
    """``claims_from_dict`` of a YAML file."""
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping with 'checks' and the settings")
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


def _test(claim: Claim, w: stats.Welch, values, unit, settings: ClaimSettings, up: bool):
    """One row's test (``unit``: a, b and, for ``share``, the part (x, y))."""
    alpha, (a, b, part) = settings.alpha, unit
    if claim.kind == "share":
        return stats.share(values, a, b, *part, claim.share, alpha) | {"margin": claim.share}
    if claim.kind == "better":
        return stats.better(w, alpha) | {"margin": math.nan}
    margin = settings.margin(claim.metric, w.mean_a, w.mean_b)
    if claim.kind == "different":
        return stats.different(w, up, margin, alpha) | {"margin": margin}
    test = stats.non_inferior if claim.kind == "non_inferior" else stats.equivalent
    return test(w, margin, alpha) | {"margin": margin}


def _notes(unit, values, w, short, at) -> tuple[list[str], tuple[int, int], tuple[int, int]]:
    """Why values are missing, per method of the row: incomplete runs, or no value."""
    a, b, part = unit
    notes, missing, cut = [w.reason] * bool(w.reason), {}, {}
    for m in dict.fromkeys((a, b, *(part or ()))):
        n, c = len(values[m]), int(short.get(m, 0))
        missing[m], cut[m] = n - int(np.isfinite(values[m]).sum()), c
        notes += [f"{c} of {label(m)}'s {n} runs have no evaluation at step {at} "
                  "(incomplete)"] * bool(c)  # fmt: skip
        notes += [f"{missing[m] - c} of {label(m)}'s {n} runs have no value (diverged, "
                  "failed or non-finite)"] * bool(missing[m] - c)  # fmt: skip
    return notes, (missing[a], missing[b]), (cut[a], cut[b])


def _rows(claim: Claim, problem: str, part: pd.DataFrame, settings: ClaimSettings, at: int):
    """The rows of one check on one problem (``part``: one row per run, from ``values_at``)."""
    metric = claim.metric
    values = {m: part.loc[part["optimizer"] == m, metric].to_numpy(float) for m in claim.methods()}
    short = part.groupby("optimizer")[f"{metric}_incomplete"].sum()
    units = [(a, b, p) for a, b in claim.pairs() for p in (claim.parts or (None,))]
    tests = [stats.welch(values[a], values[b], LOWER_IS_BETTER[metric]) for a, b, _ in units]
    up = bool(np.nansum([w.diff for w in tests]) >= 0)  # `different`: one way for all pairs
    results = [_test(claim, w, values, u, settings, up) for w, u in zip(tests, units, strict=True)]
    verdicts = [r["verdict"] for r in results]
    ps, qs = [r["p_value"] for r in results], [r["p_contra"] for r in results]
    overall = stats.combine(verdicts, ps, qs, settings.alpha, claim.quantifier)
    p_holm, q_holm = stats.holm(ps), stats.holm(qs)
    incomplete = int(sum(short.get(m, 0) for m in claim.methods()))
    for i, (unit, w, r) in enumerate(zip(units, tests, results, strict=True)):
        a, b, p = unit
        notes, missing, cut = _notes(unit, values, w, short, at)
        ci = (w.interval(1 - settings.alpha) if claim.kind != "share"
              else (r["ci_low"], r["ci_high"]))  # fmt: skip
        est = r if claim.kind == "share" else {"diff": w.diff, "se": w.se, "df": w.df}
        notes += [r.get("reason", "")] * bool(r.get("reason"))
        yield dict(
            problem=problem, claim=claim.id, kind=claim.kind, quantifier=claim.quantifier,
            metric=metric, when=claim.when, a=a, b=b, part="-".join(p) if p else "",
            n_a=w.n_a, n_b=w.n_b, missing_a=missing[0], missing_b=missing[1],
            incomplete_a=cut[0], incomplete_b=cut[1], incomplete=incomplete, mean_a=w.mean_a,
            mean_b=w.mean_b, std_a=w.std_a, std_b=w.std_b, diff=est["diff"], se=est["se"],
            df=est["df"], ci_low=ci[0], ci_high=ci[1], decision_low=r["decision_low"],
            decision_high=r["decision_high"], margin=r["margin"],
            min_margin=r.get("min_margin", math.nan),
            power_at_zero=r.get("power_at_zero", math.nan), p_value=r["p_value"],
            p_holm=p_holm[i], p_contra=r["p_contra"],
            p_contra_holm=q_holm[i], pair_verdict=r["verdict"], claim_verdict=overall,
            at_step=at, reason="; ".join(dict.fromkeys(notes)),
            **_cites(claim, problem, a, b, settings),
        )  # fmt: skip


def _cites(claim: Claim, problem: str, a: str, b: str, settings: ClaimSettings) -> dict:
    """The sentences a row serves: their ids, sections, texts and readings."""
    cited = [s for s in settings.sentences if any(r.selects(claim.id, problem, a, b)
                                                  for r in s.checks)]  # fmt: skip
    if not cited:
        return dict(cites="", section=claim.section, sentence=claim.sentence,
                    reading=claim.reading)  # fmt: skip
    join = lambda xs: " | ".join(dict.fromkeys(x for x in xs if x))  # noqa: E731
    sections = ", ".join(dict.fromkeys(s.section for s in cited))
    return dict(cites=", ".join(s.id for s in cited), section=sections,
                sentence=join(s.text for s in cited),
                reading=join([*(s.reading for s in cited), claim.reading]))  # fmt: skip


def check(replicates: pd.DataFrame, claims: Iterable[Claim], settings: ClaimSettings):
    """One row per (check, problem, pair) present in ``replicates`` (the tidy runs table of
    the selected step sizes), with the numbers and verdicts; see the module docstring.
    Checks whose problem or methods are not all in the table are skipped."""
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
            if set(claim.methods()) <= set(part["optimizer"]):
                rows += _rows(claim, problem, part, settings, int(part["step"].iloc[0]))
    return pd.DataFrame(rows, columns=COLUMNS)


def sentence_verdicts(table: pd.DataFrame, settings: ClaimSettings) -> pd.DataFrame:
    """Per sentence of ``settings.sentences``: its verdict over all the rows it rests on
    (``problem`` "all"), then per problem, by its quantifier; ``not_run``: the problems it is
    about that the table lacks. A sentence without checks is ``not checked``."""
    keys = list(zip(table["claim"], table["problem"], table["a"], table["b"], strict=True))
    out = []
    for s in settings.sentences:
        base = dict(sentence=s.id, section=s.section, part=s.part)
        if not s.checks:
            out.append(base | dict(problem="all", verdict=NOT_CHECKED, pairs=0, checks="",
                                   not_run=""))  # fmt: skip
            continue
        rows = table[[any(r.selects(*k) for r in s.checks) for k in keys]]
        about = {p for r in s.checks for p in r.problems}
        absent = [p for p in PROBLEM_LABELS if p in about - set(rows["problem"])]
        checks = ", ".join(dict.fromkeys(r.check for r in s.checks))
        groups = [("all", rows)] + [(p, rows[rows["problem"] == p]) for p in
                                    dict.fromkeys(rows["problem"])]  # fmt: skip
        for problem, part in groups:
            verdict = NOT_RUN if not len(part) else stats.combine(
                list(part["pair_verdict"]), part["p_value"], part["p_contra"], settings.alpha,
                s.quantifier)  # fmt: skip
            out.append(base | dict(problem=problem, verdict=verdict, pairs=len(part),
                                   checks=checks, not_run=", ".join(absent)))  # fmt: skip
    return pd.DataFrame(out, columns=SENTENCE_COLUMNS)


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


def short_budgets(runs: pd.DataFrame) -> dict[str, int]:
    """Per problem, the steps of a run that is not the paper's protocol (empty for ``paper``
    replicates): their verdicts are about that budget only."""
    if "profile" not in runs or (runs["profile"].astype(str) == "paper").all():
        return {}
    return {str(k): int(v) for k, v in budgets(runs).items()}


def said(verdict: str, steps: Sequence[int] = ()) -> str:
    """A verdict as the report words it: at a budget short of the paper's (``steps``, one
    per problem read) a contrary result is "not reproduced in an N-step run", because the
    paper's statements are about the end of its own budget; confirmed and the rest as is."""
    if verdict != "contradicted" or not steps:
        return verdict
    n = sorted(set(steps))
    return (
        f"not reproduced in a {n[0]:,}-step run"
        if len(n) == 1
        else "not reproduced in runs of " + "/".join(f"{x:,}" for x in n) + " steps"
    )


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
    head = (
        f"    - {label(r.a)} {_num(m, r.mean_a)} ± {_num(m, r.std_a, digits=2)} (n={r.n_a}) "
        f"vs {label(r.b)} {_num(m, r.mean_b)} ± {_num(m, r.std_b, digits=2)} (n={r.n_b})"
    )
    if r.kind == "share":
        x, y = (label(p) for p in r.part.split("-"))
        text = (
            f"{head}: share of the gap made by {x} - {y} = {r.diff:.3g}, {conf} Fieller "
            f"interval [{r.ci_low:.3g}, {r.ci_high:.3g}], decision [{r.decision_low:.3g}, "
            f"{r.decision_high:.3g}] vs > {r.margin:g}, p = {r.p_value:.3g}"
        )
    else:
        text = (f"{head}: d = {_num(m, r.diff, True)}, {conf} CI [{_num(m, r.ci_low, True)}, "
                f"{_num(m, r.ci_high, True)}], p = {r.p_value:.3g}")  # fmt: skip
    if r.kind in MARGIN_KINDS:
        low, high = _num(m, r.decision_low, True), _num(m, r.decision_high, True)
        text += f", decision [{low}, {high}] vs margin {_num(m, r.margin, True)[1:]}"
    if r.kind in ("non_inferior", "equivalent") and not math.isnan(r.min_margin):
        text += (f"; smallest margin these data could confirm {_num(m, r.min_margin, True)[1:]}"
                 f" (power at a true difference of 0: {r.power_at_zero:.2f})")  # fmt: skip
    text += f"; contrary p = {r.p_contra:.3g} (Holm {r.p_contra_holm:.3g})"
    return text + f": {r.pair_verdict}" + (f" ({r.reason})" if r.reason else "")


def _counts(verdicts: pd.Series, order=stats.VERDICTS) -> str:
    counts = verdicts.value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in order)


def _tests_text(settings: ClaimSettings) -> list[str]:
    alpha, conf, decide = settings.alpha, _pct(1 - settings.alpha), _pct(1 - 2 * settings.alpha)
    return [
        "Per pair, d is the difference of the means over seeds, oriented so that d > 0 means "
        "a is better (loss: mean_b - mean_a; accuracy: mean_a - mean_b), with Welch's standard "
        f"error and Welch-Satterthwaite degrees of freedom; alpha = {alpha}.", "",
        "- **better**: one-sided Welch t-test of d > 0; contrary: d < 0.",
        f"- **non_inferior** (at least as good as): the one-sided {conf} lower bound of d above "
        "-margin; contrary: the upper bound below it.",
        f"- **equivalent** (identical, similar): TOST, the {decide} interval of d inside "
        "(-margin, margin); contrary: wholly outside.",
        "- **different** (distinct clusters): two-sided, every pair the same way; contrary: "
        "the pair is equivalent within the margin.",
        "- **share** (accounts for most of a gap): Fieller's interval of the share above it; "
        "contrary: below it, the gap being significant.", "",
        "A statement over several pairs (every pair: the default) is confirmed when every pair "
        "is confirmed at alpha (an intersection-union test, no correction) and contradicted when "
        "a pair's contrary survives Holm over the pairs; 'at least one pair' statements (any) "
        "the other way round. **underpowered**: a margin test that even an observed difference "
        "of zero could not pass at this spread and n; **untestable**: no test (fewer than two "
        "values, or no spread on either side).", "",
        f"Margins: test accuracy {100 * settings.margins['test_accuracy']:g} percentage points "
        f"(absolute); training loss {_pct(settings.margins['train_loss'])} of the pair's mean "
        f"(relative). 'CI' is the two-sided {conf} interval (reported); the verdicts use p "
        f"(the {decide} 'decision' interval's ends are the one-sided {conf} bounds). Early "
        f"values: training loss at the evaluation nearest {_pct(settings.early_fraction)} of the "
        "budget. Every run is read at exactly the check's step; runs without a value there are "
        "left out and counted.", "",
    ]  # fmt: skip


def _sentence_lines(table: pd.DataFrame, settings: ClaimSettings,
                    short: dict[str, int]) -> list[str]:  # fmt: skip
    verdicts = sentence_verdicts(table, settings)
    if not len(verdicts):
        return []
    lines = [
        "## The sentences of §6.2",
        "",
        "Each sentence (the paper's words), the project's "
        "reading, and its verdict over every pair it rests on, then per problem.",
        "",
    ]

    def short_of(p: str) -> list[int]:
        return [short[p]] if p in short else []

    for s in settings.sentences:
        rows = verdicts[verdicts["sentence"] == s.id].set_index("problem")
        top = rows.loc["all"]
        clause = f" (checked: {s.part})" if s.part else ""

        read = [n for p in rows.index if p != "all" for n in short_of(p)]
        lines.append(f'- **{said(top["verdict"], read)}** {s.section} `{s.id}`: "{s.text}"'
                     f"{clause}")  # fmt: skip
        lines.append(f"    - reading: {s.reading}" if s.reading else "    - reading: the words")
        if top["verdict"] != NOT_CHECKED:
            each = ", ".join(f"{PROBLEM_LABELS.get(p, p)} {said(v, short_of(p))}"
                             for p, v in rows["verdict"].drop("all").items())  # fmt: skip
            absent = ", ".join(PROBLEM_LABELS.get(p, p) for p in top["not_run"].split(", ") if p)
            lines.append(f"    - {top['pairs']} pairs ({s.quantifier}): {each or 'none run'}"
                         + (f"; not run: {absent} (the verdict is on the problems run)"
                            if absent else "") + f"; checks {top['checks']}")  # fmt: skip
    return [*lines, ""]


def report(table: pd.DataFrame, settings: ClaimSettings, summary: pd.DataFrame | None = None,
           banner: str = "", short: dict[str, int] | None = None) -> str:  # fmt: skip
    """``claims.md``: the tests, the sentences' verdicts, then one section per problem, every
    check's verdict and its numbers. ``short``: per problem, the steps of runs shorter than
    the paper's (``short_budgets``), whose contrary verdicts read "not reproduced"."""
    short = short or {}
    conf = _pct(1 - settings.alpha)
    per_claim = table.drop_duplicates(["claim", "problem"])
    lines = [
        "# Fig. 5 claims (§6.2 of the paper), checked against the replicates", "",
        f"Checks: {_counts(per_claim['claim_verdict'])} (check x problem: {len(per_claim)}).",
        "", *_incomplete_line(per_claim), *_tests_text(settings),
    ]  # fmt: skip
    if not len(table):
        lines += ["No claim could be checked: no check's problem and methods are all in the "
                  "replicates.", ""]  # fmt: skip
    lines += _sentence_lines(table, settings, short) if len(table) else []
    order = {p: i for i, p in enumerate(PROBLEM_LABELS)}
    for problem in sorted(table["problem"].unique(), key=lambda p: (order.get(p, 99), p)):
        lines += [" ".join(filter(None, ["##", PROBLEM_LABELS.get(problem), problem])), ""]
        rows = table[table["problem"] == problem]
        for claim, pairs in rows.groupby("claim", sort=False):
            c = pairs.iloc[0]
            when = "final" if c["when"] == "final" else f"early, step {c['at_step']}"
            cites = f"serves {c['cites']}" if c["cites"] else c["sentence"]
            verdict = said(c["claim_verdict"], [short[problem]] if problem in short else [])
            lines.append(f"- **{verdict}** `{claim}` ({c['section']}; {c['kind']}, "
                         f"{c['quantifier']} pair, {c['metric'].replace('_', ' ')}, {when}): "
                         f"{cites}")  # fmt: skip
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
    text = report(table, settings, summary, banner, short_budgets(replicates))
    paths = {"claims": out / "claims.md", "claims_csv": out / "claims.csv"}
    atomic_write(paths["claims"], lambda p: Path(p).write_text(text, encoding="utf-8"))
    atomic_write(paths["claims_csv"], lambda p: table.to_csv(p, index=False))
    return paths
