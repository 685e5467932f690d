"""Sections 1-4 of the GPU check: the machine and the CUDA tests, the optimizer step, one
training step per problem (eager and compiled), and the runner's overhead.

Each section is ``section(cfg, ctx)``: it records tables and data in ``ctx`` and leaves in
``ctx.shared`` what later sections use (the loaded problems, the step times, the compile
modes that worked).
"""

from __future__ import annotations

import os
import re
import subprocess

import torch

from ..problems import PROBLEMS
from ..runner.environment import cpu_model, environment
from .config import CheckConfig
from .data import load_for_timing
from .optim_step import bench, ratios, wrn_param_shapes
from .problem_step import step_times
from .process import run_until
from .recommend import loss_difference
from .runner_overhead import evaluation_seconds, overhead
from .sections import Context
from .timing import Deadline


# --- 1. environment -------------------------------------------------------------------
def gpu_facts(device: str) -> dict:
    """GPU model, memory, driver, CUDA and cuDNN versions (None where there is no GPU)."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    facts = {
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": None,
        "gpu_memory_gib": None,
        "compute_capability": None,
        "gpu_count": torch.cuda.device_count(),
        "driver": None,
    }
    if cuda:
        props = torch.cuda.get_device_properties(torch.device(device))
        facts.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
        )
        facts["driver"] = _nvidia_smi("driver_version")
    return facts


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's summary line ("3 passed, 1 skipped in 2.0s"), or, when it was
    stopped before that line, from its progress characters (``-q``: ``..sF  [ 40%]``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = output.strip().splitlines()
    summary = [ln for ln in lines if re.search(r" in [\d.]+s\b", ln)]
    if summary:
        found = re.findall(
            r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary[-1]
        )
        for n, kind in found:
            counts["errors" if kind.startswith("error") else kind] = int(n)
        return counts
    progress = "".join(
        m.group(1) for ln in lines if (m := re.match(r"^([.sFExX]+)\s*(\[.*\])?$", ln))
    )
    for char, kind in ((".", "passed"), ("F", "failed"), ("s", "skipped"), ("E", "errors")):
        counts[kind] = progress.count(char)
    return counts


def environment_section(cfg: CheckConfig, ctx: Context) -> None:
    env = environment(cfg.device)
    facts = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": env["torch"],
        "python": env["python"],
        **gpu_facts(cfg.device),
        "torch_threads": env["torch_threads"],
        "host": env["host"],
    }
    ctx.data["machine"] = facts
    ctx.table("Machine", [{"item": k, "value": v} for k, v in facts.items()])
    cmd = [cfg.python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    log = cfg.out / "cuda_tests.log"
    res = run_until(cmd, Deadline(ctx.deadline.at - 2.0), log, cfg.root, grace_s=2.0)
    counts = {**pytest_counts(log.read_text(errors="replace")), **res}
    ctx.data["cuda_tests"] = counts
    ctx.table("CUDA-marked tests (`pytest -m cuda -q`, log: cuda_tests.log)", [counts])
    if res["stopped_at_deadline"]:
        ctx.stopped = True
        ctx.note(
            "`pytest -m cuda` stopped at the section's share of the budget: the counts "
            "are those of the tests that had run"
        )
    if not torch.cuda.is_available():
        ctx.note("no CUDA device: the CUDA-marked tests skip, as they should here")
    if counts["failed"] or counts["errors"]:
        tail = [ln for ln in log.read_text().splitlines() if ln.startswith(("FAILED", "ERROR"))]
        ctx.note("failed: " + "; ".join(tail[:10]))


# --- 2. optimizer step ----------------------------------------------------------------
def optim_section(cfg: CheckConfig, ctx: Context) -> None:
    s = cfg.sizes
    depth, k = s.wrn
    shapes = wrn_param_shapes(depth, k)
    # Warm-ups (a compile each on a GPU) start only in the first 70% of the share.
    warm = Deadline(ctx.deadline.at - 0.3 * ctx.share_s)
    res = bench(cfg.device, s.optim_rounds, s.reference_rounds, [None], shapes, warm)
    if res["left_out"] or res["rounds"] < s.optim_rounds:
        ctx.stopped = True
        ctx.note(
            f"stopped at budget after {res['rounds']} rounds; not timed: "
            f"{', '.join(res['left_out']) or 'none'}"
        )
    rows = ratios(res)
    for row in rows:  # the first step's extra time: state allocation, and a compile
        first = row.pop("first_step_ms")
        row["first_step_extra_s"] = None if first is None else (first - row["median_ms"]) / 1e3
    ctx.table(
        f"One optimizer step on WRN-{depth}-{k}'s {res['tensors']} parameter tensors "
        f"({res['values']:,} values), median of {res['rounds']} interleaved rounds; "
        "ratios to Adam from the same run",
        rows,
    )
    one_time = [{"what": what, "seconds": sec} for what, sec in res["one_time_seconds"].items()]
    ctx.table("One-time cost of the fused path (cold cache)", one_time)
    keep = ("device_name", "tensors", "values", "rounds", "one_time_seconds", "kernel", "left_out")
    ctx.data.update({key: res[key] for key in keep})
    ctx.data["rows"] = rows


# --- 3. one training step per problem -------------------------------------------------
def problems_section(cfg: CheckConfig, ctx: Context) -> None:
    s = cfg.sizes
    problems = ctx.shared.setdefault("problems", {})
    eager, labels = ctx.shared.setdefault("step", {}), ctx.shared.setdefault("data", {})
    compiled = ctx.shared.setdefault("compiled", {})
    rows, crows = [], []
    ctx.table("Eager: one training step (M-SVAG), medians after warm-up", rows)
    ctx.table("Compiled (`runner.backend.compile_model`): steady-state step, speed-up over "
              "eager, compile time = first step minus a normal one", crows)  # fmt: skip
    ctx.data.update(eager=eager, compiled=compiled, data=labels)
    for name in PROBLEMS:
        if ctx.out_of_time():
            return
        overrides = {"batch_size": s.batch[name]} if name in s.batch else {}
        try:
            problem, data, why = load_for_timing(
                name, cfg.device, cfg.out / "scratch", data_root=cfg.data_root,
                mirror=cfg.mirror, kind=s.stand_in, real=not cfg.tiny, overrides=overrides,
            )  # fmt: skip
            if why and not cfg.tiny:
                ctx.note(f"{name}: {why}")
            t = step_times(problem, cfg.device, s.steps, s.warmup, deadline=ctx.deadline)
        except Exception as err:  # one problem's failure leaves the others timed
            rows.append({"problem": name, "error": _error(err)})
            continue
        problems[name], eager[name], labels[name] = problem, t, data
        rows.append(_step_row(name, problem, data, t))
    for mode in cfg.compile_modes:
        for name in (n for n in s.compile_problems if n in problems):
            if ctx.out_of_time():
                return
            torch.compiler.reset()  # a cold compile (the disk cache may still be warm)
            try:
                t = step_times(problems[name], cfg.device, s.steps, s.warmup,
                               compile_mode=mode, deadline=ctx.deadline)  # fmt: skip
            except Exception as err:
                crows.append({"problem": name, "mode": mode, "error": _error(err)})
                continue
            t["loss_rel_diff"] = loss_difference(eager[name], t)
            compiled.setdefault(name, {})[mode] = t
            crows.append({"problem": name, "mode": mode,
                          "speed_up": eager[name]["step"] / t["step"],
                          "loss_rel_diff": t["loss_rel_diff"],
                          "compile_s": t["compile_s"], "warmup_s": t["warmup_s"],
                          **_step_row(name, problems[name], labels[name], t)})  # fmt: skip


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"


def _step_row(name: str, problem, data: str, t: dict) -> dict:
    ms = lambda v: None if v is None else v * 1e3  # noqa: E731
    return {"problem": name, "batch": problem.batch_size, "input_ms": ms(t["input"]),
            "fwd_bwd_ms": ms(t["fwd+bwd"]), "optim_ms": ms(t["optim"]), "step_ms": ms(t["step"]),
            "input_share": t["input"] / t["step"], "first_step_ms": ms(t["first_step"]),
            "steps": t["measured"], "peak_memory_mib": t["peak_memory_mib"],
            "data": data}  # fmt: skip


# --- 4. runner overhead ---------------------------------------------------------------
def runner_section(cfg: CheckConfig, ctx: Context) -> None:
    s, device = cfg.sizes, cfg.device
    problems, compiled = ctx.shared.get("problems", {}), ctx.shared.get("compiled", {})
    rows, evals = [], []
    ctx.table(
        f"`runner.loop.train` (evaluation off) against a bare loop, {s.runner_steps} "
        "steps a trial, alternating trials; overhead = runner / bare - 1",
        rows,
    )
    ctx.table("One evaluation pass (eager)", evals)
    ctx.data.update(rows=rows, evaluation=evals)
    for name in (n for n in s.runner_problems if n in problems):
        # Eager, and compiled in the first mode that compiled in section 3.
        modes = [None] + [m for m in cfg.compile_modes if m in compiled.get(name, {})][:1]
        for mode in modes:
            if ctx.out_of_time():
                return
            res, model = overhead(problems[name], device, s.runner_steps, s.runner_repeats,
                                  cfg.out / "scratch", compile_mode=mode,
                                  deadline=ctx.deadline)  # fmt: skip
            rows.append({"problem": name, "mode": mode or "eager",
                         "bare_ms": res["bare_s"] * 1e3, "runner_ms": res["runner_s"] * 1e3,
                         "overhead": res["overhead"], "trials": len(res["bare"]),
                         "data": ctx.shared["data"][name]})  # fmt: skip
            for split in ("test", "train_eval") if mode is None else ():
                seconds = evaluation_seconds(problems[name], model, device, split)
                evals.append({"problem": name, "split": split, "seconds": seconds})
