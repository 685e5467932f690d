"""A reproduction's outputs, drawn from the results store only: the search table and
step-size sensitivity plots, the replicates' summary, curves and Fig. 5, the claims report
and the selected step sizes. Rerunning it on the same store rewrites the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import methods
from ..runner import store
from . import aggregate, claims, plots


def write(r, chosen: dict) -> dict[str, Path]:
    """``r`` is the driver's ``Reproduction``; ``chosen`` maps pair -> (Selection, state)."""
    out = r.out_dir
    out.mkdir(parents=True, exist_ok=True)
    table = store.collect(Path(r.base[r.pairs[0]].results_root) / r.profile)
    problems = list(dict.fromkeys(p for p, _ in chosen))
    paths = {}

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
        search_df.to_csv(out / "search.csv", index=False)
        (out / "search.md").write_text(aggregate.to_markdown(search_df))
        metric = r.search.metric
        for problem in problems:
            sens = search_df.rename(columns={"metric": metric})
            paths[f"sensitivity_{problem}"] = plots.sensitivity(
                sens, problem, metric, out / f"sensitivity_{problem}"
            )[0]

    # Replicates of the selected step sizes: exactly their runs, by identity hash.
    picked = {pair: sel.lr for pair, (sel, _) in chosen.items() if sel is not None}
    hashes = {
        store.config_hash(r.replicate(pair, lr, seed).identity())
        for pair, lr in picked.items()
        for seed in r.search.replicate_seeds
    }
    reps = table[table["config_hash"].isin(hashes)]
    summary = aggregate.summary(reps) if len(reps) else pd.DataFrame()
    banner = claims.data_banner(reps) if len(reps) else ""
    if len(reps):  # the table scripts/claims.py recomputes the claims from
        paths["replicates"] = store.write_table(reps, out / "replicates.parquet")
    if len(summary):
        summary.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text(banner + aggregate.to_markdown(summary))
        curves = aggregate.curves(reps)
        curves.to_csv(out / "curves.csv", index=False)
        paths["fig5"] = plots.fig5(curves, picked, problems, out / "fig5")[0]
        if r.claims is not None:
            claim_list, settings = r.claims
            paths.update(claims.write(reps, out, claim_list, settings, summary, banner))
    selection = {
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
        }
        for (p, o), (sel, st) in chosen.items()
    }
    (out / "selection.json").write_text(json.dumps(selection, indent=2))
    return paths


def _probe_word(outcome) -> str:
    if outcome.status == "diverged":
        return "diverged"
    return "stable" if outcome.stable else "no progress"
