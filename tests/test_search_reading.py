"""How the search is read (issue 22): the probe's length as stated, when a whole run may
start from its probe, the selection metric in either mode and what the other mode picks,
and a winner left on the lower edge of the search as an error that stops its pair."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from conftest import tiny_spec

from dissecting_adam.protocol import driver, outputs
from dissecting_adam.protocol.search import (
    Outcome,
    SearchSettings,
    Selection,
    StepSizeSearch,
    metric_from,
    select_with,
)
from dissecting_adam.runner import session
from dissecting_adam.runner.spec import ConfigError


# --- the probe's length ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "fraction, budget, steps",
    [
        (0.25, 1000, 250),  # the stated fraction, not a whole number of eval intervals
        (0.125, 100, 13),  # 12.5: half up (Python's round would give 12)
        (0.35, 10, 4),  # 3.5 as written (the float product is 3.4999...)
        (0.1, 6000, 600),
        (0.2, 1000, 200),  # conf/search/preview.yaml
        (0.001, 100, 1),  # at least one step
        (0.9995, 1000, None),  # rounds to the whole budget: probes are whole runs
        (1.0, 1000, None),
    ],
)
def test_a_probe_stops_at_the_stated_fraction_rounded_half_up(fraction, budget, steps):
    assert SearchSettings("x", probe_fraction=fraction).probe_steps(budget) == steps


@pytest.mark.parametrize(
    "fraction, budget, every, resumes",
    [
        (0.25, 1000, 100, False),  # stops at 250: no evaluation of the whole run there
        (0.2, 1000, 100, True),  # 200: an evaluation step
        (0.1, 6000, 600, True),  # conf/search/paper.yaml: 10 evaluation points
        (1.0, 1000, 100, False),  # whole-run probes: nothing to start from
    ],
)
def test_a_whole_run_resumes_from_its_probe_only_at_an_evaluation_step(
    fraction, budget, every, resumes
):
    assert SearchSettings("x", probe_fraction=fraction).resumes_from_probe(budget, every) is resumes


@pytest.mark.parametrize("fraction, stop, adopted", [(0.5, 2, True), (0.75, 3, False)])
def test_the_driver_adopts_a_probe_only_where_it_stopped_at_an_evaluation_step(
    tmp_path, fraction, stop, adopted
):
    """A 4-step run evaluated every 2 steps: a probe that stopped at 3 is evaluated there
    (the runner evaluates at ``stop_at``), which the whole run is not, so it trains from
    scratch; a probe that stopped at 2 is its exact first part and is adopted."""
    base = tiny_spec(tmp_path, "train.num_steps=4", "optimizer=adam")
    pair = (base.problem, base.optimizer.name)
    launched = []
    r = driver.Reproduction(
        base={pair: base},
        search=SearchSettings("smoke", probe_fraction=fraction, progress_ratio=None),
        launch=lambda specs, on_done=None: launched.extend(specs),
        out_dir=tmp_path / "out",
        profile="smoke",
    )
    probe = r.probe(pair, 0.01)
    summary = session.execute(probe)
    assert probe.train.stop_at == stop and summary["status"] == "completed"
    rows = probe.run_dir().read_metrics()
    assert stop in {row["step"] for row in rows}
    # mode best, through the store: the best test accuracy over the evaluations after step 0
    best = max(row["accuracy"] for row in rows if row["split"] == "test" and row["step"] > 0)
    assert driver.metric_of(probe, summary, replace(r.search, mode="best")) == best
    whole = r.search_run(pair, 0.01)
    driver.launch(r, [whole])
    assert launched == [whole]
    assert whole.run_dir().metrics_file.exists() is adopted


# --- the metric in either mode, and the other mode's pick -----------------------------------
ROWS = [
    {"step": 0, "split": "test", "loss": 2.3, "accuracy": 0.95},  # step 0: left out
    {"step": 10, "split": "test", "loss": 1.0, "accuracy": 0.50},
    {"step": 20, "split": "test", "loss": 0.8, "accuracy": 0.70},
    {"step": 20, "split": "train_eval", "loss": 0.4, "accuracy": 0.90},
    {"step": 30, "split": "test", "loss": math.nan, "accuracy": None},  # not finite: left out
    {"step": 40, "split": "test", "loss": 0.9, "accuracy": 0.60},
    {"step": 40, "split": "train_eval", "loss": 0.5, "accuracy": 0.80},
]
SUMMARY = {"final": {"test_accuracy": 0.60, "train_eval_loss": 0.5}}


@pytest.mark.parametrize(
    "metric, mode, rows, value",
    [
        ("test_accuracy", "final", ROWS, 0.60),
        ("test_accuracy", "best", ROWS, 0.70),
        ("train_loss", "final", ROWS, 0.5),
        ("train_loss", "best", ROWS, 0.4),
        ("test_accuracy", "best", ROWS[:1], None),  # no evaluation after step 0
    ],
)
def test_the_metric_is_final_or_the_best_over_the_evaluations(metric, mode, rows, value):
    assert metric_from(SUMMARY, rows, metric, mode) == value


LRS = (1.0, 0.3, 0.1, 0.03, 0.01)
SEARCH = StepSizeSearch(LRS, points=3, max_extensions=1)
FINAL = {  # mode final picks 0.3, inside its window: no extension
    1.0: Outcome("completed", 0.50),
    0.3: Outcome("completed", 0.80),
    0.1: Outcome("completed", 0.70),
}


@pytest.mark.parametrize(
    "outcomes, best, pick",
    [
        # best ranks 0.1 first, on the lower edge: it would also have searched 0.03
        (FINAL, {1.0: 0.60, 0.3: 0.82, 0.1: 0.85},
         {"lr": 0.1, "metric": 0.85, "complete": False, "needs": 0.03}),
        (FINAL, {1.0: 0.90, 0.3: 0.82, 0.1: 0.85},
         {"lr": 1.0, "metric": 0.90, "complete": True, "needs": None}),
        # a run that diverged ranks last whatever its best evaluation before that
        ({**FINAL, 0.1: Outcome("diverged")}, {1.0: 0.5, 0.3: 0.82, 0.1: 0.99},
         {"lr": 0.3, "metric": 0.82, "complete": True, "needs": None}),
        # final extended to 0.03; best's window stops at 0.1, so 0.03 is not its to pick
        ({**FINAL, 0.1: Outcome("completed", 0.9), 0.03: Outcome("completed", 0.95)},
         {1.0: 0.91, 0.3: 0.82, 0.1: 0.9, 0.03: 0.99},
         {"lr": 1.0, "metric": 0.91, "complete": True, "needs": None}),
    ],
)  # fmt: skip
def test_the_other_mode_picks_from_the_same_runs(outcomes, best, pick):
    assert SEARCH.next_lr(outcomes) is None  # the search (in its own mode) is complete
    assert select_with(SEARCH, outcomes, best) == pick


def test_the_other_mode_picks_nothing_when_no_run_of_its_window_completed():
    diverged = {lr: Outcome("diverged") for lr in LRS}
    assert select_with(SEARCH, diverged, dict.fromkeys(LRS, 0.5)) is None


# --- a winner on the lower edge of the search -----------------------------------------------
def _edge(lrs, points, max_extensions, best):
    """A complete search on ``lrs`` (all stable) whose metric peaks at ``best``."""
    search = StepSizeSearch(lrs, points=points, max_extensions=max_extensions)
    outcomes = {}
    while (lr := search.next_lr(outcomes)) is not None:
        outcomes[lr] = Outcome("completed", 1.0 - abs(math.log10(lr / best)), True)
    return search, outcomes


@pytest.mark.parametrize(
    "lrs, points, max_extensions, best, edge",
    [
        (LRS, 2, 1, 1e-4, (False, 1)),  # the winner stays lowest after the one extension
        (LRS, 3, 5, 1e-4, (True, 2)),  # the grid (grid.lo) ends before the extensions do
        (LRS, 2, 0, 1e-4, (False, 0)),  # no extension asked for
        (LRS, 2, 3, 0.3, None),  # bracketed
    ],
)
def test_lower_edge_says_whether_the_grid_or_the_extensions_ended(
    lrs, points, max_extensions, best, edge
):
    search, outcomes = _edge(lrs, points, max_extensions, best)
    assert search.lower_edge(outcomes) == edge


def _reproduction(tmp_path, **search):
    """Two pairs on stand-in specs: adam's search ends on the lower edge after its
    extensions (an error), msgd's is bracketed with its cap reached (a warning)."""
    base = {}
    for name in ("adam", "msgd"):
        spec = tiny_spec(tmp_path / "results", "train.num_steps=4", f"optimizer={name}")
        base[(spec.problem, name)] = spec
    launched = []
    search = {"max_extensions": 1, **search}
    s = SearchSettings("paper", points=2, replicate_seeds=(0, 1), **search)
    r = driver.Reproduction(
        base=base,
        search=s,
        launch=lambda specs, on_done=None: launched.extend(specs),
        out_dir=tmp_path / "out",
        profile="paper",
    )
    from dissecting_adam import methods

    chosen = {}
    for pair in r.pairs:
        lrs = s.lrs(methods.get(pair[1]))
        st = driver.PairState(top=0, cap_reached=pair[1] == "msgd")
        st.probes = {lrs[0]: Outcome("completed", None, True)}
        peak = 1e-9 if pair[1] == "adam" else lrs[0]  # adam's best is below the grid
        search, st.outcomes = _edge(lrs[:6], s.points, s.max_extensions, peak)
        chosen[pair] = (search.select(st.outcomes), st)
    return r, chosen, launched


def test_a_winner_on_the_lower_edge_after_the_extensions_stops_its_pair(tmp_path, monkeypatch):
    r, chosen, launched = _reproduction(tmp_path)
    (problem, _), adam = r.pairs[0], chosen[r.pairs[0]][0]
    assert adam.on_lower_edge and not chosen[r.pairs[1]][0].on_lower_edge
    stops = driver.stopped(r, chosen)
    assert list(stops) == [(problem, "adam")]
    line = stops[(problem, "adam")]
    assert (
        line.startswith(
            f"{problem}/adam: search stopped, no replicates: the selected lr {adam.lr:g} "
        )
        and "raise search.max_extensions (now 1)" in line
    )
    assert "\n" not in line
    # The whole reproduction: the other pair's replicates run, the outputs are written, and
    # the command ends with the one line (scripts/reproduce.py: status 1).
    monkeypatch.setattr(driver, "run_search", lambda r, tracker: chosen)
    monkeypatch.setattr(outputs.plots, "sensitivity", lambda *args, **kwargs: [None])
    with pytest.raises(ConfigError, match="1 pair\\(s\\) stopped") as err:
        driver.reproduce(r)
    assert line in str(err.value)
    assert {(s.optimizer.name, s.seed) for s in launched} == {("msgd", 0), ("msgd", 1)}
    selection = json.loads((r.out_dir / "selection.json").read_text())
    assert selection[f"{problem}/adam"]["stopped"] == line
    assert selection[f"{problem}/msgd"]["stopped"] is None
    assert selection[f"{problem}/msgd"]["cap_reached"]  # the cap stays a warning
    assert set(selection[f"{problem}/adam"]) >= {"lr", "other_mode", "on_lower_edge"}
    report = (r.out_dir / "search.md").read_text()
    assert f"**Stopped:** {line}" in report and "| stopped |" in report


@pytest.mark.parametrize(
    "max_extensions, fix",
    [
        (1, "lower search.grid.lo and raise search.max_extensions (now 1) and rerun"),
        (3, "lower search.grid.lo and rerun"),  # extensions left: the grid ended first
    ],
)
def test_at_the_grids_end_the_fix_is_to_lower_grid_lo(tmp_path, max_extensions, fix):
    # adam's grid: 1, 0.6, 0.3 (no point above its start, none below grid.lo)
    r, chosen, _ = _reproduction(tmp_path, lo=0.3, up_points=0, max_extensions=max_extensions)
    (line,) = driver.stopped(r, chosen).values()
    assert "lr 0.3 " in line and "(search.grid.lo=0.3)" in line and line.endswith(fix)
    assert [s.optimizer.name for s in driver.replicates(r, chosen)] == ["msgd", "msgd"]


def test_without_extensions_the_lower_edge_stays_a_warning(tmp_path, caplog):
    r, chosen, _ = _reproduction(tmp_path, max_extensions=0)
    assert driver.stopped(r, chosen) == {}
    driver.warn_edges(r, chosen, {})
    assert "lower edge" in caplog.text and "search.max_extensions=0" in caplog.text
    assert "cap of the grid" in caplog.text
    assert len(driver.replicates(r, chosen)) == 4


def test_a_selection_on_the_lower_edge_is_reported_in_the_selection_table():
    sel = Selection(lr=0.1, metric=0.8, on_lower_edge=True)
    other = {("p", "adam"): {"mode": "best", "lr": 0.3, "metric": 0.9, "complete": False,
                             "needs": 0.03}}  # fmt: skip
    table = outputs.selection_table({("p", "adam"): (sel, None)}, other, {("p", "adam"): "why"})
    row = table.iloc[0].to_dict()
    assert row["other_mode"] == "best" and row["other_lr"] == 0.3 and row["other_metric"] == 0.9
    assert row["other_note"] == "would also search lr=0.03" and row["replicates"] == "stopped"
