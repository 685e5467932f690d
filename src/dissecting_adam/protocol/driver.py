"""``make reproduce-fig5``: step-size search, replicates, Fig. 5, tables, claims.

The driver receives built objects (``Reproduction``: one base RunSpec per (problem,
optimizer), the search settings, a launcher) and derives every run it needs from the base
specs (``RunSpec.derive``: step size, seed, where to stop). It finds finished runs in the
results store by identity, so an interrupted reproduction restarts where it stopped. The
search is the pure logic of ``search.py``, driven in rounds: each round gathers the next
runs of every pair and hands them to the launcher as one batch.

    probe:     the first ``probe_fraction`` of a run (same schedule, stopped early), from
               the method's start up the grid while stable (to the cap), else down until
               stable: the largest stable step size (stable: not diverged, loss fell);
    search:    StepSizeSearch on the grid from there down, full budget, the search seed
               (outside the replicate seeds); a search run at a probed step size resumes
               from its probe's checkpoint instead of starting again;
    replicate: the selected step size with every replicate seed, except for a pair whose
               winner is the lowest step size searched after ``max_extensions``
               extensions or at ``grid.lo`` (``stopped``): an error that stops that pair
               (the others go on; the command then exits with status 1 and one line);
    report:    curves, summary, claims and figures from the store only (``outputs``), with
               what the other ``mode`` would have picked from the same runs (``other_modes``).

Batching (``r.batching``, from ``batching.resolve``): the launcher trains the runs of a batch
that differ only in seed and step size as groups of up to ``members``, so a search round's
step sizes of a pair form one group and so do its replicates. With groups, a pair's probe
round also probes ahead: the grid points the walk may need next, as many as fit in a group
(``probe_ahead``), so that one group answers what single probes answer in several rounds.
The walk reads only the outcomes it needs, so the largest stable step size, the search and
the selection are those of single probes; the probes it did not need stay in the store.

``dry_run`` prints the plan (what is in the store, what would run next) and runs nothing.

Longer than 300 lines: the rounds, the probing ahead, the stopped pairs and the dry run
read one pair state (``PairState``) that would otherwise be passed between modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import methods
from ..runner.plan import can_run
from ..runner.spec import ConfigError, RunSpec
from . import outputs
from .batching import Batching
from .progress import Tracker
from .search import Outcome, Probe, SearchSettings, metric_from, select_with

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
    batching: Batching = Batching()  # group size and launcher in effect, and why

    @property
    def pairs(self) -> list[Pair]:
        return list(self.base)

    def probe(self, pair: Pair, lr: float) -> RunSpec:
        """The probe at ``lr``: the search run's first part (the whole run if
        ``probe_fraction`` >= 1)."""
        base = self.base[pair]
        stop = self.search.probe_steps(base.num_steps)
        return base.derive(lr=lr, seed=self.search.search_seed, stop_at=stop, role="probe")

    def search_run(self, pair: Pair, lr: float) -> RunSpec:
        return self.base[pair].derive(lr=lr, seed=self.search.search_seed, role="search")

    def replicate(self, pair: Pair, lr: float, seed: int) -> RunSpec:
        return self.base[pair].derive(lr=lr, seed=seed, role="replicate")


# --- the store ------------------------------------------------------------------------
def finished_summary(spec: RunSpec) -> dict | None:
    """The stored summary of exactly this run, or None if it has not finished."""
    run = spec.run_dir()
    return run.summary() if run.is_finished(spec.identity()) else None


def outcome_of(spec: RunSpec, search: SearchSettings) -> Outcome | None:
    summary = finished_summary(spec)
    if summary is None:
        return None
    progress = progressed(spec, summary, search.progress_ratio)
    return Outcome(summary["status"], metric_of(spec, summary, search), progress)


def progressed(spec: RunSpec, summary: dict, ratio: float | None) -> bool | None:
    """Whether the final training loss (train-eval set) is below ``ratio`` x its value at
    step 0; None where either is missing (a diverged run) or there is no rule."""
    if ratio is None:
        return None
    final = (summary.get("final") or {}).get("train_eval_loss")
    rows = spec.run_dir().read_metrics()
    first = next((r["loss"] for r in rows if r["split"] == "train_eval" and r["step"] == 0), None)
    if final is None or first is None:
        return None
    return bool(final < ratio * first)


def metric_of(spec: RunSpec, summary: dict, search: SearchSettings) -> float | None:
    """The selection metric of a finished run: final, or best over its evaluations."""
    rows = spec.run_dir().read_metrics() if search.mode == "best" else []
    return metric_from(summary, rows, search.metric, search.mode)


# --- the search -----------------------------------------------------------------------
@dataclass
class PairState:
    """What is known of one pair's search: the probe's result and the search runs."""

    top: int | None = None  # grid index of the largest stable lr, once the probe found it
    cap_reached: bool = False  # the largest step size allowed was stable
    probes: dict[float, Outcome] = field(default_factory=dict)
    outcomes: dict[float, Outcome] = field(default_factory=dict)


def search_round(r: Reproduction, states: dict[Pair, PairState]) -> list[RunSpec]:
    """Update each pair's state from the store; return the runs the search needs next."""
    batch = []
    for pair, st in states.items():
        method = methods.get(pair[1])
        if st.top is None:  # probe phase: up or down the grid (ahead, with groups)
            probe = r.search.probe(method)
            while (lr := probe.next_lr(st.probes)) is not None:
                out = outcome_of(r.probe(pair, lr), r.search)
                if out is None:
                    ahead = probe_ahead(probe, st.probes, group_size(r, pair))
                    batch += [
                        r.probe(pair, x)
                        for x in ahead
                        if x == lr or outcome_of(r.probe(pair, x), r.search) is None
                    ]
                    break
                st.probes[lr] = out
            if lr is not None:
                continue
            st.top, st.cap_reached = probe.top(st.probes), probe.cap_reached(st.probes)
        search = r.search.search(method, st.top)
        batch += [r.search_run(pair, lr) for lr in known_outcomes(r, pair, search, st)]
    return batch


def _pending(search, known: dict[float, Outcome]) -> list[float]:
    if search.largest_stable(known) is None:
        return [lr] if (lr := search.next_lr(known)) is not None else []
    return [lr for lr in search.searched(known) if lr not in known]


def known_outcomes(r: Reproduction, pair: Pair, search, st: PairState) -> list[float]:
    """Read into ``st.outcomes`` the stored search runs the search needs, in the order it
    needs them; return the step sizes it needs next. A stored run it does not need (a
    whole-run probe ahead, ``probe_fraction`` 1) is not read, so it is in no table."""
    while True:
        pending = _pending(search, st.outcomes)
        found = {lr: out for lr in pending if (out := outcome_of(r.search_run(pair, lr), r.search))}
        if not found:
            return pending
        st.outcomes.update(found)


def group_size(r: Reproduction, pair: Pair) -> int:
    """Members of a group for ``pair`` (1 where its method or problem cannot be grouped:
    probing ahead would then only add single runs)."""
    k = r.batching.members
    return k if k > 1 and can_run(r.base[pair], k) else 1


def probe_ahead(probe: Probe, known: dict[float, Outcome], members: int) -> list[float]:
    """The probe walk's next step size and, with groups (``members`` > 1), the grid points
    it may need after it, up to ``members`` in all: while the start is unknown, the start,
    the points above it (to the cap) and then below it; once the start is stable, the
    points above; once it is not, the points below. Outcomes the walk does not need are
    never read, so the probes' verdicts are those of one probe at a time."""
    first = probe.next_lr(known)
    if first is None or members <= 1:
        return [] if first is None else [first]
    lrs, s = probe.lrs, probe.start
    up, down = [lrs[i] for i in range(s - 1, -1, -1)], list(lrs[s + 1 :])
    if lrs[s] not in known:
        order = [lrs[s], *up, *down]
    else:
        order = up if known[lrs[s]].stable else down
    order = order[order.index(first) :] if first in order else [first]
    return [lr for lr in order if lr not in known][:members]


def selections(r: Reproduction, states: dict[Pair, PairState]) -> dict:
    """pair -> (Selection or None, state)."""
    out = {}
    for pair, st in states.items():
        search = r.search.search(methods.get(pair[1]), st.top or 0)
        sel = search.select(st.outcomes) if st.top is not None and search.lrs else None
        out[pair] = (sel, st)
    return out


def run_search(r: Reproduction, tracker: Tracker | None = None) -> dict:
    """The search for every pair, in rounds; returns their selections."""
    tracker = tracker or Tracker(r, log.info)
    states = {pair: PairState() for pair in r.pairs}
    rounds = 0
    while batch := search_round(r, states):
        rounds += 1
        launch(r, batch, tracker.phase(f"search round {rounds}", batch, states))
    return selections(r, states)


def launch(r: Reproduction, specs: Sequence[RunSpec], on_done=None) -> None:
    """Hand ``specs`` to the launcher; a whole run whose probe is stored (same lr and seed,
    stopped early at one of the run's evaluation steps, stable) starts from the probe's
    checkpoint instead of from scratch (byte-identical to a run never stopped only there:
    ``SearchSettings.probe_steps``)."""
    for spec in specs:
        pair = (spec.problem, spec.optimizer.name)
        if spec.train.stop_at is not None or spec.seed != r.search.search_seed:
            continue
        if not r.search.resumes_from_probe(spec.num_steps, spec.train.eval_every):
            continue
        probe = r.probe(pair, spec.optimizer.lr)
        out = outcome_of(probe, r.search)
        if out is not None and out.stable and spec.run_dir().adopt(probe.run_dir()):
            log.info("%s starts from its probe's checkpoint", spec.run_dir().path)
    r.launch(specs, on_done)


def replicates(r: Reproduction, chosen: dict) -> list[RunSpec]:
    """The replicates of every selection but those of the pairs ``stopped``."""
    stops = stopped(r, chosen)
    return [
        r.replicate(pair, sel.lr, seed)
        for pair, (sel, _) in chosen.items()
        if sel is not None and pair not in stops
        for seed in r.search.replicate_seeds
    ]


def stopped(r: Reproduction, chosen: dict) -> dict[Pair, str]:
    """pair -> why its search is an error that stops it before its replicates (one line:
    the pair, the lr, the fix): the winner is the lowest step size searched after
    ``max_extensions`` extensions, or the grid's last point (``grid.lo``), so the best step
    size may lie below the search. With ``max_extensions: 0`` and grid points left below,
    the profile asked for no extension: a warning (``warn_edges``), not an error."""
    s, out = r.search, {}
    for pair, (sel, st) in chosen.items():
        search = s.search(methods.get(pair[1]), st.top or 0)
        edge = search.lower_edge(st.outcomes) if sel is not None else None
        if edge is None or not (edge[0] or s.max_extensions > 0):
            continue
        grid_end, extended = edge
        if grid_end:
            why = f"the grid ends there (search.grid.lo={s.lo:g})"
            fix = "lower search.grid.lo"
            if extended >= s.max_extensions:
                fix += f" and raise search.max_extensions (now {s.max_extensions})"
        else:
            why = f"after {extended} extension(s) below the window (search.max_extensions)"
            fix = f"raise search.max_extensions (now {s.max_extensions})"
        out[pair] = (f"{pair[0]}/{pair[1]}: search stopped, no replicates: the selected lr "
                     f"{sel.lr:g} is the lowest step size searched, {why}, so a smaller one "
                     f"may be better; {fix} and rerun")  # fmt: skip
    return out


def other_modes(r: Reproduction, chosen: dict) -> dict[Pair, dict | None]:
    """pair -> what the other ``mode`` (best over the evaluations for final, final for
    best) picks from the same stored search runs (``stepsize.select_with``), or None."""
    other = dataclasses.replace(r.search, mode="best" if r.search.mode == "final" else "final")
    out = {}
    for pair, (_, st) in chosen.items():
        if st.top is None:
            out[pair] = None
            continue
        specs = {lr: r.search_run(pair, lr) for lr in st.outcomes}
        metrics = {lr: metric_of(x, finished_summary(x) or {}, other) for lr, x in specs.items()}
        pick = select_with(r.search.search(methods.get(pair[1]), st.top), st.outcomes, metrics)
        out[pair] = None if pick is None else {"mode": other.mode, **pick}
    return out


def warn_edges(r: Reproduction, chosen: dict, stops: dict[Pair, str]) -> None:
    for pair, (sel, st) in chosen.items():
        top = r.search.lrs(methods.get(pair[1]))[0]
        if sel is None:
            log.warning("%s/%s: no step size completed; no replicates", *pair)
        elif pair in stops:
            log.error("%s", stops[pair])
        elif sel.on_lower_edge:
            log.warning("%s/%s: selected lr %g is on the lower edge of the searched range "
                        "(search.max_extensions=0: no extension)", *pair, sel.lr)  # fmt: skip
        elif st.cap_reached and sel.lr >= top:
            log.warning(
                "%s/%s: selected lr %g is the cap of the grid (search.grid.up_points above the "
                "start), which was stable; larger step sizes were not tried", *pair, sel.lr
            )  # fmt: skip


# --- the whole reproduction -----------------------------------------------------------
def reproduce(r: Reproduction) -> dict[str, Path]:
    t0 = time.perf_counter()
    check(r)
    tracker = Tracker(r, lambda line: print(line, flush=True))
    # A launcher with worker processes keeps them for every batch of the reproduction.
    kept = getattr(r.launch, "kept", None)
    with kept() if kept is not None else contextlib.nullcontext():
        chosen = run_search(r, tracker)
        stops = stopped(r, chosen)
        warn_edges(r, chosen, stops)
        todo = [spec for spec in replicates(r, chosen) if finished_summary(spec) is None]
        if todo:
            states = {pair: st for pair, (_, st) in chosen.items()}
            launch(r, todo, tracker.phase("replicates", todo, states))
    paths = outputs.write(r, chosen, other_modes(r, chosen), stops)
    print(f"Done in {(time.perf_counter() - t0) / 60:.1f} min. Outputs:")
    for path in sorted(r.out_dir.iterdir()):
        print(f"  {path}")
    if stops:  # the other pairs are done; the command exits with status 1 and this line
        raise ConfigError(f"{len(stops)} pair(s) stopped (outputs written): " +
                          "; ".join(stops.values()))  # fmt: skip
    return paths


def check(r: Reproduction) -> None:
    """A ConfigError for a reproduction with nothing to reproduce."""
    if not r.pairs:
        raise ConfigError(
            "no (problem, optimizer) pair to reproduce; name at least one problem and "
            "optimizer that can run together"
        )


def plan(r: Reproduction) -> tuple[dict, list[RunSpec], dict, list[RunSpec], list[RunSpec]]:
    """What the store holds and what would run next: (states, next batch, selections,
    replicates, replicates still to run). Reads the store only."""
    check(r)
    states = {pair: PairState() for pair in r.pairs}
    batch = search_round(r, states)
    chosen = selections(r, states)
    reps = replicates(r, chosen)
    return states, batch, chosen, reps, [s for s in reps if finished_summary(s) is None]


def plan_line(r: Reproduction) -> str:
    """The plan in one line (printed first, within seconds, by every reproduction)."""
    states, batch, chosen, reps, rep_todo = plan(r)
    stored = sum(len(st.probes) + len(st.outcomes) for st in states.values())
    searching = sum(1 for pair in r.pairs if chosen[pair][0] is None)
    return (
        f"Plan: {stored} search run(s) and {len(reps) - len(rep_todo)} replicate(s) in the "
        f"store; next: {len(batch)} search run(s), {len(rep_todo)} replicate(s) to run (+ "
        f"{searching * len(r.search.replicate_seeds)} after the {searching} search(es) still "
        f"open). {r.batching.line()}"
    )


def dry_run(r: Reproduction) -> str:
    """The plan as text: per pair, what the store holds and what would run next."""
    states, batch, chosen, reps, rep_todo = plan(r)
    stops, nxt = stopped(r, chosen), {}
    for spec in batch:
        nxt.setdefault((spec.problem, spec.optimizer.name), []).append(spec)
    lines = [f"Plan ({r.profile} profile, search '{r.search.name}'; nothing is run):",
             f"  {r.batching.line()}"]  # fmt: skip
    for pair, st in states.items():
        sel, _ = chosen[pair]
        done = len(st.probes) + len(st.outcomes)
        lines.append(f"  {pair[0]}/{pair[1]}: {done} search run(s) in the store")
        for spec in nxt.get(pair, []):
            kind = "probe" if spec.train.stop_at is not None or st.top is None else "search"
            lines.append(f"    next: {kind} lr={spec.optimizer.lr:g} seed={spec.seed} "
                         f"({spec.train.end} steps) -> {spec.run_dir().path}")  # fmt: skip
        if pair in stops:
            lines.append(f"    {stops[pair]}")
        elif sel is not None:
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
