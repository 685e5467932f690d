"""One look for every figure of the project: a fixed colour and label per method."""

from __future__ import annotations

from .methods import METHODS

#: Colours and labels of the names that only the theory figures use (Fig. 2, Fig. 3,
#: Wilson et al.); the optimizers' own live in their registry entries (``methods``).
THEORY_COLORS = {"gd": "#0072B2", "sign": "#D55E00", "rmsprop": "#F0E442"}
THEORY_LABELS = {"gd": "GD", "sign": "Sign descent", "rmsprop": "RMSProp"}


def color(method: str) -> str:
    """The colour of ``method`` (registry first, then theory names); unknown ones: black."""
    if method in METHODS:
        return METHODS[method].color
    return THEORY_COLORS.get(method, "#000000")


def label(method: str) -> str:
    if method in METHODS:
        return METHODS[method].label
    return THEORY_LABELS.get(method, method)


def paper_rc(column: str = "full", nrows: int = 1, ncols: int = 1) -> dict:
    """matplotlib rcParams for an ICML figure (tueplots), usable as ``plt.rc_context(...)``."""
    from tueplots import bundles

    rc = bundles.icml2022(column=column, nrows=nrows, ncols=ncols, usetex=False)
    # Times is often not installed: fall back to matplotlib's own serif font quietly.
    rc["font.serif"] = [*rc.get("font.serif", []), "DejaVu Serif"]
    rc["figure.dpi"] = 200
    return rc
