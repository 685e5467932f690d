"""The GPU check: eight timed sections in one wall-time budget, and their report.

``run_check(cfg)`` sets the backend flags a run would use, runs the sections
(``sections.run_sections``: each gets its share of ``cfg.budget_s``, a section that fails
or runs out of time is recorded as such and the next one runs) and rewrites
``report.json`` and ``report.md`` in ``cfg.out`` after every section.

1. environment: machine, versions, and ``pytest -m cuda``;
2. one optimizer step on WRN-40-4's shapes, every method's eager and fused paths against
   torch's fused Adam, then torch.compile under a cap (``check_measure``, ``optim_step``);
3. one training step per problem and setting (eager, cuDNN autotuning, channels_last, bf16
   autocast, compiled under caps) with TFLOP/s against the matmul peaks measured here, and
   whole-step CUDA graphs where the runner offers them (``check_steps``);
4. the runner's overhead over a bare loop, eager and compiled;
5. runs per hour: N tasks at once (``Packed``), groups of K on every problem against a
   single run, and the driver's own batching (its groups, its tasks per device);
6. a P1 run at the paper's budget, then the start of the P1 reproduction (SIGTERM);
7. the whole paper protocol projected with the settings the driver would use, per precision:
   the step times of section 3, the group cost and packing gain of section 5;
8. the whole P1 paper protocol, resumed from section 6 to its end (``check_protocol``):
   Fig. 5's P1 panel, the summary and the claims, copied into the report's folder.

Every section's record starts with the machine it ran on (GPU and CPU model).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from ..runner import backend
from ..runner.environment import cpu_model, environment
from . import report
from .check_measure import environment_section, optim_section, runner_section
from .check_protocol import protocol_section
from .check_runs import p1_section, packing_section, projection_section
from .check_steps import steps_section
from .config import CheckConfig
from .recommend import recommendations
from .sections import Section, run_sections

#: name, title, section, weight (share of the budget), floor (seconds). The P1 protocol is
#: last and gets the largest share: it is the check's proof, and it resumes what section 6
#: started (a share left unused by earlier sections goes to it).
PLAN = (
    ("environment", "Environment and CUDA tests", environment_section, 0.05, 10.0),
    ("optimizer_step", "Optimizer step on WRN-40-4's shapes", optim_section, 0.12, 5.0),
    ("problem_step", "One training step per problem and setting", steps_section, 0.26, 5.0),
    ("runner_overhead", "Runner overhead", runner_section, 0.04, 5.0),
    ("runs_per_hour", "Runs per hour: packing and groups", packing_section, 0.15, 5.0),
    ("p1_run", "A real P1 run and the start of the P1 reproduction", p1_section, 0.08, 10.0),
    ("projection", "Projection of the paper protocol", projection_section, 0.02, 10.0),
    ("p1_protocol", "The whole P1 paper protocol", protocol_section, 0.28, 20.0),
)


def machine(device: str) -> str:
    """The GPU (or the CPU, on a CPU device) and the CPU model."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(torch.device(device)) if cuda else None
    return f"{device}: {gpu}, CPU {cpu_model()}" if gpu else f"{device}: CPU {cpu_model()}"


def _on(fn: Callable, cfg: CheckConfig, where: str, ctx) -> None:
    ctx.data["host_model"] = where
    ctx.note(f"machine: {where}")
    fn(cfg, ctx)


def sections(cfg: CheckConfig) -> list[Section]:
    weights, floors, where = cfg.sizes.weights, cfg.sizes.floors, machine(cfg.device)
    return [
        Section(
            name,
            title,
            functools.partial(_on, fn, cfg, where),
            weights.get(name, weight),
            max(floor, floors.get(name, 0.0)),
        )  # fmt: skip
        for name, title, fn, weight, floor in PLAN
    ]


def header(cfg: CheckConfig, settings: dict) -> dict:
    env = environment(cfg.device)
    name = env.get("device_name") or cpu_model()
    s = cfg.sizes
    tiny = (f"WRN-{s.wrn[0]}-{s.wrn[1]} shapes for the optimizer step, batches of "
            f"{min(s.batch.values())}-{max(s.batch.values())} on generated data, "
            f"{s.steps} timed steps, {s.optim_rounds} rounds, N up to {max(s.jobs)}, K up to "
            f"{max(s.ks)}, the {s.profile} profile for P1") if cfg.tiny else "no"  # fmt: skip
    facts = {
        "device": f"{cfg.device} ({name})",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": env["git_commit"],
        "git_dirty": env["git_dirty"],
        "torch": env["torch"],
        "cuda": env["cuda"],
        "torch_cpu_threads": env["torch_threads"],
        "budget_s": cfg.budget_s,
        "tiny": tiny,
        "compile_modes": ", ".join(cfg.compile_modes),
        "backend": ", ".join(f"{k}={v}" for k, v in settings.items()),
    }
    kind = "tiny check (not a measurement)" if cfg.tiny else "check"
    return {
        "title": f"GPU check: {cfg.device} {kind}",
        "tiny": cfg.tiny,
        "tiny_note": cfg.note,
        "facts": facts,
    }


def document(head: dict, records: list[dict], shared: dict) -> dict:
    runs = next((r.get("data", {}) for r in records if r["name"] == "runs_per_hour"), {})
    recs = recommendations(shared, runs)
    if head["tiny"]:
        recs["lines"] = [f"(tiny check, not a recommendation) {line}" for line in recs["lines"]]
    return {"header": head, "sections": records, "recommendations": recs}


def run_check(cfg: CheckConfig, echo: Callable[[str], None] = print) -> dict:
    """Run every section within ``cfg.budget_s`` (about); return the report's document."""
    settings = backend.configure(
        device=cfg.device, allow_tf32=True, cudnn_benchmark=cfg.cudnn_benchmark, deterministic=False
    )
    head = header(cfg, settings)
    shared: dict = {}
    prefix = "gpu_check [tiny check, not a measurement]" if cfg.tiny else "gpu_check"
    t0 = time.perf_counter()
    echo(f"{prefix}: {cfg.device}, budget {cfg.budget_s:.0f} s, report in {cfg.out}")

    def update(records: list[dict]) -> None:
        report.write(cfg.out, document(head, records, shared))
        done = [r for r in records if "seconds" in r]
        if done:
            r = done[-1]
            echo(
                f"{prefix}: {len(done)}/{len(records)} {r['title']}: {r['status']} "
                f"({r['seconds']:.1f} s of a {r['share_s']:.1f} s share; "
                f"{time.perf_counter() - t0:.0f} s in all; {r['data'].get('host_model')})"
            )

    records = run_sections(sections(cfg), cfg.budget_s, shared, update)
    doc = document(head, records, shared)
    for line in doc["recommendations"]["lines"]:
        echo(f"{prefix}: recommendation: {line}")
    return doc
