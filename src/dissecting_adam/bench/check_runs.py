"""Sections 5-7 of the GPU check: runs per hour (packing and seed-parallel groups), a real
P1 run and as much of the P1 reproduction as fits, and the projection of the whole paper
protocol from the measured step times."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..problems import PROBLEMS
from ..protocol.estimate import project, projection
from ..runner.store import FINISHED, format_lr
from .config import CheckConfig
from .data import GENERATED, load_for_timing
from .packing import packed, seed_groups
from .process import check_exit, run_until
from .recommend import compile_choice
from .sections import Context
from .timing import Deadline

PACKED = ("fmnist_2c2d", "cifar10_3c3d")


def _variant(ctx: Context, name: str) -> str:
    """Real data where section 3 found it, else generated stand-ins."""
    return "real" if ctx.shared.get("data", {}).get(name) == "real" else "synthetic"


def _label(variant: str) -> str:
    return "real" if variant == "real" else GENERATED


# --- 5. runs per hour -----------------------------------------------------------------
def packing_section(cfg: CheckConfig, ctx: Context) -> None:
    s, folder = cfg.sizes, cfg.out / "packing"
    rows, seeds = [], []
    steps = ", ".join(f"{n} ({name})" for name, n in s.pack_steps.items())
    ctx.table(f"Packing: N runs at once on one device (`protocol.launch.Packed`), short runs "
              f"of {steps} steps with 1-batch evaluations; paper_runs_per_hour = training "
              "steps/s x 3600 / the paper budget", rows)  # fmt: skip
    ctx.table(
        f"Seed-parallel training (`parallel_seeds=K`), {s.seed_steps} steps a run, "
        "evaluation off; speed-up over a single run (K = 1) per seed-step",
        seeds,
    )
    ctx.data.update(packing=rows, seed_parallel=seeds)
    packing_part = Deadline(ctx.deadline.at - 0.35 * ctx.share_s)  # the rest: seed groups
    for name in PACKED:
        paper, variant = PROBLEMS[name].Config().num_steps, _variant(ctx, name)
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
        base = cfg.planner([(name, "msvag")], overrides)[(name, "msvag")]
        first = None
        for n in s.jobs:
            if packing_part.expired():
                ctx.stopped = True
                break
            try:
                res = packed(base, n, n * s.runs_per_job, cfg.device, folder / f"{name}-{n}")
            except Exception as err:  # a worker's run failed: its record says why
                rows.append({"problem": name, "jobs_per_device": n, "error": repr(err)[:300]})
                continue
            first = first or res
            ratio = res["runs_per_hour"] / first["runs_per_hour"] if first["finished"] else None
            rows.append({"problem": name, **res, "vs_1_job": ratio,
                         "paper_runs_per_hour": res["steps_per_s"] * 3600 / paper,
                         "data": _label(variant)})  # fmt: skip
    for name in PACKED:
        if ctx.out_of_time():
            return
        paper = PROBLEMS[name].Config().num_steps
        overrides = {"batch_size": s.batch[name]} if name in s.batch else {}
        problem, data, _ = load_for_timing(
            name, cfg.device, cfg.out / "scratch", kind=s.stand_in, real=False, overrides=overrides
        )
        for row in seed_groups(problem, s.ks, s.seed_steps, folder / f"seeds-{name}",
                               cfg.device, ctx.deadline):  # fmt: skip
            seeds.append({"problem": name, "K": row["K"], "seed_step_ms": row["seed_step_s"] * 1e3,
                          "speed_up": row["speed_up"],
                          "paper_runs_per_hour": 3600 / (row["seed_step_s"] * paper),
                          "data": data})  # fmt: skip


# --- 6. a real P1 run, then the reproduction ------------------------------------------
def finished(store: Path, profile: str) -> dict[str, int]:
    """Finished runs and probes of P1 in the store."""
    counts = {"runs": 0, "probes": 0}
    for path in Path(store, profile, "fmnist_2c2d").glob("*/*/*/summary.json"):
        summary = json.loads(path.read_text())
        if summary.get("status") in FINISHED:
            counts["probes" if "stop_at" in summary else "runs"] += 1
    return counts


def p1_section(cfg: CheckConfig, ctx: Context) -> None:
    s, store = cfg.sizes, cfg.out / "store"
    variant = "synthetic" if cfg.tiny else _variant(ctx, "fmnist_2c2d")
    common = [f"results_root={store}", f"device={cfg.device}", *cfg.data_overrides()]
    margin = min(15.0, max(8.0, 0.1 * ctx.share_s))  # to checkpoint and exit after SIGTERM
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
        *common,
    ]
    started = time.time()
    res = run_until(
        cmd, Deadline(ctx.deadline.at - margin), cfg.out / "p1_run.log", cfg.root, margin
    )
    runs = Path(store, s.profile, "fmnist_2c2d", "msvag", f"lr={format_lr(cfg.p1_lr)}")
    summaries = [p for p in runs.glob("seed=0-*/summary.json") if p.stat().st_mtime >= started]
    summary = json.loads(summaries[0].read_text()) if summaries else {}
    final = summary.get("final") or {}
    label = _label(variant)
    row = {
        **res,
        "status": summary.get("status") or ("interrupted" if res["stopped_at_deadline"] else None),
        "steps": summary.get("steps_done"),
        "train_time_s": summary.get("train_time_s"),
        "test_accuracy": final.get("test_accuracy"),
        "data": label,
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
    cmd = [
        cfg.python,
        str(cfg.root / "scripts" / "reproduce.py"),
        "problems=[fmnist_2c2d]",
        f"profile={s.profile}",
        "estimate=false",
        f"overrides=['data.variant={variant}']",
        *common,
    ]
    end = ctx.deadline.at - margin
    if s.reproduce_s is not None:
        end = min(end, time.perf_counter() + s.reproduce_s)
    res = run_until(cmd, Deadline(end), cfg.out / "reproduce.log", cfg.root, margin)
    after = finished(store, s.profile)
    row = {
        **res,
        "runs_finished": after["runs"] - before["runs"],
        "probes_finished": after["probes"] - before["probes"],
        "data": label,
    }
    ctx.table(
        f"The P1 reproduction (`scripts/reproduce.py`, {s.profile} profile) until the "
        "section's deadline, then SIGTERM (resumable; log: reproduce.log)",
        [row],
    )
    ctx.data["reproduction"] = row
    check_exit(res, cfg.out / "reproduce.log")
    ctx.stopped = res["stopped_at_deadline"]


# --- 7. projection --------------------------------------------------------------------
def projection_section(cfg: CheckConfig, ctx: Context) -> None:
    eager = {n: t["step"] for n, t in ctx.shared.get("step", {}).items() if t["step"]}
    if not eager:
        raise RuntimeError("no step times: the per-problem section did not time any problem")
    r = cfg.reproduction()
    best = dict(eager)
    compiled = ctx.shared.get("compiled", {})
    for name, mode in compile_choice(ctx.shared["step"], compiled).items():
        if mode is not None:
            best[name] = compiled[name][mode]["step"]
    for title, seconds in (("eager", eager), ("compiled where recommended", best)):
        rows = [{**row, "hours": row.pop("seconds") / 3600} for row in projection(r, seconds)]
        ctx.table(
            f"The paper protocol ({len(r.pairs)} (problem, method) pairs) on this device, "
            f"{title}: runs x step time (input + fwd+bwd + M-SVAG step, section 3)",
            rows,
        )
        ctx.data[title] = {"rows": rows, "text": project(r, seconds)}
        if best == eager:
            break
    ctx.note(
        "as `scripts/reproduce.py` prints it (`protocol.estimate.project`):\n"
        + ctx.data["eager"]["text"]
    )
    ctx.note("every method is costed at M-SVAG's step time; evaluation passes are extra")
