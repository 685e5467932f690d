"""The Wilson et al. (2017, §3.3) construction and the paper's Lemmas 2-3 (§5), run.

Data (Wilson et al. §3.3, as we read it): y_i = +1 with probability p > 1/2,
else -1; x_i1 = y_i, x_i2 = x_i3 = 1, and example i owns a private block of
five features starting at index 4 + 5(i-1) (1-based), of which it sets the
first one to 1 if y_i = +1 and all five if y_i = -1. With more positive than
negative examples, every entry of X^T y is non-zero and X sign(X^T y) = 4 y:
positive rows give 1 + 2 + 1 = 4, negative rows -1 + 2 - 5 = -4 (Lemma 2's
condition, c = 4).

We keep only the columns that the training set uses: d = 3 + n_+ + 5 n_-.
Wilson et al. let d grow without bound (the issue reads d = 6n), and a positive
example leaves four of its five slots empty. An all-zero column has zero
gradient forever under every method here (torch's sign(0) = 0, Adam's 0 / eps),
so its weight stays 0 and changes nothing, but it would violate Lemma 2's
"[X^T y]_i != 0"; dropping it is the same problem. Test points carry fresh
private features, unseen in training: their weights are 0 (no gradient ever
touches them), so a test score is theta_1 y + theta_2 + theta_3.

Objective R(theta) = ||X theta - y||^2 / (2n), full batch, theta_0 = 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..optim import MSGD, MSSD, MSVAG
from ..runner.files import atomic_write, atomic_write_text

#: name -> (factory(params, lr), is sign-based). All full-batch, started at theta = 0.
METHODS: dict[str, tuple[Callable, bool]] = {
    "gd": (lambda p, lr: MSGD(p, lr=lr, beta=0.0), False),
    "msgd": (lambda p, lr: MSGD(p, lr=lr, beta=0.9), False),
    "msvag": (lambda p, lr: MSVAG(p, lr=lr, beta=0.9), False),
    "sign": (lambda p, lr: MSSD(p, lr=lr, beta=0.0), True),
    "mssd": (lambda p, lr: MSSD(p, lr=lr, beta=0.9), True),
    "adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), True),
    "rmsprop": (lambda p, lr: torch.optim.RMSprop(p, lr=lr), True),
    "adagrad": (lambda p, lr: torch.optim.Adagrad(p, lr=lr), True),
}
#: largest relative distance from the sign(X^T y) line that still counts as "on the line"
DEV_TOL = 1e-5  # the eps of Adam, RMSProp (1e-8) and Adagrad (1e-10) leave up to ~1e-6
#: the lemma that predicts theta_t ∝ sign(X^T y) for each sign-based method
LEMMA = {"sign": "Lemma 3", "mssd": "Lemma 3*", "adam": "Lemma 2", "rmsprop": "Lemma 2",
         "adagrad": "Lemma 2"}  # fmt: skip


def sample_labels(n: int, p: float, rng: np.random.Generator, *, majority: bool) -> np.ndarray:
    """n labels in {+1, -1}, P(+1) = p; with ``majority`` redrawn until sum(y) > 0."""
    while True:
        y = np.where(rng.random(n) < p, 1.0, -1.0)
        if not majority or y.sum() > 0:
            return y


def design(y: np.ndarray) -> np.ndarray:
    """The (n, 3 + n_+ + 5 n_-) training matrix: the construction without its all-zero columns."""
    n = len(y)
    widths = np.where(y > 0, 1, 5)
    starts = 3 + np.concatenate([[0], np.cumsum(widths)[:-1]])
    X = np.zeros((n, 3 + int(widths.sum())))
    X[:, 0] = y
    X[:, 1:3] = 1.0
    for i in range(n):
        X[i, starts[i] : starts[i] + widths[i]] = 1.0
    return X


def check_construction(X: np.ndarray, y: np.ndarray) -> dict:
    """Lemma 2's conditions: min |X^T y| > 0 and X sign(X^T y) = c y (c and the residual)."""
    Xty = X.T @ y
    v = X @ np.sign(Xty)
    c = float(v @ y / (y @ y))
    return {"c": c, "residual": float(np.max(np.abs(v - c * y))),
            "min_abs_Xty": float(np.min(np.abs(Xty)))}  # fmt: skip


def test_scores(theta: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """Scores of fresh test points: their private features are unseen, so only 3 weights count."""
    return theta[0] * y_test + theta[1] + theta[2]


def line_deviation(theta: np.ndarray, direction: np.ndarray) -> float:
    """Relative distance of theta from the line through ``direction``: ||theta - proj|| / ||theta||.

    0 iff theta is a multiple of ``direction`` (0 for theta = 0); at most 1.
    """
    norm = np.linalg.norm(theta)
    if norm == 0:
        return 0.0
    u = direction / np.linalg.norm(direction)
    return float(np.linalg.norm(theta - (theta @ u) * u) / norm)


@dataclass(frozen=True)
class WilsonConfig:
    n_train: int = 50
    n_test: int = 2000
    p: float = 0.7
    steps: int = 2000
    loss_tol: float = 1e-20
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lrs: tuple[tuple[str, float], ...] = (
        ("gd", 0.1), ("msgd", 0.1), ("msvag", 0.1), ("sign", 0.003), ("mssd", 0.003),
        ("adam", 0.003), ("rmsprop", 0.003), ("adagrad", 0.03),
    )  # fmt: skip


def log_steps(steps: int, n: int = 60) -> np.ndarray:
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, n).round().astype(int)]))


def run_method(method: str, lr: float, X: np.ndarray, y: np.ndarray, y_test: np.ndarray,
               steps: int, loss_tol: float = 1e-20) -> dict[str, np.ndarray]:  # fmt: skip
    """Full-batch ``method`` from theta = 0; loss, test error and line deviation over steps.

    ``max_deviation_pre`` is the largest deviation before the training loss first
    falls to ``loss_tol``: past that point the gradient is rounding noise, and a
    constant-step adaptive method can amplify it (RMSProp's v decays until its
    effective step is unstable), which exact arithmetic would not do.
    """
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    n = len(y)
    theta = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = METHODS[method][0]([theta], lr)
    line = np.sign(X.T @ y)
    record = set(log_steps(steps).tolist())
    hist = {k: [] for k in ("step", "train_loss", "test_error", "deviation")}
    max_dev, max_dev_pre, converged = 0.0, 0.0, False
    for t in range(steps + 1):
        th = theta.detach().numpy()
        dev = line_deviation(th, line)
        train_loss = float(((X @ th - y) ** 2).sum() / (2 * n))
        max_dev = max(max_dev, dev)
        converged = converged or train_loss <= loss_tol
        if not converged:
            max_dev_pre = max(max_dev_pre, dev)
        if t in record:
            predictions = np.where(test_scores(th, y_test) >= 0, 1.0, -1.0)
            hist["step"].append(t)
            hist["train_loss"].append(train_loss)
            hist["test_error"].append(float(np.mean(predictions != y_test)))
            hist["deviation"].append(dev)
        if t == steps:
            break
        opt.zero_grad(set_to_none=False)
        loss = ((Xt @ theta - yt) ** 2).sum() / (2 * n)
        loss.backward()
        opt.step()
    out = {k: np.asarray(v) for k, v in hist.items()}
    out["max_deviation"] = np.asarray(max_dev)
    out["max_deviation_pre"] = np.asarray(max_dev_pre)
    out["theta"] = theta.detach().numpy().copy()
    return out


def run(cfg: WilsonConfig) -> tuple[list[dict], dict]:
    """All methods on every seed: rows for the table and the histories of the first seed."""
    rows, histories = [], {}
    for seed in cfg.seeds:
        rng = np.random.default_rng(seed)
        y = sample_labels(cfg.n_train, cfg.p, rng, majority=True)
        y_test = sample_labels(cfg.n_test, cfg.p, rng, majority=False)
        X = design(y)
        cond = check_construction(X, y)
        for method, lr in cfg.lrs:
            h = run_method(method, lr, X, y, y_test, cfg.steps, cfg.loss_tol)
            if seed == cfg.seeds[0]:
                histories[method] = h
            sign_based = METHODS[method][1]
            rows.append({
                "seed": seed, "method": method, "lr": lr, "sign_based": sign_based,
                "train_loss": float(h["train_loss"][-1]), "test_error": float(h["test_error"][-1]),
                "max_line_deviation": float(h["max_deviation"]),
                "max_line_deviation_pre": float(h["max_deviation_pre"]),
                "first_step_deviation": float(h["deviation"][1]),
                "test_negative_share": float(np.mean(y_test < 0)),
                "predicts_all_positive": bool(np.all(test_scores(h["theta"], y_test) >= 0)),
                "c": cond["c"], "construction_residual": cond["residual"],
                "min_abs_Xty": cond["min_abs_Xty"],
            })  # fmt: skip
    return rows, histories


def summary_table(rows: list[dict], dev_tol: float = DEV_TOL) -> pd.DataFrame:
    """One row per method: means over seeds, worst deviations, and the computed Lemma checks."""
    df = pd.DataFrame(rows)
    g = df.groupby("method", sort=False)
    out = pd.DataFrame({
        "lr": g["lr"].first(),
        "sign_based": g["sign_based"].first(),
        "train_loss_mean": g["train_loss"].mean(),
        "train_loss_max": g["train_loss"].max(),
        "test_error_mean": g["test_error"].mean(),
        "test_error_std": g["test_error"].std(ddof=0),
        "test_negative_share_mean": g["test_negative_share"].mean(),
        "predicts_all_positive": g["predicts_all_positive"].all(),
        "max_line_deviation_pre": g["max_line_deviation_pre"].max(),
        "max_line_deviation": g["max_line_deviation"].max(),
        "first_step_deviation": g["first_step_deviation"].max(),
        "n_seeds": g.size(),
    })  # fmt: skip
    out["lemma"] = [LEMMA.get(m, "none (gradient method)") for m in out.index]
    out["stays_on_line"] = out["max_line_deviation_pre"] <= dev_tol
    out["as_predicted"] = out["stays_on_line"] == out["sign_based"]
    return out.reset_index()


def table_markdown(table: pd.DataFrame, construction: dict, dev_tol: float) -> str:
    lines = [
        "| method | lr | lemma | train loss (mean) | test error % (mean ± std) | "
        "test negatives % | all test predictions +1 | max dev. (pre-conv.) | max dev. (all) | "
        "dev. after step 1 | on the line | as the lemmas predict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {r.lr:g} | {r.lemma} | {r.train_loss_mean:.2e} | "
            f"{100 * r.test_error_mean:.1f} ± {100 * r.test_error_std:.1f} | "
            f"{100 * r.test_negative_share_mean:.1f} | {'yes' if r.predicts_all_positive else 'no'}"
            f" | {r.max_line_deviation_pre:.1e} | {r.max_line_deviation:.1e} | "
            f"{r.first_step_deviation:.1e} | {'yes' if r.stays_on_line else 'no'} | "
            f"{'yes' if r.as_predicted else 'NO'} |"
        )
    c = construction
    head = [
        "# Wilson et al. construction: full-batch methods from theta = 0",
        "",
        f"Construction check over all seeds: X sign(X^T y) = c y with c in [{c['c_min']:g}, "
        f"{c['c_max']:g}], largest residual {c['residual']:.1e}, smallest |[X^T y]_i| = "
        f"{c['min_abs_Xty']:g} (> 0 required).",
        "",
        "Deviation = ||theta - proj_line(theta)|| / ||theta||, the relative distance from the "
        "line through sign(X^T y), largest over steps and seeds; 'pre-conv.' stops at the first "
        f"step with training loss <= loss_tol. 'On the line' means pre-conv. deviation <= "
        f"{dev_tol:g}; Lemmas 2-3 predict this for the sign-based methods only. "
        "Lemma 3* (M-SSD): the lemma's argument carries over, since every gradient is a "
        "multiple of X^T y, so is their moving average.",
        "",
    ]
    return "\n".join(head + lines)


def experiment(cfg: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """The whole of ``make wilson``: run, write wilson.csv, wilson.md, runs.csv, figure, meta."""
    from .plots import plot_wilson
    from .records import write_meta

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wc = WilsonConfig(
        n_train=int(cfg["n_train"]), n_test=int(cfg["n_test"]), p=float(cfg["p"]),
        steps=int(cfg["steps"]), seeds=tuple(int(s) for s in cfg["seeds"]),
        loss_tol=float(cfg["loss_tol"]),
        lrs=tuple((m, float(lr)) for m, lr in cfg["lrs"].items()),
    )  # fmt: skip
    rows, histories = run(wc)
    runs = pd.DataFrame(rows)
    dev_tol = float(cfg.get("dev_tol", DEV_TOL))
    table = summary_table(rows, dev_tol)
    construction = {"c_min": runs["c"].min(), "c_max": runs["c"].max(),
                    "residual": runs["construction_residual"].max(),
                    "min_abs_Xty": runs["min_abs_Xty"].min()}  # fmt: skip
    paths = {"runs": out_dir / "runs.csv", "csv": out_dir / "wilson.csv",
             "md": out_dir / "wilson.md"}  # fmt: skip
    atomic_write(paths["runs"], lambda tmp: runs.to_csv(tmp, index=False))
    atomic_write(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(paths["md"], table_markdown(table, construction, dev_tol) + "\n")
    paths["pdf"], paths["png"] = plot_wilson(histories, out_dir)
    paths["meta"] = write_meta(out_dir, dict(cfg), wc.seeds, time.perf_counter() - t0,
                               construction=construction)  # fmt: skip
    return paths
