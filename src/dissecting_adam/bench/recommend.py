"""What the GPU check's measurements recommend, per problem: compile or not, how many tasks
at once on a device (``jobs_per_device``), and whether groups pay (``parallel_seeds``).

Pure functions of the sections' numbers; each choice names the numbers it rests on.
"""

from __future__ import annotations

from ..problems import PROBLEMS

#: A compiled step must be at least this much faster than an eager one to be worth it.
MIN_SPEED_UP = 1.05
#: ... and its first loss (the same weights and batch) within this of the eager one. On the
#: CPU the two agree to 5e-8 (tests/test_backend.py); TF32 on a GPU rounds matmul inputs to
#: 10 bits, and two kernels that round differently may then differ by about 1e-4.
MAX_LOSS_DIFF = 1e-3


def loss_difference(eager: dict, compiled: dict) -> float | None:
    """|compiled - eager| / |eager| of the first step's loss (same weights, same batch)."""
    a, b = compiled.get("first_loss"), eager.get("first_loss")
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(b), 1e-12)


def compile_choice(eager: dict, compiled: dict) -> dict[str, str | None]:
    """Per problem with a compiled timing: the mode that saves the most time over a paper
    run (steady-state saving x the problem's step budget - compile time), or None (eager)
    when no mode is ``MIN_SPEED_UP`` faster, pays for its compilation and computes the
    first loss within ``MAX_LOSS_DIFF`` of eager."""
    out = {}
    for name, modes in compiled.items():
        steps = PROBLEMS[name].Config().num_steps
        saving = {
            mode: (eager[name]["step"] - t["step"]) * steps - t["compile_s"]
            for mode, t in modes.items()
            if eager[name]["step"] / t["step"] >= MIN_SPEED_UP
            and (t.get("loss_rel_diff") or 0.0) <= MAX_LOSS_DIFF
        }
        best = max(saving, key=saving.get, default=None)
        out[name] = best if best is not None and saving[best] > 0 else None
    return out


def best_by(rows: list[dict], key: str) -> dict[str, dict]:
    """Per problem, its row with the largest ``key``."""
    out: dict[str, dict] = {}
    for row in rows:
        best = out.get(row["problem"])
        if row.get(key) is not None and (best is None or row[key] > best[key]):
            out[row["problem"]] = row
    return out


def recommendations(shared: dict, data: dict) -> dict:
    """The choices (``compile``, ``jobs_per_device``, ``parallel_seeds``) and one line each.

    ``shared``: the sections' shared numbers (eager and compiled step times); ``data``: the
    packing section's data (``packing`` and ``seed_parallel`` rows)."""
    eager, compiled = shared.get("step", {}), shared.get("compiled", {})
    choice = compile_choice(eager, compiled)
    lines = []
    for name, mode in choice.items():
        steps = PROBLEMS[name].Config().num_steps
        parts = ", ".join(
            f"{m}: x{eager[name]['step'] / t['step']:.2f} steady, compile {t['compile_s']:.1f} s"
            + (
                f", first loss {t['loss_rel_diff']:.1e} from eager"
                if t.get("loss_rel_diff") is not None
                else ""
            )
            for m, t in compiled[name].items()
        )
        verdict = f"`train.compile={mode}`" if mode else "eager (`train.compile=false`)"
        lines.append(f"{name}: {verdict} ({parts}; over {steps:,} steps)")
    # At steady state: short runs are start-up bound, the paper's are not.
    jobs = best_by(data.get("packing", []), "paper_runs_per_hour")
    for name, best in jobs.items():
        ratio = f", x{best['vs_1_job']:.2f} one task's" if best.get("vs_1_job") else ""
        members = best.get("members") or 1
        tasks = f" with groups of {members}" if members > 1 else ""
        lines.append(
            f"{name}: `jobs_per_device={best['jobs_per_device']}`{tasks} "
            f"({best['paper_runs_per_hour']:.1f} paper-budget runs/hour at steady state{ratio}, "
            "the most measured)"
        )
    seeds = best_by(data.get("seed_parallel", []), "speed_up")
    for name, best in seeds.items():
        cost = 1.0 / best["speed_up"]
        if best["speed_up"] > 1.0:
            lines.append(
                f"{name}: groups pay, `parallel_seeds=auto` (groups of 10 on CUDA) or "
                f"`parallel_seeds={best['K']}` (a member-step costs x{cost:.2f} of a single "
                "run's step, the least measured)"
            )
        else:
            lines.append(
                f"{name}: groups do not pay here (a member-step costs x{cost:.2f} of a single "
                f"run's step at best, K={best['K']}): `parallel_seeds=1`"
            )
    return {
        "compile": choice,
        "jobs_per_device": {n: b["jobs_per_device"] for n, b in jobs.items()},
        "parallel_seeds": {n: b["K"] if b["speed_up"] > 1.0 else 1 for n, b in seeds.items()},
        "lines": lines,
    }
