"""The optimizer tests' one table, read from the method registry (as torch's optim_db).

A method registered in ``dissecting_adam.methods`` whose class uses the shared engine (a
``MomentOptimizer``) is tested for its loop, multi-tensor and fused paths against the
literal reference; one class registered under several names (M-SGD as ``sgd`` with beta 0)
is tested once, under its first name.
"""

from __future__ import annotations

from dissecting_adam import methods
from dissecting_adam.optim._base import MomentOptimizer
from dissecting_adam.optim.msvag_mb import MiniBatchVariance


def _first_name_per_class(base: type) -> dict[str, type]:
    out: dict[str, type] = {}
    for method in methods.METHODS.values():
        cls = method.cls
        if isinstance(cls, type) and issubclass(cls, base) and cls not in out.values():
            out[method.name] = cls
    return out


#: name -> class of the methods built on the shared engine (loop, foreach, fused paths).
ENGINE = _first_name_per_class(MomentOptimizer)
#: name -> class of the methods with mini-batch variance estimates (§D).
MINIBATCH = _first_name_per_class(MiniBatchVariance)
#: The engine methods whose update is a sign times a factor.
SIGN = tuple(name for name in ENGINE if methods.get(name).family == "sign")
#: How each implementation is asked for.
IMPLS = {
    "loop": {"foreach": False},
    "foreach": {},
    "fused": {"fused": True},
    # Step counts on the device, scalars computed there (capturable=True), per tensor and
    # multi-tensor; the Triton kernel's capturable path: tests/test_triton_kernels.py.
    "capturable_loop": {"foreach": False, "capturable": True},
    "capturable": {"capturable": True},
}
