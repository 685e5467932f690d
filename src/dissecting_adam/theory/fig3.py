"""Fig. 3 (§3.1): the variance adaptation factors as functions of the relative std eta."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..runner.files import atomic_write
from .factors import adam_factor, gradient_factor, sign_factor


def curves(eta: np.ndarray) -> dict[str, np.ndarray]:
    """erf(1/(sqrt2 eta)) (optimal for the sign), (1+eta^2)^(-1/2) (Adam), (1+eta^2)^(-1) (SVAG)."""
    return {
        "sign_optimal": sign_factor(eta),
        "adam": adam_factor(eta),
        "gradient_optimal": gradient_factor(eta),
    }


def experiment(cfg: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """The whole of ``make fig3``: fig3.pdf/png, fig3.csv (the curves) and meta.json."""
    from .plots import plot_fig3
    from .records import write_meta

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eta = np.linspace(0.0, float(cfg["eta_max"]), int(cfg["n_points"]))
    c = curves(eta)
    paths = {"csv": out_dir / "fig3.csv"}
    table = pd.DataFrame({"eta": eta, **c})
    atomic_write(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    paths["pdf"], paths["png"] = plot_fig3(eta, c, out_dir)
    gap = np.abs(c["sign_optimal"] - c["adam"])
    summary = {
        "max_abs_gap_sign_optimal_vs_adam": float(gap.max()),
        "eta_at_max_gap": float(eta[gap.argmax()]),
    }
    paths["meta"] = write_meta(out_dir, dict(cfg), [], time.perf_counter() - t0, summary=summary)
    return paths
