"""Figures of the theory experiments, all with ``style.paper_rc`` and the method colours."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# tueplots asks for Times; where it is missing, matplotlib logs one warning per text element
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter  # noqa: E402

from ..runner.files import atomic_write  # noqa: E402
from ..style import color, label, paper_rc  # noqa: E402

SIGN_BASED = ("sign", "mssd", "adam", "rmsprop", "adagrad")
ROWS = (("well", "rotated"), ("well", "aligned"), ("ill", "rotated"), ("ill", "aligned"))


def save(fig, out_dir: str | Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.pdf", out_dir / f"{stem}.png"]
    for p in paths:  # a killed process never leaves a half-written figure
        atomic_write(p, lambda tmp, fmt=p.suffix[1:]: fig.savefig(tmp, format=fmt))
    plt.close(fig)
    return paths


def plot_fig2(curves: dict, spectra: dict, noises, out_dir, floor: float = 1e-12) -> list[Path]:
    """4 problems (rows) x [spectrum + 3 noise levels] (columns); mean and min-max over seeds.

    ``curves[(spectrum, basis, noise, method)]`` is (n_seeds, steps + 1);
    ``spectra[spectrum]`` the eigenvalues of one seed, shown in the first column.
    """
    noises = list(noises)
    with plt.rc_context(paper_rc(column="full", nrows=4, ncols=len(noises) + 1)):
        fig, axes = plt.subplots(4, len(noises) + 1, squeeze=False)
        for row, (spectrum, basis) in enumerate(ROWS):
            ax = axes[row, 0]
            lam = np.sort(spectra[spectrum])
            ax.plot(np.arange(1, len(lam) + 1), lam, ".", ms=1.5, color="k")
            ax.set_yscale("log")
            ax.set_ylabel(f"{spectrum}, {basis}")
            ax.set_xticks([1, len(lam)])
            if row == 0:
                ax.set_title("eigenvalues")
            for col, nu in enumerate(noises, start=1):
                ax = axes[row, col]
                for method in ("sgd", "ssd"):
                    arr = np.maximum(curves[spectrum, basis, float(nu), method], floor)
                    x = np.arange(arr.shape[1])
                    ax.fill_between(x, arr.min(0), arr.max(0), color=color(method), alpha=0.25,
                                    lw=0)  # fmt: skip
                    ax.plot(x, arr.mean(0), color=color(method), label=label(method))
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(numticks=5))
                ax.yaxis.set_minor_formatter(NullFormatter())
                if row == 0:
                    ax.set_title(rf"$\nu = {nu:g}$")
                if row == 3:
                    ax.set_xlabel("step")
        axes[0, -1].legend(loc="upper right")
        fig.supylabel(r"$L(\theta_t) - L(x^*)$", fontsize="small")
        return save(fig, out_dir, "fig2")


def plot_fig3(eta: np.ndarray, factors: dict[str, np.ndarray], out_dir) -> list[Path]:
    """The variance adaptation factors against the relative standard deviation eta."""
    styles = {
        "sign_optimal": (r"$\mathrm{erf}[(\sqrt{2}\eta)^{-1}]$", "#D55E00", "-"),
        "adam": (r"$(1+\eta^2)^{-1/2}$", "#E69F00", "--"),
        "gradient_optimal": (r"$(1+\eta^2)^{-1}$", "#009E73", "-."),
    }
    with plt.rc_context(paper_rc(column="half")):
        fig, ax = plt.subplots()
        for key, values in factors.items():
            text, c, ls = styles[key]
            ax.plot(eta, values, color=c, ls=ls, label=text)
        ax.set_xlabel(r"relative standard deviation $\eta$")
        ax.set_ylabel("factor")
        ax.set_xlim(eta.min(), eta.max())
        ax.set_ylim(0, 1.02)
        ax.legend()
        return save(fig, out_dir, "fig3")


def plot_wilson(histories: dict[str, dict[str, np.ndarray]], out_dir) -> list[Path]:
    """Training loss, test error and distance from the sign(X^T y) line over steps, per method.

    Sign-based methods are dashed. Step 0 is left out of the deviation panel (theta_0 = 0).
    """
    colour_key = {"gd": "sgd", "sign": "ssd"}  # GD and M-SGD share a colour in style.py
    names = {"adagrad": "Adagrad"}
    with plt.rc_context(paper_rc(column="full", ncols=3)):
        fig, axes = plt.subplots(1, 3)
        for method, h in histories.items():
            kw = dict(color=color(colour_key.get(method, method)),
                      label=names.get(method, label(method)),
                      ls="--" if method in SIGN_BASED else "-")  # fmt: skip
            axes[0].plot(h["step"], np.maximum(h["train_loss"], 1e-32), **kw)
            axes[1].plot(h["step"], 100 * h["test_error"], **kw)
            axes[2].plot(h["step"][1:], np.maximum(h["deviation"][1:], 1e-17), **kw)
        steps = max(h["step"][-1] for h in histories.values())
        for ax in axes:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(0, steps)
            ax.set_xlabel("step")
        axes[0].set(yscale="log", ylabel="training loss")
        axes[1].set(ylabel="test error (%)", ylim=(-2, 100))
        axes[2].set(yscale="log", ylabel="line deviation")
        axes[1].legend(fontsize="x-small", ncols=2, loc="upper right")
        return save(fig, out_dir, "wilson")
