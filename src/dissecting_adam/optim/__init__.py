"""Optimizers of "Dissecting Adam" (Balles & Hennig, ICML 2018).

``MSGD``, ``MSSD``, ``MSVAG`` and ``SVAG`` are ``torch.optim.Optimizer``
subclasses, as are the variance-adapted sign methods ``MSSDVA`` and ``MSSDErf``
(paper §C) and M-SVAG / SVAG with mini-batch variance estimates, ``MSVAGMB``
and ``SVAGMB`` (§D; they need ``per_example.backward_with_variance``). SGD and SSD are
``MSGD(beta=0)`` and ``MSSD(beta=0)``; the Adam arm of the paper is
``torch.optim.Adam`` with its defaults. The functional cores (``msgd`` ...)
update lists of tensors in place; ``reference`` holds the literal, slow
implementations the fast ones are tested against. What the pipeline needs to know of
each method (label, colour, family, grid start, capabilities) is in
``dissecting_adam.methods``.
"""

from ._engine import rho
from .msgd import MSGD, msgd
from .mssd import MSSD, mssd
from .mssd_va import MSSDVA, MSSDErf, mssd_erf, mssd_va
from .msvag import MSVAG, msvag
from .msvag_mb import MSVAGMB, SVAGMB, msvag_mb, svag_mb
from .svag import SVAG, svag

__all__ = [
    "MSGD",
    "MSSD",
    "MSVAG",
    "SVAG",
    "MSSDVA",
    "MSSDErf",
    "MSVAGMB",
    "SVAGMB",
    "msgd",
    "mssd",
    "msvag",
    "svag",
    "mssd_va",
    "mssd_erf",
    "msvag_mb",
    "svag_mb",
    "rho",
]
