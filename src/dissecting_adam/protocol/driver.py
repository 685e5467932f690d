"""``make reproduce-fig5``: step-size search, replicates, Fig. 5, tables, claims.

The driver receives built objects (``Reproduction``: one base RunSpec per (problem,
optimizer), the search settings, a launcher) and derives every run it needs from the base
specs (``RunSpec.derive``: step size, seed, step budget). It finds finished runs in the
results store by identity, so an interrupted reproduction restarts where it stopped. The
search is the pure logic of ``search.py``, driven in rounds: each round gathers the next
runs of every pair and hands them to the launcher as one batch.

    probe:     short runs (probe_fraction of the budget) from the top of the grid down,
               until one does not diverge: the largest stable step size;
    search:    StepSizeSearch on the grid from there down, full budget, search seed;
    replicate: the selected step size with every replicate seed;
    report:    curves, summary, claims and figures from the store only (``outputs``).

``dry_run`` prints the plan (what is in the store, what would run next) and runs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import methods
from ..runner.spec import RunSpec
from . import outputs
from .search import METRICS, Outcome, SearchSettings

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (problem, optimizer)


@dataclass(frozen=True)
class Reproduction:
    """One reproduction: what to run and where its outputs go."""

    base: dict[Pair, RunSpec]  # full budget, the config's lr and seed (replaced per run)
    search: SearchSettings
    launch: Callable[[Sequence[RunSpec]], None]
    out_dir: Path
    profile: str
    claims: tuple | None = None  # (claims, ClaimSettings) checked against the replicates

    @property
    def pairs(self) -> list[Pair]:
        return list(self.base)

    def probe(self, pair: Pair, lr: float) -> RunSpec:
        base = self.base[pair]
        steps = self.search.probe_steps(base.num_steps)
        return base.derive(lr=lr, seed=self.search.search_seed, num_steps=steps)

    def search_run(self, pair: Pair, lr: float) -> RunSpec:
        return self.base[pair].derive(lr=lr, seed=self.search.search_seed)

    def replicate(self, pair: Pair, lr: float, seed: int) -> RunSpec:
        return self.base[pair].derive(lr=lr, seed=seed)


# --- the store ------------------------------------------------------------------------
def finished_summary(spec: RunSpec) -> dict | None:
    """The stored summary of exactly this run, or None if it has not finished."""
    run = spec.run_dir()
    return run.summary() if run.is_finished(spec.identity()) else None


def outcome_of(spec: RunSpec, search: SearchSettings) -> Outcome | None:
    summary = finished_summary(spec)
    if summary is None:
        return None
    return Outcome(summary["status"], metric_of(spec, summary, search))


def metric_of(spec: RunSpec, summary: dict, search: SearchSettings) -> float | None:
    """The selection metric of a finished run: final, or best over its evaluations."""
    split, column, higher = METRICS[search.metric]
    if search.mode == "final":
        value = (summary.get("final") or {}).get(f"{split}_{column}")
        return None if value is None else float(value)
    rows = spec.run_dir().read_metrics()
    values = [r[column] for r in rows if r.get("split") == split and r.get(column) is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


# --- the search -----------------------------------------------------------------------
@dataclass
class PairState:
    """What is known of one pair's search: the probe's result and the search runs."""

    top: int | None = None  # grid index of the largest stable lr, once the probe found it
    probes: dict[float, Outcome] = field(default_factory=dict)
    outcomes: dict[float, Outcome] = field(default_factory=dict)


def search_round(r: Reproduction, states: dict[Pair, PairState]) -> list[RunSpec]:
    """Update each pair's state from the store; return the runs the search needs next."""
    batch = []
    for pair, st in states.items():
        method = methods.get(pair[1])
        lrs = r.search.search(method).lrs
        if st.top is None:  # probe phase: from the top down, one run at a time
            for i, lr in enumerate(lrs):
                out = st.probes.get(lr) or outcome_of(r.probe(pair, lr), r.search)
                if out is None:
                    batch.append(r.probe(pair, lr))
                    break
                st.probes[lr] = out
                if out.status != "diverged":
                    st.top = i
                    break
            else:
                st.top = len(lrs)  # everything diverged
            if st.top is None:
                continue
        search = r.search.search(method, st.top)
        for lr in search.lrs:
            if lr not in st.outcomes and (out := outcome_of(r.search_run(pair, lr), r.search)):
                st.outcomes[lr] = out
        known = st.outcomes
        pending = (
            [search.next_lr(known)]
            if search.largest_stable(known) is None
            else [lr for lr in search.searched(known) if lr not in known]
        )
        batch += [r.search_run(pair, lr) for lr in pending if lr is not None]
    return batch


def selections(r: Reproduction, states: dict[Pair, PairState]) -> dict:
    """pair -> (Selection or None, state)."""
    out = {}
    for pair, st in states.items():
        search = r.search.search(methods.get(pair[1]), st.top or 0)
        sel = search.select(st.outcomes) if st.top is not None and search.lrs else None
        out[pair] = (sel, st)
    return out


def run_search(r: Reproduction) -> dict:
    """The search for every pair, in rounds; returns their selections."""
    states = {pair: PairState() for pair in r.pairs}
    while batch := search_round(r, states):
        log.info("search round: %d run(s)", len(batch))
        r.launch(batch)
    return selections(r, states)


def replicates(r: Reproduction, chosen: dict) -> list[RunSpec]:
    return [
        r.replicate(pair, sel.lr, seed)
        for pair, (sel, _) in chosen.items()
        if sel is not None
        for seed in r.search.replicate_seeds
    ]


def warn_edges(r: Reproduction, chosen: dict) -> None:
    for pair, (sel, _) in chosen.items():
        top = r.search.grid_top(methods.get(pair[1]))
        if sel is None:
            log.warning("%s/%s: no step size completed; no replicates", *pair)
        elif sel.on_lower_edge:
            log.warning("%s/%s: selected lr %g is on the lower edge of the searched range",
                        *pair, sel.lr)  # fmt: skip
        elif sel.lr >= top:
            log.warning(
                "%s/%s: selected lr %g is the top of the grid (search.grid.hi.%s), which was "
                "stable; larger step sizes were not tried", *pair, sel.lr, pair[1]
            )  # fmt: skip


# --- the whole reproduction -----------------------------------------------------------
def reproduce(r: Reproduction) -> dict[str, Path]:
    t0 = time.perf_counter()
    chosen = run_search(r)
    warn_edges(r, chosen)
    todo = [spec for spec in replicates(r, chosen) if finished_summary(spec) is None]
    if todo:
        log.info("replicates: %d run(s)", len(todo))
        r.launch(todo)
    paths = outputs.write(r, chosen)
    print(f"Done in {(time.perf_counter() - t0) / 60:.1f} min. Outputs:")
    for path in sorted(r.out_dir.iterdir()):
        print(f"  {path}")
    return paths


def dry_run(r: Reproduction) -> str:
    """The plan as text: per pair, what the store holds and what would run next."""
    states = {pair: PairState() for pair in r.pairs}
    batch = search_round(r, states)
    chosen = selections(r, states)
    reps = replicates(r, chosen)
    rep_todo = [s for s in reps if finished_summary(s) is None]
    nxt = {}
    for spec in batch:
        nxt.setdefault((spec.problem, spec.optimizer.name), []).append(spec)
    lines = [f"Plan ({r.profile} profile, search '{r.search.name}'; nothing is run):"]
    for pair, st in states.items():
        sel, _ = chosen[pair]
        done = len(st.probes) + len(st.outcomes)
        lines.append(f"  {pair[0]}/{pair[1]}: {done} search run(s) in the store")
        for spec in nxt.get(pair, []):
            kind = "probe" if spec.num_steps != r.base[pair].num_steps else "search"
            lines.append(f"    next: {kind} lr={spec.optimizer.lr:g} seed={spec.seed} "
                         f"({spec.num_steps} steps) -> {spec.run_dir().path}")  # fmt: skip
        if sel is not None:
            mine = [s for s in reps if (s.problem, s.optimizer.name) == pair]
            left = [s for s in mine if s in rep_todo]
            lines.append(f"    selected lr={sel.lr:g}; replicates: {len(mine) - len(left)} "
                         f"in the store, {len(left)} to run")  # fmt: skip
        elif pair not in nxt:
            lines.append("    no step size completed: no replicates")
    searching = sum(1 for pair in r.pairs if chosen[pair][0] is None and pair in nxt)
    lines.append(
        f"Next round: {len(batch)} run(s); replicates to run: {len(rep_todo)} (+ "
        f"{searching * len(r.search.replicate_seeds)} for the {searching} pair(s) still "
        "searching, after their search)"
    )
    return "\n".join(lines)
