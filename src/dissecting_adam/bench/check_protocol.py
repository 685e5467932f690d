"""The GPU check's P1 reproduction: ``scripts/reproduce.py`` for fmnist_2c2d as the driver
runs it by default (on CUDA: groups of 10 and packed workers), in the check's store.

Section 6 starts it and stops it with SIGTERM at its deadline (resumable, as under SLURM);
the last section (``protocol_section``) runs the same command again, which resumes where the
first stopped, to the end: the search, the 4 methods x replicates, Fig. 5's P1 panel and the
claims, and copies ``fig5.png``, ``summary.md`` and ``claims.md`` into the report's folder.
Stopped at its budget, it records "stopped at budget" and a rerun of the check goes on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from ..runner.store import FINISHED
from .config import CheckConfig
from .data import GENERATED
from .process import check_exit, run_until
from .sections import Context
from .timing import Deadline

#: What the last section copies from the reproduction's outputs into the report's folder.
OUTPUTS = ("fig5.png", "summary.md", "claims.md")


def variant_of(cfg: CheckConfig, ctx: Context) -> str:
    """Real Fashion-MNIST where section 3 found it, else generated stand-ins (tiny: always)."""
    if cfg.tiny:
        return "synthetic"
    return "real" if ctx.shared.get("data", {}).get("fmnist_2c2d") == "real" else "synthetic"


def label(variant: str) -> str:
    return "real" if variant == "real" else GENERATED


def out_dir(cfg: CheckConfig) -> Path:
    return cfg.out / "p1_protocol"


def overrides(cfg: CheckConfig, variant: str) -> list[str]:
    """Of every run of the reproduction: the data, and the sizes' own (tiny: small runs)."""
    return [f"data.variant={variant}", *cfg.sizes.reproduce_overrides]


def reproduce_cmd(cfg: CheckConfig, variant: str) -> list[str]:
    """The P1 reproduction, the same for sections 6 and 8 (so the second resumes the first):
    the check's profile, its store, the driver's default batching for the device."""
    return [
        cfg.python,
        str(cfg.root / "scripts" / "reproduce.py"),
        "problems=[fmnist_2c2d]",
        f"profile={cfg.sizes.profile}",
        "estimate=false",
        f"overrides=[{','.join(repr(o) for o in overrides(cfg, variant))}]",
        f"results_root={cfg.out / 'store'}",
        f"device={cfg.device}",
        f"out_dir={out_dir(cfg)}",
        *cfg.data_overrides(),
    ]


def finished(store: Path, profile: str) -> dict[str, int]:
    """Finished runs and probes of P1 in the store."""
    counts = {"runs": 0, "probes": 0}
    for path in Path(store, profile, "fmnist_2c2d").glob("*/*/*/summary.json"):
        summary = json.loads(path.read_text())
        if summary.get("status") in FINISHED:
            counts["probes" if "stop_at" in summary else "runs"] += 1
    return counts


def margin_s(ctx: Context) -> float:
    """Time to checkpoint and exit after SIGTERM (a loaded 2-core machine took over 8 s)."""
    return min(15.0, max(12.0, 0.1 * ctx.share_s))


def protocol_section(cfg: CheckConfig, ctx: Context) -> None:
    """The whole P1 protocol to its end (or the section's deadline), and its outputs."""
    variant, store = variant_of(cfg, ctx), cfg.out / "store"
    margin = margin_s(ctx)
    log = cfg.out / "p1_protocol.log"
    before = finished(store, cfg.sizes.profile)
    res = run_until(reproduce_cmd(cfg, variant), Deadline(ctx.deadline.at - margin), log,
                    cfg.root, margin)  # fmt: skip
    after = finished(store, cfg.sizes.profile)
    done = res["exit_status"] == 0
    copied = []
    for name in OUTPUTS if done else ():
        if (out_dir(cfg) / name).exists():
            shutil.copyfile(out_dir(cfg) / name, cfg.out / name)
            copied.append(name)
    row = {
        **res,
        "runs_finished": after["runs"] - before["runs"],
        "probes_finished": after["probes"] - before["probes"],
        "runs_in_store": after["runs"],
        "outputs": ", ".join(copied) or None,
        "data": label(variant),
    }
    ctx.table(
        f"The whole P1 protocol (`scripts/reproduce.py`, {cfg.sizes.profile} profile, the "
        "driver's default batching; resumes what section 6 started; log: p1_protocol.log); "
        f"outputs copied to this folder: {', '.join(OUTPUTS)}",
        [row],
    )
    ctx.data["protocol"] = row
    text = log.read_text(errors="replace") if log.exists() else ""
    plan = [line for line in text.splitlines() if line.startswith("Plan:")]
    if plan:
        ctx.note("as the driver printed it: " + plan[0])
    if done:
        _results(cfg, ctx)
    check_exit(res, log)
    ctx.stopped = res["stopped_at_deadline"]


def _results(cfg: CheckConfig, ctx: Context) -> None:
    """The selections, the replicates' summary and the claims' verdicts, as tables."""
    folder = out_dir(cfg)
    selection = json.loads((folder / "selection.json").read_text())
    rows = [{"pair": pair, "lr": sel.get("lr"), "largest_stable": sel.get("largest_stable"),
             "cap_reached": sel.get("cap_reached")}
            for pair, sel in selection.items() if isinstance(sel, dict)]  # fmt: skip
    ctx.table("Selected step sizes (selection.json)", rows)
    if (folder / "summary.csv").exists():
        summary = pd.read_csv(folder / "summary.csv")
        ctx.table("Replicates (summary.csv: final values, mean and std over seeds)",
                  summary.to_dict("records"))  # fmt: skip
    if (folder / "claims.csv").exists():
        claims = pd.read_csv(folder / "claims.csv").drop_duplicates(["problem", "claim"])
        verdicts = claims[["problem", "claim", "claim_verdict"]].to_dict("records")
        ctx.table("The paper's claims on P1 (claims.csv; details in claims.md)", verdicts)
