"""One look for every figure of the project: a fixed colour and label per method."""

from __future__ import annotations

#: Colour of each method, the same in every figure (colour-blind safe: Okabe-Ito, and
#: Paul Tol's "muted" wine and indigo for the variance-adapted sign methods).
METHOD_COLORS = {
    "sgd": "#999999",
    "msgd": "#0072B2",
    "ssd": "#CC79A7",
    "mssd": "#D55E00",
    "msvag": "#009E73",
    "svag": "#56B4E9",
    "mssd_va": "#882255",
    "mssd_erf": "#332288",
    "msvag_mb": "#117733",  # M-SVAG's family, darker: Paul Tol's green
    "svag_mb": "#44AA99",
    "adam": "#E69F00",
    "rmsprop": "#F0E442",
    "gd": "#0072B2",
    "sign": "#D55E00",
}

#: Display name of each method, as the paper writes it.
METHOD_LABELS = {
    "sgd": "SGD",
    "msgd": "M-SGD",
    "ssd": "SSD",
    "mssd": "M-SSD",
    "msvag": "M-SVAG",
    "svag": "SVAG",
    "mssd_va": "M-SSD-VA",
    "mssd_erf": "M-SSD-erf",
    "msvag_mb": "M-SVAG-mb",
    "svag_mb": "SVAG-mb",
    "adam": "Adam",
    "rmsprop": "RMSProp",
    "gd": "GD",
    "sign": "Sign descent",
}


def color(method: str) -> str:
    """The colour of ``method`` (a key of METHOD_COLORS); unknown methods get black."""
    return METHOD_COLORS.get(method, "#000000")


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def paper_rc(column: str = "full", nrows: int = 1, ncols: int = 1) -> dict:
    """matplotlib rcParams for an ICML figure (tueplots), usable as ``plt.rc_context(...)``."""
    from tueplots import bundles

    rc = bundles.icml2022(column=column, nrows=nrows, ncols=ncols, usetex=False)
    # Times is often not installed: fall back to matplotlib's own serif font quietly.
    rc["font.serif"] = [*rc.get("font.serif", []), "DejaVu Serif"]
    rc["figure.dpi"] = 200
    return rc
