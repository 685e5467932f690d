"""The one registry of methods: what each optimizer is and what it can do.

Every layer reads it: the runner (which class to build, whether it needs per-example
gradients, whether K seeds can run as one batched computation), the step-size search
(where the probe starts on each search profile's grid), the figures (label, colour, order)
and the claims (sign-based or not), and the tests' tables. ``conf/optimizer/<name>.yaml``
holds the method's default hyperparameters for Hydra; this entry holds everything else.

Adding an element-wise optimizer to the whole pipeline: its module (a
``torch.optim.Optimizer`` subclass), one ``register(Method(...))`` call (here, or in the
user's own code before planning), and its ``conf/optimizer/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Where the probe of each search profile starts (largest grid value tried first), for
#: the two families of step-size scales: plain gradient steps and unit-size sign steps.
GRADIENT_GRID_TOP = {"paper": 10.0, "preview": 3.0, "smoke": 0.1}
SIGN_GRID_TOP = {"paper": 1.0, "preview": 0.03, "smoke": 0.01}


@dataclass(frozen=True)
class Method:
    """One optimizer as the pipeline sees it.

    Args:
        name: the key used everywhere (``optimizer=<name>``, folders, tables).
        target: import path of its ``torch.optim.Optimizer`` class; recorded in each
            run's identity, so it is written as users import it.
        label: display name, as the paper writes it.
        color: its colour in every figure.
        family: ``"sign"`` (the update's direction is a sign: Adam, M-SSD) or
            ``"non_sign"`` (M-SGD, M-SVAG); the paper's §6.2 groups results by it.
        grid_top: search profile -> the step size the stability probe starts from.

    What the pipeline may do with the method (per-example gradients, seed-parallel
    groups) is not declared here but read from its optimizer class: ``capabilities``.
    """

    name: str
    target: str
    label: str
    color: str
    family: str
    grid_top: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.family not in ("sign", "non_sign"):
            raise ValueError(f"{self.name}: family must be 'sign' or 'non_sign'")

    @property
    def cls(self) -> type:
        module, _, name = self.target.rpartition(".")
        return getattr(importlib.import_module(module), name)

    @property
    def per_example(self) -> bool:
        """Whether it needs per-example gradients (mini-batch variance estimates, §D)."""
        return capabilities(self.cls).per_example

    @property
    def seed_parallel(self) -> bool:
        """Whether one instance over K stacked networks is K runs (``parallel_seeds``)."""
        return capabilities(self.cls).seed_parallel


@dataclass(frozen=True)
class Capabilities:
    """What the pipeline may do with an optimizer.

    per_example: it needs per-example gradients (the mini-batch variance of paper §D):
        the runner computes them (``per_example.backward_with_variance``) before each step.
    seed_parallel: element-wise with per-tensor state and one step counter, so one
        instance over K stacked networks is K independent runs (``parallel_seeds``).
    """

    per_example: bool
    seed_parallel: bool


def capabilities(optimizer) -> Capabilities:
    """The capabilities of an optimizer class (or instance), the one place they are read.

    An optimizer class declares them as class attributes: ``needs_batch_variance = True``
    (default False) and ``seed_parallel = False`` for an update that is not element-wise
    (e.g. one with a global norm); without that, a method is seed-parallel unless it needs
    per-example gradients, which are taken of one network at a time. torch.optim.Adam
    declares nothing: element-wise, seed-parallel.
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    per_example = bool(getattr(cls, "needs_batch_variance", False))
    return Capabilities(per_example, bool(getattr(cls, "seed_parallel", not per_example)))


_OPTIM = "dissecting_adam.optim."

#: name -> Method, in the order of the figures' legends (the paper's four first).
METHODS: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to redefine an existing name)."""
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered (replace=True)")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get(name: str) -> Method:
    """The registered method ``name``, or a KeyError that lists the registered ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown method {name!r}; registered: {', '.join(METHODS)} "
            "(dissecting_adam.methods.register adds one)"
        ) from None


def names(family: str | None = None) -> list[str]:
    """Registered names in legend order, optionally of one family only."""
    return [m.name for m in METHODS.values() if family is None or m.family == family]


for _m in (
    Method("msgd", _OPTIM + "MSGD", "M-SGD", "#0072B2", "non_sign", GRADIENT_GRID_TOP),
    Method("mssd", _OPTIM + "MSSD", "M-SSD", "#D55E00", "sign", SIGN_GRID_TOP),
    Method("msvag", _OPTIM + "MSVAG", "M-SVAG", "#009E73", "non_sign", GRADIENT_GRID_TOP),
    Method("adam", "torch.optim.Adam", "Adam", "#E69F00", "sign", SIGN_GRID_TOP),
    # SGD and SSD are M-SGD and M-SSD with beta = 0 (conf/optimizer/sgd.yaml, ssd.yaml).
    Method("sgd", _OPTIM + "MSGD", "SGD", "#999999", "non_sign", GRADIENT_GRID_TOP),
    Method("ssd", _OPTIM + "MSSD", "SSD", "#CC79A7", "sign", SIGN_GRID_TOP),
    Method("svag", _OPTIM + "SVAG", "SVAG", "#56B4E9", "non_sign", GRADIENT_GRID_TOP),
    # The variance-adapted sign methods of the paper's §C (colours: Paul Tol's "muted").
    Method("mssd_va", _OPTIM + "MSSDVA", "M-SSD-VA", "#882255", "sign", SIGN_GRID_TOP),
    Method("mssd_erf", _OPTIM + "MSSDErf", "M-SSD-erf", "#332288", "sign", SIGN_GRID_TOP),
    # Mini-batch variance estimates (§D): per-example gradients of one network at a time.
    Method("msvag_mb", _OPTIM + "MSVAGMB", "M-SVAG-mb", "#117733", "non_sign", GRADIENT_GRID_TOP),
    Method("svag_mb", _OPTIM + "SVAGMB", "SVAG-mb", "#44AA99", "non_sign", GRADIENT_GRID_TOP),
):
    register(_m)
