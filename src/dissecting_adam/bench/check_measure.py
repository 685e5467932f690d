"""Sections 1, 2 and 4 of the GPU check: the machine and the CUDA tests, the optimizer step
(eager and fused paths, then torch.compile under a cap), and the runner's overhead (section
3, the training step per setting, is ``check_steps``).

Each section is ``section(cfg, ctx)``: it records tables and data in ``ctx`` and leaves in
``ctx.shared`` what later sections use (the loaded problems, the step times, the compile
modes that worked).
"""

from __future__ import annotations

import os
import re
import subprocess

import torch

from ..runner.environment import cpu_model, environment
from .config import CheckConfig
from .optim_step import bench, compiled_steps, wrn_param_shapes
from .optim_step import rows as optim_rows
from .process import run_until
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
    """The eager and fused paths first (interleaved rounds), torch.compile last under a
    cap: what is left of the share, less a margin."""
    s = cfg.sizes
    depth, k = s.wrn
    shapes = wrn_param_shapes(depth, k)
    rows: list[dict] = []
    title = (f"One optimizer step on WRN-{depth}-{k}'s parameter shapes, median of interleaved "
             "rounds; ratio to torch's fused Adam from the same run; GB/s: bytes moved per "
             "step (parameters and state read and written, gradient read) / step time; "
             "vs_copy: that over the copy bandwidth measured here")  # fmt: skip
    ctx.table(title, rows)
    eager_part = Deadline(ctx.deadline.at - s.optim_compile_share * ctx.share_s)
    res = bench(cfg.device, s.optim_rounds, s.reference_rounds, shapes, eager_part, s.copy_mib)
    rows += optim_rows(res)
    ctx.note(f"{res['device_name']}, CPU {res['cpu_model']}: {res['tensors']} tensors, "
             f"{res['values']:,} values, {res['rounds']} rounds; copy bandwidth "
             f"{res['copy_bytes_per_s'] / 1e9:.1f} GB/s")  # fmt: skip
    if res["rounds"] < s.optim_rounds:
        ctx.note(f"eager part stopped at its share after {res['rounds']} rounds")
    keep = ("device_name", "cpu_model", "tensors", "values", "rounds", "copy_bytes_per_s",
            "one_time_seconds", "kernel", "unavailable")  # fmt: skip
    ctx.data.update({key: res[key] for key in keep})
    ctx.data["rows"] = rows
    cap_s = max(ctx.left() - s.optim_compile_margin_s, 1.0)
    pending = {"optimizer": "M-SVAG fused [compile]",
               "status": f"compiling under a {cap_s:.0f} s cap (if this stays, the section "
                         "was stopped first)"}  # fmt: skip
    rows.append(pending)
    compiled = compiled_steps(cfg.device, shapes, cap_s, steps=s.optim_compile_steps)
    rows.remove(pending)
    ctx.data["compiled"] = compiled
    rows += optim_rows({**res, "median_ms": {}, "unavailable": {}}, compiled)
    one_time = [{"what": what, "seconds": sec} for what, sec in res["one_time_seconds"].items()]
    one_time += [{"what": f"{name} torch.compile, first step", "seconds": c["first_step_ms"] / 1e3}
                 for name, c in compiled.items() if c.get("first_step_ms")]  # fmt: skip
    ctx.table("One-time cost of the fused paths (C kernel build on the CPU; compile)", one_time)


# --- 3. one training step per problem and setting: check_steps.steps_section -----------


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
