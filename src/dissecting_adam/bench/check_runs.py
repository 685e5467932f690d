"""Sections 5-7 of the GPU check: runs per hour (packing, groups on every problem, and the
driver's own batching), a real P1 run and the start of the P1 reproduction, and the
projection of the whole paper protocol with the settings the driver would use and the
throughput measured with them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..problems import PROBLEMS
from ..protocol.estimate import members, project, projection
from ..runner.store import format_lr
from .check_protocol import finished, label, margin_s, reproduce_cmd, variant_of
from .config import CheckConfig
from .data import load_for_timing
from .packing import fitting_batch, packed, seed_groups, warm_workers
from .process import check_exit, run_until
from .sections import Context
from .timing import Deadline

PACKED = ("fmnist_2c2d", "cifar10_3c3d")


def _variant(ctx: Context, name: str) -> str:
    """Real data where section 3 found it, else generated stand-ins."""
    return "real" if ctx.shared.get("data", {}).get(name) == "real" else "synthetic"


def driver_batching(cfg: CheckConfig) -> tuple[int, dict[str, int], str]:
    """The group size and the tasks per device (per problem) the driver uses on this device,
    and its plan's batching line (``--tiny``: the sizes' own, so groups run on a CPU too)."""
    r = cfg.reproduction()
    k = cfg.sizes.group_members or members(r)
    jobs_of = getattr(r.launch, "jobs", None)
    jobs = {name: cfg.sizes.group_jobs or (jobs_of(name, cfg.device) if jobs_of else 1)
            for name in PROBLEMS}  # fmt: skip
    return k, jobs, r.batching.line()


# --- 5. runs per hour -----------------------------------------------------------------
def packing_section(cfg: CheckConfig, ctx: Context) -> None:
    s, folder = cfg.sizes, cfg.out / "packing"
    k, driver_jobs, line = driver_batching(cfg)
    ctx.shared["driver"] = {"members": k, "jobs": driver_jobs}
    rows, groups = [], []
    steps = ", ".join(f"{n} ({name})" for name, n in s.pack_steps.items())
    ctx.table(f"Packing: N tasks at once on one device (`protocol.launch.Packed`, workers "
              f"started first), short runs of {steps} steps with 1-batch evaluations; "
              "members > 1: each task a group, as the driver runs it; steps_per_s over the "
              "wall time (each run's start-up included), steady_steps_per_s from the runs' "
              "own training time (start-up excluded; startup_share: the rest of the wall "
              "time); vs_1_job and paper_runs_per_hour (steady steps/s x 3600 / the paper "
              "budget) at steady state", rows)  # fmt: skip
    ctx.table(
        f"Groups (`runner.engine.Stacked`) against a single run, {s.seed_steps} steps each, "
        "back to back, evaluation off: cost = seconds per member-step of a group of K / "
        "seconds per step of a single run (targets on an H200: <= 0.25 for P1, P2, P4, "
        "<= 0.9 for P3)",
        groups,
    )
    ctx.note(f"the driver here: {line}")
    ctx.data.update(packing=rows, seed_parallel=groups, driver=ctx.shared["driver"])
    ctx.shared["runs"] = ctx.data  # the projection (section 7) reads them
    packing_part = Deadline(ctx.deadline.at - 0.45 * ctx.share_s)  # the rest: groups
    bases = {name: _base(cfg, name, _variant(ctx, name), ctx) for name in PACKED}
    width = max([*s.jobs, *(driver_jobs[name] for name in PACKED)])
    # One pool of started workers for every measurement, as the driver keeps its workers.
    with warm_workers(bases[PACKED[0]], width, cfg.device, folder / "warm") as launcher:
        _pack(cfg, bases, k, driver_jobs, rows, folder, packing_part, launcher)
    ctx.stopped = packing_part.expired()
    # The driver's K on every problem first (the projection needs it), then the others.
    firsts = [x for x in s.ks if x == k] or [max(s.ks)]
    for ks in (firsts, [x for x in s.ks if x not in firsts]):
        for name in PROBLEMS:
            # The driver's K on every problem even past the share (the alarm bounds it).
            if ks is not firsts and ctx.out_of_time():
                return
            overrides = {"batch_size": s.batch[name]} if name in s.batch else {}
            problem, data, _ = load_for_timing(name, cfg.device, cfg.out / "scratch",
                                               kind=s.stand_in, real=False,
                                               overrides=overrides)  # fmt: skip
            paper = PROBLEMS[name].Config().num_steps
            for row in seed_groups(problem, ks, s.seed_steps, folder / f"groups-{name}",
                                   cfg.device, ctx.deadline):  # fmt: skip
                groups.append({"problem": name, "K": row["K"],
                               "single_step_ms": row["single_s"] * 1e3,
                               "member_step_ms": row["member_s"] * 1e3, "cost": row["cost"],
                               "speed_up": row["speed_up"],
                               "paper_runs_per_hour": 3600 / (row["member_s"] * paper),
                               "data": data})  # fmt: skip
    groups.sort(key=lambda row: (list(PROBLEMS).index(row["problem"]), row["K"]))


def _base(cfg: CheckConfig, name: str, variant: str, ctx: Context):
    """M-SVAG on ``name``: a short run with a 1-batch evaluation (``pack_steps``), at a batch
    size its data can give (generated sets may be smaller than the paper's batch)."""
    s = cfg.sizes
    overrides = [
        f"device={cfg.device}",
        "profile=paper",
        "train.progress=off",
        f"train.num_steps={s.pack_steps[name]}",
        "train.eval_points=1",
        "train.eval_max_batches=1",
        "train.checkpoint_every=null",
        f"data.variant={variant}",
        *cfg.data_overrides(),
        *([f"problem.batch_size={s.batch[name]}"] if name in s.batch else []),
    ]
    spec = cfg.planner([(name, "msvag")], overrides)[(name, "msvag")]
    fits = fitting_batch(spec)
    if fits is None:
        return spec
    ctx.note(f"{name}: the generated training set has {fits} examples, fewer than the batch "
             f"size {spec.problem_config.batch_size}: packed at batch {fits}")  # fmt: skip
    overrides.append(f"problem.batch_size={fits}")
    return cfg.planner([(name, "msvag")], overrides)[(name, "msvag")]


def pack_plan(k: int, jobs: int, sweep) -> list[tuple[int, int]]:
    """(tasks at once, members per task): the driver's groups of ``k`` one task at a time
    and ``jobs`` at once first (the packing gain the projection uses), then single runs
    with N of ``sweep`` at once."""
    plan = list(dict.fromkeys([(1, k), (jobs, k)])) if k > 1 else []
    return plan + [(n, 1) for n in sweep]


def _pack(cfg: CheckConfig, bases: dict, k: int, jobs: dict, rows: list, folder: Path,
          deadline: Deadline, launcher) -> None:  # fmt: skip
    """Each problem's ``pack_plan``: the driver's rows of every problem first, then the
    single-run sweeps taking turns (P2 is measured even when the share ends early); the
    first measurement always runs, whatever start-up took."""
    s, firsts = cfg.sizes, {}
    plans = {name: pack_plan(k, jobs[name], s.jobs) for name in bases}
    # Each problem's driver rows (the packing gain) first, then the sweeps taking turns.
    head = {name: plan[: len(plan) - len(s.jobs)] for name, plan in plans.items()}
    turns = [(name, nm) for name, plan in head.items() for nm in plan]
    turns += [(name, (n, 1)) for n in s.jobs for name in plans]
    for i, (name, (n, m)) in enumerate(turns):
        if i > 0 and deadline.expired():
            return
        base, paper = bases[name], PROBLEMS[name].Config().num_steps
        try:
            res = packed(base, n, n * m * s.runs_per_job, cfg.device, folder / f"{name}-{n}x{m}",
                         members=m, launcher=launcher)  # fmt: skip
        except Exception as err:  # a worker's run failed: its record says why
            rows.append({"problem": name, "jobs_per_device": n, "members": m,
                         "error": repr(err)[:300]})  # fmt: skip
            continue
        one = firsts.setdefault((name, m), res)
        rate, base_rate = res["steady_steps_per_s"], one["steady_steps_per_s"]
        rows.append({"problem": name, "batch": base.problem_config.batch_size, **res,
                     "vs_1_job": rate / base_rate if rate and base_rate else None,
                     "paper_runs_per_hour": rate and rate * 3600 / paper,
                     "driver": k > 1 and (n, m) == (jobs[name], k),
                     "data": label(base.data_variant)})  # fmt: skip


# --- 6. a real P1 run, then the start of the reproduction ----------------------------
def p1_section(cfg: CheckConfig, ctx: Context) -> None:
    s, store = cfg.sizes, cfg.out / "store"
    variant = variant_of(cfg, ctx)
    margin = margin_s(ctx)
    cmd = [
        cfg.python,
        str(cfg.root / "scripts" / "train.py"),
        "problem=fmnist_2c2d",
        "optimizer=msvag",
        f"optimizer.lr={cfg.p1_lr}",
        "seed=0",
        f"profile={s.profile}",
        f"data.variant={variant}",
        "train.progress=lines",
        "force=true",
        f"results_root={store}",
        f"device={cfg.device}",
        *cfg.data_overrides(),
    ]
    started = time.time()
    res = run_until(
        cmd, Deadline(ctx.deadline.at - margin), cfg.out / "p1_run.log", cfg.root, margin
    )
    runs = Path(store, s.profile, "fmnist_2c2d", "msvag", f"lr={format_lr(cfg.p1_lr)}")
    summaries = [p for p in runs.glob("seed=0-*/summary.json") if p.stat().st_mtime >= started]
    summary = json.loads(summaries[0].read_text()) if summaries else {}
    final = summary.get("final") or {}
    row = {
        **res,
        "status": summary.get("status") or ("interrupted" if res["stopped_at_deadline"] else None),
        "steps": summary.get("steps_done"),
        "train_time_s": summary.get("train_time_s"),
        "test_accuracy": final.get("test_accuracy"),
        "data": label(variant),
    }
    ctx.table(
        f"P1 (fmnist_2c2d), M-SVAG lr {cfg.p1_lr}, seed 0, the {s.profile} profile's budget "
        "(`scripts/train.py`, log: p1_run.log)",
        [row],
    )
    ctx.data["p1_run"] = row
    check_exit(res, cfg.out / "p1_run.log")
    if res["stopped_at_deadline"] or ctx.left() < margin + 10:  # too little left to start
        ctx.stopped = True
        return
    before = finished(store, s.profile)
    end = ctx.deadline.at - margin
    if s.reproduce_s is not None:
        end = min(end, time.perf_counter() + s.reproduce_s)
    log = cfg.out / "reproduce.log"
    res = run_until(reproduce_cmd(cfg, variant), Deadline(end), log, cfg.root, margin)
    after = finished(store, s.profile)
    row = {
        **res,
        "runs_finished": after["runs"] - before["runs"],
        "probes_finished": after["probes"] - before["probes"],
        "data": label(variant),
    }
    ctx.table(
        f"The P1 reproduction (`scripts/reproduce.py`, {s.profile} profile) until the "
        "section's deadline, then SIGTERM (the last section resumes it; log: reproduce.log)",
        [row],
    )
    ctx.data["reproduction"] = row
    check_exit(res, log)
    ctx.stopped = res["stopped_at_deadline"]


# --- 7. projection --------------------------------------------------------------------
def measured_batching(ctx: Context, k: int) -> tuple[dict, dict]:
    """From section 5: per problem the cost of a member-step in a group of ``k`` (the
    largest K measured up to ``k``) relative to a single run, and the packing gain of the
    driver's tasks side by side (driver row / the same groups one task at a time)."""
    cost = {}
    for row in ctx.shared.get("runs", {}).get("seed_parallel", []):
        if row["K"] <= k and row["K"] >= cost.get(row["problem"], (0, 0))[0]:
            cost[row["problem"]] = (row["K"], row["cost"])
    gain = {}
    for row in ctx.shared.get("runs", {}).get("packing", []):
        if row.get("driver") and row.get("members") == k and row.get("vs_1_job"):
            gain[row["problem"]] = row["vs_1_job"]
    return {p: c for p, (_, c) in cost.items()}, gain


def fastest(settings: dict[str, dict[str, float]], precision: str) -> dict[str, tuple]:
    """Per problem, its fastest measured setting of ``precision`` ("bf16" or "fp32/tf32"):
    (seconds per step, setting)."""
    out = {}
    for name, times in settings.items():
        mine = {k: t for k, t in times.items() if t and ("bf16" in k) == (precision == "bf16")}
        if mine:
            best = min(mine, key=mine.get)
            out[name] = (mine[best], best)
    return out


def projection_section(cfg: CheckConfig, ctx: Context) -> None:
    eager = {n: t["step"] for n, t in ctx.shared.get("step", {}).items() if t["step"]}
    if not eager:
        raise RuntimeError("no step times: the per-problem section did not time any problem")
    r = cfg.reproduction()
    k = members(r)
    cost, gain = measured_batching(ctx, k)
    if r.batching.launcher != "packed":  # the driver trains one task at a time here
        gain = {}
    settings = ctx.shared.get("settings", {})
    cases = {"eager (the runner's default)": {n: (t, "eager") for n, t in eager.items()},
             "fp32/tf32, the fastest setting measured": fastest(settings, "fp32/tf32"),
             "bf16 autocast, the fastest setting measured": fastest(settings, "bf16")}  # fmt: skip
    for title, chosen in cases.items():
        if not chosen:
            continue
        seconds = {p: t for p, (t, _) in chosen.items()}
        member = {p: seconds[p] * c for p, c in cost.items() if p in seconds}
        rows = [{**row, "setting": chosen[row["problem"]][1], "hours": row.pop("seconds") / 3600}
                for row in projection(r, seconds, None, member, gain)]  # fmt: skip
        ctx.table(
            f"The paper protocol ({len(r.pairs)} (problem, method) pairs) on this device, "
            f"{title}: member-steps x step time (section 3) x the group's cost per member "
            f"(section 5, groups of {k}, `parallel_seeds`) / the packing gain (section 5)",
            rows,
        )
        ctx.data[title] = {"rows": rows, "text": project(r, seconds, None, member, gain)}
    ctx.note(f"the settings the driver would use here: {r.batching.line()}")
    for title in cases:
        if title in ctx.data:
            ctx.note(f"{title}, as `scripts/reproduce.py` prints it "
                     f"(`protocol.estimate.project`):\n" + ctx.data[title]["text"])  # fmt: skip
    ctx.note("every method is costed at M-SVAG's step time; evaluation passes are extra; the "
             "group cost measured in float32 is applied to every precision; a problem "
             "without a measured group cost or packing gain is costed as single runs one "
             "at a time")  # fmt: skip
