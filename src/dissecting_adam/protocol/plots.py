"""Figures drawn from stored results only: Fig. 5 and the step-size sensitivity plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .. import methods  # noqa: E402
from ..runner.files import atomic_write  # noqa: E402
from ..style import color, label, paper_rc  # noqa: E402

PROBLEM_TITLES = {
    "fmnist_2c2d": "P1 F-MNIST 2c2d",
    "cifar10_3c3d": "P2 CIFAR-10 3c3d",
    "cifar100_wrn404": "P3 CIFAR-100 WRN-40-4",
    "tolstoi_char_rnn": "P4 Tolstoi char-RNN",
}


def _methods(present) -> list[str]:
    """The methods present, in the registry's (legend) order; unregistered ones last."""
    order = methods.names()
    return [m for m in order if m in present] + sorted(set(present) - set(order))


def fig5(
    curves: pd.DataFrame,
    selected: Mapping[tuple[str, str], float],
    problems: Sequence[str],
    out: Path,
    note: str = "",
) -> list[Path]:
    """Training loss (top) and test accuracy (bottom) against steps, mean +- 1 std over seeds.

    ``curves`` is ``aggregate.curves`` of the replicate runs; ``selected`` maps
    (problem, optimizer) to the step size whose replicates are drawn.
    """
    column = "full" if len(problems) > 1 else "half"  # one problem: a single-column figure
    with plt.rc_context(paper_rc(column=column, nrows=2, ncols=len(problems))):
        fig, axes = plt.subplots(2, len(problems), squeeze=False, sharex="col")
        handles = {}
        for j, problem in enumerate(problems):
            part = curves[curves["problem"] == problem]
            for method in _methods(part["optimizer"].unique()):
                lr = selected.get((problem, method))
                if lr is None:
                    continue
                run = part[(part["optimizer"] == method) & (part["lr"] == lr)]
                for i, (split, stat) in enumerate((("train_eval", "loss"), ("test", "accuracy"))):
                    c = run[run["split"] == split].sort_values("step")
                    mean, std = c[f"{stat}_mean"], c[f"{stat}_std"]
                    ax = axes[i, j]
                    (line,) = ax.plot(c["step"], mean, color=color(method), lw=1.0)
                    ax.fill_between(c["step"], mean - std, mean + std, color=color(method),
                                    alpha=0.2, lw=0)  # fmt: skip
                    handles[method] = line
            axes[0, j].set_title(PROBLEM_TITLES.get(problem, problem))
            axes[1, j].set_xlabel("step")
        axes[0, 0].set_ylabel("training loss")
        axes[1, 0].set_ylabel("test accuracy")
        fig.legend(
            list(handles.values()), [label(m) for m in handles], loc="outside lower center",
            ncols=min(len(handles), 4 if column == "half" else 7), frameon=False,
        )  # fmt: skip
        return _save(fig, out, note)


def sensitivity(
    table: pd.DataFrame, problem: str, metric: str, out: Path, note: str = ""
) -> list[Path]:
    """Final ``metric`` against lr per optimizer for one problem; diverged runs marked x.

    ``table`` has one row per search run: optimizer, lr, status and the metric column.
    """
    part = table[table["problem"] == problem]
    with plt.rc_context(paper_rc(column="half")):
        fig, ax = plt.subplots()
        finite = part.loc[part["status"] == "completed", metric]
        floor = finite.min() if len(finite) else 0.0
        for method in _methods(part["optimizer"].unique()):
            rows = part[part["optimizer"] == method].sort_values("lr")
            ok = rows[rows["status"] == "completed"]
            ax.plot(ok["lr"], ok[metric], "o-", color=color(method), label=label(method), ms=3)
            bad = rows[rows["status"] != "completed"]
            ax.plot(bad["lr"], [floor] * len(bad), "x", color=color(method), ms=4)
        ax.set_xscale("log")
        ax.set_xlabel("step size")
        ax.set_ylabel(metric.replace("_", " ") + " (x: diverged)")
        ax.set_title(PROBLEM_TITLES.get(problem, problem))
        ax.legend(frameon=False)
        return _save(fig, out, note)


def _save(fig, out: Path, note: str = "") -> list[Path]:
    """PDF and PNG; ``note`` (e.g. "smoke profile: pipeline check, not results") goes on top
    of the figure in red, so that no copy of it passes for a result of the paper's protocol."""
    if note:
        fig.suptitle(note, fontsize=5, color="#B00000", wrap=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".pdf"), out.with_suffix(".png")]
    for path in paths:  # a killed process never leaves a half-written figure
        atomic_write(path, lambda tmp, fmt=path.suffix[1:]: fig.savefig(tmp, format=fmt))
    plt.close(fig)
    return paths
