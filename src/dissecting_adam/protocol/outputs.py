"""A reproduction's outputs, drawn from the results store only: the search table and
step-size sensitivity plots, the replicates' summary, curves and Fig. 5, the claims report
and the selected step sizes. Rerunning it on the same store rewrites the same files.

Every file goes through ``runner.files.atomic_write`` (a temp file and a rename, the umask's
mode): a reproduction killed while writing leaves each output whole, old or new (the
figures too: ``plots`` saves them the same way).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import methods
from ..runner import loggers, store
from ..runner.files import atomic_write, dumps
from ..runner.table import collect, write_table
from . import aggregate, claims, plots


def _text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def write(r, chosen: dict, other: dict | None = None, stops: dict | None = None) -> dict[str, Path]:
    """``r`` is the driver's ``Reproduction``; ``chosen`` maps pair -> (Selection, state);
    ``other`` pair -> what the other mode picks (``driver.other_modes``); ``stops`` pair ->
    why the pair was stopped before its replicates (``driver.stopped``)."""
    other, stops = other or {}, stops or {}
    out = r.out_dir
    out.mkdir(parents=True, exist_ok=True)
    table = collect(Path(r.base[r.pairs[0]].results_root) / r.profile)
    problems = list(dict.fromkeys(p for p, _ in chosen))
    paths = {}
    picked = {
        pair: sel.lr for pair, (sel, _) in chosen.items() if sel is not None and pair not in stops
    }
    hashes = {
        store.config_hash(r.replicate(pair, lr, seed).identity())
        for pair, lr in picked.items()
        for seed in r.search.replicate_seeds
    }
    reps = table[table["config_hash"].isin(hashes)]
    note = notes(r, reps)  # what a reader must know first: not the paper's protocol, ...
    banner = "".join(f"**{line}**\n\n" for line in note)
    title = " ".join(note)

    # Search tables and sensitivity plots: every full-budget search run.
    rows = [
        dict(
            problem=p,
            optimizer=o,
            lr=lr,
            status=x.status,
            metric=x.metric,
            selected=sel is not None and lr == sel.lr,
        )  # fmt: skip
        for (p, o), (sel, st) in chosen.items()
        for lr, x in sorted(st.outcomes.items(), reverse=True)
    ]
    search_df = pd.DataFrame(rows)
    if len(search_df):
        _csv(out / "search.csv", search_df)
        picks = selection_table(chosen, other, stops)
        picks = picks.astype(object).where(picks.notna(), "")
        stopped = "".join(f"\n**Stopped:** {line}\n" for line in stops.values())
        _text(out / "search.md", banner + aggregate.to_markdown(search_df)
              + "\nSelected, and what the other mode picks from the same runs:\n\n"
              + aggregate.to_markdown(picks) + stopped)  # fmt: skip
        metric = r.search.metric
        for problem in problems:
            sens = search_df.rename(columns={"metric": metric})
            paths[f"sensitivity_{problem}"] = plots.sensitivity(
                sens, problem, metric, out / f"sensitivity_{problem}", note=title
            )[0]

    # Replicates of the selected step sizes: exactly their runs, by identity hash.
    summary = aggregate.summary(reps) if len(reps) else pd.DataFrame()
    if len(reps):  # the table scripts/claims.py recomputes the claims from
        paths["replicates"] = write_table(reps, out / "replicates.parquet")
    if len(summary):
        _csv(out / "summary.csv", summary)
        _text(out / "summary.md", banner + aggregate.to_markdown(summary))
        curves = aggregate.curves(reps)
        _csv(out / "curves.csv", curves)
        paths["fig5"] = plots.fig5(curves, picked, problems, out / "fig5", note=title)[0]
        if r.claims is not None:
            claim_list, settings = r.claims
            paths.update(claims.write(reps, out, claim_list, settings, summary, banner))
    selection = {"note": title} if title else {}
    selection |= {
        f"{p}/{o}": None
        if sel is None
        else {
            "lr": sel.lr,
            "metric": sel.metric,
            "tie_with": sel.tie_with,
            "on_lower_edge": sel.on_lower_edge,
            "largest_stable": r.search.lrs(methods.get(o))[st.top],
            # The cap of the grid was stable: a larger step size may be stable (and better).
            "cap_reached": st.cap_reached,
            "probes": {f"{lr:g}": _probe_word(x) for lr, x in sorted(st.probes.items())},
            # The same search runs ranked by the other mode (final / best over evaluations).
            "other_mode": other.get((p, o)),
            # Why this pair got no replicates (the winner on the lower edge), and the fix.
            "stopped": stops.get((p, o)),
        }
        for (p, o), (sel, st) in chosen.items()
    }
    _text(out / "selection.json", dumps(selection, indent=2))  # strict JSON (no NaN literal)
    lg = r.base[r.pairs[0]].logger
    if lg.name == "wandb":
        tables = {"summary": summary, "search": search_df}
        if (out / "claims.csv").exists():
            tables["claims"] = pd.read_csv(out / "claims.csv")
        tables["selection"] = pd.DataFrame(
            [{"pair": k, **(v or {})} for k, v in selection.items() if k != "note"]
        ).drop(columns=["probes", "tie_with", "other_mode"], errors="ignore")
        loggers.log_reproduction(
            project=lg.project, entity=lg.entity, mode=lg.mode, dir=lg.dir,
            name=f"fig5/{r.profile}",
            config={"profile": r.profile, "search": r.search.name, "note": title,
                    "selected_lr": {f"{p}/{o}": lr for (p, o), lr in picked.items()}},
            images={k: Path(v).with_suffix(".png") for k, v in paths.items()
                    if k == "fig5" or k.startswith("sensitivity_")},
            tables=tables,
        )  # fmt: skip
    return paths


def notes(r, reps: pd.DataFrame) -> list[str]:
    """What every output of this reproduction must say at its top (nothing for the paper's
    protocol on real data)."""
    out = []
    if len(reps) and (reps["data_variant"].astype(str) != "real").any():
        out.append("Generated stand-in data (data.variant=synthetic): a check of the pipeline, "
                   "not results about the optimizers.")  # fmt: skip
    if r.profile == "smoke":
        out.append("smoke profile: pipeline check, not results.")
    elif r.profile != "paper":
        budgets = ", ".join(
            f"{p} {spec.num_steps:,} of {spec.budget.reference_steps:,} steps "
            f"({spec.num_steps / spec.budget.reference_steps:.1%})"
            for p, spec in {spec.problem: spec for spec in r.base.values()}.items()
        )
        seeds = len(r.search.replicate_seeds)
        out.append(f"{r.profile} profile: a fraction of the paper's budget ({budgets}), "
                   f"{seeds} seeds (paper: 10); indicative only.")  # fmt: skip
    return out


def selection_table(chosen: dict, other: dict, stops: dict) -> pd.DataFrame:
    """Per pair: the selected lr and metric, what the other mode picks from the same runs
    (``other``: pair -> ``{"mode", "lr", "metric", "complete", "needs"}`` or None), and
    whether the pair was stopped before its replicates (``stops``: pair -> why)."""
    rows = []
    for (p, o), (sel, _) in chosen.items():
        alt = other.get((p, o))
        rows.append(dict(
            problem=p, optimizer=o,
            lr=None if sel is None else sel.lr,
            metric=None if sel is None else sel.metric,
            other_mode=None if alt is None else alt["mode"],
            other_lr=None if alt is None else alt["lr"],
            other_metric=None if alt is None else alt["metric"],
            other_note=None if alt is None or alt["complete"]
            else f"would also search lr={alt['needs']:g}",
            replicates="stopped" if (p, o) in stops else ("none" if sel is None else "yes"),
        ))  # fmt: skip
    return pd.DataFrame(rows)


def _probe_word(outcome) -> str:
    if outcome.status == "diverged":
        return "diverged"
    return "stable" if outcome.stable else "no progress"
