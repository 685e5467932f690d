"""``make reproduce-fig5``: data, step-size search, replicates, Fig. 5, tables, claims.

Every run goes through the runner and its results store (``runconfig.execute``), so an
interrupted reproduction restarts where it stopped: finished runs of the same config are
skipped. The search itself is the pure logic of ``search.py``, driven in rounds: each round
gathers the next runs of every (problem, optimizer) and runs them as one batch, in this
process (``launcher=basic``) or as a Hydra multirun fanned out by a launcher
(``joblib``, ``submitit_slurm``).

    probe:     short runs (search.probe_fraction of the budget) from the top of the grid
               down, until one does not diverge: the largest stable step size;
    search:    StepSizeSearch on the grid from there down, full budget, search seed;
    replicate: the selected step size with every replicate seed;
    report:    curves, summary, claims and figures from the store only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from ..runner import parallel
from ..runner import store as results
from . import aggregate, claims, plots
from ..runner.session import ConfigError, execute, execute_all, plan, synthetic_sources
from .search import Outcome, StepSizeSearch, grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    problem: str
    optimizer: str
    lr: float
    seed: int
    num_steps: int | None = None  # None: the profile's full budget

    def overrides(self, cfg: DictConfig) -> list[str]:
        out = [
            f"problem={self.problem}",
            f"optimizer={self.optimizer}",
            f"optimizer.lr={self.lr!r}",
            f"seed={self.seed}",
            f"profile={cfg.profile.name}",
            f"results_root={cfg.results_root}",
            f"device={cfg.device}",
            f"data.root={cfg.data.root}",
            "train.progress=lines",
        ]
        if cfg.data.mirror:
            out.append(f"data.mirror={cfg.data.mirror}")
        if self.num_steps is not None:
            out.append(f"train.num_steps={self.num_steps}")
        return out + list(cfg.overrides)


def run_config(cfg: DictConfig, job: Job) -> DictConfig:
    """The run's composed config (``conf/train.yaml`` with the job's overrides)."""
    return _compose_train(tuple(job.overrides(cfg)))


@functools.lru_cache(maxsize=4096)
def _compose_train(overrides: tuple[str, ...]) -> DictConfig:
    # The driver looks every run up several times; composing is the slow part.
    return compose(config_name="train", overrides=list(overrides))


# --------------------------------------------------------------------------- execution


def run_in_process(cfg: DictConfig, jobs: Sequence[Job]) -> None:
    k = int(cfg.get("parallel_seeds", 1))
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:  # the seeds of one (problem, optimizer, lr, budget) can run as one
        groups.setdefault((job.problem, job.optimizer, job.lr, job.num_steps), []).append(job)
    for group in groups.values():
        first = run_config(cfg, group[0])
        if k > 1 and len(group) > 1 and _parallel_ok(first, k):
            seeds = [job.seed for job in group]
            execute_all(OmegaConf.merge(first, {"seeds": seeds, "parallel_seeds": k}))
        else:
            for job in group:
                execute(run_config(cfg, job))


def _parallel_ok(run_cfg: DictConfig, k: int) -> bool:
    try:
        parallel.check(run_cfg, k)  # CNN problems, drop-in optimizers, no wandb
    except ConfigError:
        return False
    return True


def supported_pairs(cfg: DictConfig, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (problem, optimizer) pairs that can run; the others are skipped with a warning."""
    ok = []
    for problem, optimizer in pairs:
        if optimizer not in cfg.search.grid.hi:
            raise ConfigError(
                f"search '{cfg.search.name}' has no grid start for optimizer={optimizer}: add "
                f"search.grid.hi.{optimizer} to conf/search/{cfg.search.name}.yaml"
            )
        try:
            plan(run_config(cfg, Job(problem, optimizer, 0.1, 0)))
        except ConfigError as err:
            log.warning("skipping %s/%s: %s", problem, optimizer, err)
        else:
            ok.append((problem, optimizer))
    return ok


def run_with_launcher(cfg: DictConfig, jobs: Sequence[Job]) -> None:
    """Hydra multiruns fanned out by ``cfg.launcher``: one per (problem, optimizer, budget)
    when its jobs form an lr x seed grid (a search round, or replicates), else one per seed."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.problem, job.optimizer, job.num_steps), []).append(job)
    script = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
    for group in groups.values():
        lrs = sorted({j.lr for j in group}, reverse=True)
        seeds = sorted({j.seed for j in group})
        sweeps = (
            [(lrs, seeds)]
            if len(lrs) * len(seeds) == len(group)
            else [(sorted({j.lr for j in group if j.seed == s}, reverse=True), [s]) for s in seeds]
        )
        for sweep_lrs, sweep_seeds in sweeps:
            base = [
                o for o in group[0].overrides(cfg) if not o.startswith(("optimizer.lr=", "seed="))
            ]
            cmd = [
                sys.executable, str(script), "-m", f"hydra/launcher={cfg.launcher}", *base,
                "optimizer.lr=" + ",".join(repr(lr) for lr in sweep_lrs),
                "seed=" + ",".join(str(s) for s in sweep_seeds),
            ]  # fmt: skip
            log.info("launching %s", " ".join(cmd[2:]))
            subprocess.run(cmd, check=True)


def summary_of(cfg: DictConfig, job: Job) -> dict | None:
    """The stored summary of ``job``'s exact config, or None if it has not finished."""
    p = plan(run_config(cfg, job))
    return p.run.summary() if p.run.is_finished(p.identity) else None


def identity_hash(cfg: DictConfig, job: Job) -> str:
    return results.config_hash(plan(run_config(cfg, job)).identity)


def outcome_of(cfg: DictConfig, job: Job) -> Outcome | None:
    summary = summary_of(cfg, job)
    if summary is None:
        return None
    return Outcome(summary["status"], metric_of(cfg, job, summary))


#: search.metric -> (evaluation split, column, higher is better)
METRICS = {"test_accuracy": ("test", "accuracy", True), "train_loss": ("train_eval", "loss", False)}


def metric_of(cfg: DictConfig, job: Job, summary: dict) -> float | None:
    """The selection metric of a finished run: final, or best over its evaluations."""
    split, column, higher = METRICS[str(cfg.search.metric)]
    if cfg.search.mode == "final":
        value = (summary.get("final") or {}).get(f"{split}_{column}")
        return None if value is None else float(value)
    rows = plan(run_config(cfg, job)).run.read_metrics()
    values = [r[column] for r in rows if r.get("split") == split and r.get(column) is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


# --------------------------------------------------------------------------- the search


def search_for(cfg: DictConfig, optimizer: str, top: int = 0) -> StepSizeSearch:
    g = cfg.search.grid
    lrs = grid(float(g.lo), float(g.hi[optimizer]), tuple(float(m) for m in g.mantissas))
    return StepSizeSearch(
        tuple(lrs[top:]),
        points=int(cfg.search.points),
        maximize=METRICS[str(cfg.search.metric)][2],
        tolerance=float(cfg.search.tolerance),
        max_extensions=int(cfg.search.max_extensions),
    )


def budget(cfg: DictConfig, problem: str) -> int:
    return plan(run_config(cfg, Job(problem, "msgd", 0.1, 0))).settings.num_steps


def probe_steps(cfg: DictConfig, problem: str) -> int | None:
    frac = float(cfg.search.probe_fraction)
    return None if frac >= 1.0 else max(1, round(frac * budget(cfg, problem)))


def run_search(cfg: DictConfig, pairs: Sequence[tuple[str, str]], run: Callable) -> dict:
    """The search for every (problem, optimizer), in rounds; returns their selections."""
    seed = int(cfg.search.search_seed)
    state = {pair: {"top": None, "probes": {}, "outcomes": {}} for pair in pairs}
    while True:
        batch = []
        for (problem, optimizer), st in state.items():
            lrs = search_for(cfg, optimizer).lrs
            if st["top"] is None:  # probe phase
                steps = probe_steps(cfg, problem)
                for i, lr in enumerate(lrs):
                    job = Job(problem, optimizer, lr, seed, steps)
                    out = st["probes"].get(lr) or outcome_of(cfg, job)
                    if out is None:
                        batch.append(job)
                        break
                    st["probes"][lr] = out
                    if out.status != "diverged":
                        st["top"] = i
                        break
                else:
                    st["top"] = len(lrs)  # everything diverged
                if st["top"] is None:
                    continue
            search = search_for(cfg, optimizer, st["top"])
            for lr in search.lrs:
                if lr not in st["outcomes"]:
                    out = outcome_of(cfg, Job(problem, optimizer, lr, seed))
                    if out is not None:
                        st["outcomes"][lr] = out
            known = st["outcomes"]
            pending = (
                [search.next_lr(known)]
                if search.largest_stable(known) is None
                else [lr for lr in search.searched(known) if lr not in known]
            )
            batch += [Job(problem, optimizer, lr, seed) for lr in pending if lr is not None]
        if not batch:
            break
        log.info("search round: %d run(s)", len(batch))
        run(cfg, batch)
    selections = {}
    for (problem, optimizer), st in state.items():
        search = search_for(cfg, optimizer, st["top"])
        sel = search.select(st["outcomes"]) if search.lrs else None
        selections[(problem, optimizer)] = (sel, st)
    return selections


# --------------------------------------------------------------------------- reporting


def estimate(cfg: DictConfig, pairs, steps_timed: int) -> str:
    """Number of runs and a compute-time estimate from timing a few steps per problem.

    Optimizers that need per-example gradients (M-SVAG-mb) are timed with them; the others
    cost about what a plain backward pass costs.
    """
    n_seeds = len(cfg.search.replicate_seeds)
    lines, total = [], 0.0
    stack = contextlib.ExitStack()
    for problem in dict.fromkeys(p for p, _ in pairs):
        p = _timing_problem(cfg, problem, stack)
        optimizers = [o for q, o in pairs if q == problem]
        mb = {o for o in optimizers if _needs_batch_variance(cfg, o)}
        cost = {"plain": _time_backward(p, steps_timed, per_example=False)}
        if mb:
            cost["mb"] = _time_backward(p, steps_timed, per_example=True)
        per_run_steps = budget(cfg, problem) * (
            int(cfg.search.points) + n_seeds + 3 * min(float(cfg.search.probe_fraction), 1.0)
        )  # full-budget runs at least, and a guess of three probes per method
        seconds = sum(cost["mb" if o in mb else "plain"] for o in optimizers) * per_run_steps
        total += seconds
        runs = len(optimizers) * (int(cfg.search.points) + n_seeds)
        extra = f", {cost['mb'] * 1e3:.1f} with per-example gradients" if mb else ""
        lines.append(
            f"  {problem}: {cost['plain'] * 1e3:.1f} ms/step{extra} x {budget(cfg, problem)} "
            f"steps; about {runs} full runs + {3 * len(optimizers)} probes: "
            f"~{seconds / 3600:.2f} h"
        )
    stack.close()
    return "\n".join([*lines, f"  total: ~{total / 3600:.2f} h of training (evaluation extra)"])


def _time_backward(p, steps: int, per_example: bool) -> float:
    """Seconds per loss + backward pass (per-example gradients if asked), after a warm-up."""
    from ..per_example import backward_with_variance

    model, batches = p.build_model(0), p.train_batches(0)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if per_example:
            backward_with_variance(p, model, next(batches))
        else:
            p.training_loss(model, next(batches)).backward()
    return (time.perf_counter() - start) / steps


def _needs_batch_variance(cfg: DictConfig, optimizer: str) -> bool:
    import hydra

    target = run_config(cfg, Job("fmnist_2c2d", optimizer, 0.1, 0)).optimizer._target_
    return bool(getattr(hydra.utils.get_class(target), "needs_batch_variance", False))


def _timing_problem(cfg: DictConfig, problem: str, stack: contextlib.ExitStack):
    """The problem as its runs will see it (generated stand-ins for data.variant=synthetic)."""
    run_cfg = run_config(cfg, Job(problem, "msgd", 0.01, 0))
    if run_cfg.data.variant != "synthetic":
        return plan(run_cfg).problem
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="synthetic-"))
    run_cfg = OmegaConf.merge(run_cfg, {"data": {"mirror": folder, "root": folder}})
    return plan(run_cfg, synthetic_sources(Path(folder))[problem]).problem


def write_outputs(cfg: DictConfig, selections: dict, out: Path) -> dict[str, Path]:
    """Tables, Fig. 5, sensitivity plots and claims, from the store only."""
    out.mkdir(parents=True, exist_ok=True)
    root = Path(cfg.results_root) / str(cfg.profile.name)
    table = results.collect(root)
    problems = [p for p in cfg.problems if any(q == p for q, _ in selections)]
    seeds = [int(s) for s in cfg.search.replicate_seeds]
    paths = {}

    # Search tables and sensitivity plots: every full-budget search run.
    search_rows = []
    for (problem, optimizer), (sel, st) in selections.items():
        for lr, o in sorted(st["outcomes"].items(), reverse=True):
            search_rows.append(
                dict(
                    problem=problem,
                    optimizer=optimizer,
                    lr=lr,
                    status=o.status,
                    metric=o.metric,
                    selected=sel is not None and lr == sel.lr,
                )
            )
    search_df = pd.DataFrame(search_rows)
    if len(search_df):
        search_df.to_csv(out / "search.csv", index=False)
        (out / "search.md").write_text(aggregate.to_markdown(search_df))
        metric = str(cfg.search.metric)
        for problem in problems:
            sens = search_df.rename(columns={"metric": metric})
            paths[f"sensitivity_{problem}"] = plots.sensitivity(
                sens, problem, metric, out / f"sensitivity_{problem}"
            )[0]

    # Replicates of the selected step sizes: exactly their configs, by identity hash.
    chosen = {pair: sel.lr for pair, (sel, _) in selections.items() if sel is not None}
    hashes = {identity_hash(cfg, Job(p, o, lr, s)) for (p, o), lr in chosen.items() for s in seeds}
    reps = table[table["config_hash"].isin(hashes)]
    summary = aggregate.summary(reps) if len(reps) else pd.DataFrame()
    banner = ""
    if len(reps) and (reps["data_variant"] != "real").any():
        banner = ("**Generated stand-in data (data.variant=synthetic): a check of the pipeline, "
                  "not results about the optimizers.**\n\n")  # fmt: skip
    if len(summary):
        summary.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text(banner + aggregate.to_markdown(summary))
        curves = aggregate.curves(reps)
        curves.to_csv(out / "curves.csv", index=False)
        paths["fig5"] = plots.fig5(curves, chosen, problems, out / "fig5")[0]
        results_ = claims.evaluate(reps)
        (out / "claims.md").write_text(banner + claims.report(results_, summary, 0.05, 0.05))
        paths["claims"] = out / "claims.md"
    selection_json = {
        f"{p}/{o}": None
        if sel is None
        else {
            "lr": sel.lr,
            "metric": sel.metric,
            "tie_with": sel.tie_with,
            "on_lower_edge": sel.on_lower_edge,
            # The largest step size tried was stable and won: a larger one may be better.
            "at_grid_top": sel.lr >= float(cfg.search.grid.hi[o]),
        }
        for (p, o), (sel, _) in selections.items()
    }
    (out / "selection.json").write_text(json.dumps(selection_json, indent=2))
    return paths


def reproduce(cfg: DictConfig) -> dict[str, Path]:
    pairs = supported_pairs(cfg, [(p, o) for p in cfg.problems for o in cfg.optimizers])
    run = run_in_process if cfg.launcher == "basic" else run_with_launcher
    n_seeds = len(cfg.search.replicate_seeds)
    print(
        f"Reproducing Fig. 5 ({cfg.profile.name} profile, search '{cfg.search.name}'): "
        f"{len(pairs)} (problem, optimizer) pairs; per pair a probe, {cfg.search.points} "
        f"search runs (+ up to {cfg.search.max_extensions} more) and {n_seeds} seeds."
    )
    print(estimate(cfg, pairs, int(cfg.estimate_steps)), flush=True)
    t0 = time.perf_counter()
    selections = run_search(cfg, pairs, run)
    for pair, (sel, _) in selections.items():
        if sel is None:
            log.warning("%s/%s: no step size completed; no replicates", *pair)
        elif sel.on_lower_edge:
            log.warning(
                "%s/%s: selected lr %g is on the lower edge of the searched range", *pair, sel.lr
            )
        elif sel.lr >= float(cfg.search.grid.hi[pair[1]]):
            log.warning(
                "%s/%s: selected lr %g is the top of the grid (search.grid.hi.%s), which was "
                "stable; larger step sizes were not tried", *pair, sel.lr, pair[1]
            )  # fmt: skip
    reps = [
        Job(p, o, sel.lr, int(s))
        for (p, o), (sel, _) in selections.items()
        if sel is not None
        for s in cfg.search.replicate_seeds
    ]
    todo = [j for j in reps if summary_of(cfg, j) is None]
    if todo:
        log.info("replicates: %d run(s)", len(todo))
        run(cfg, todo)
    paths = write_outputs(cfg, selections, Path(cfg.out_dir))
    print(f"Done in {(time.perf_counter() - t0) / 60:.1f} min. Outputs:")
    for path in sorted(Path(cfg.out_dir).iterdir()):
        print(f"  {path}")
    return paths
