"""The fused (single-pass) path of ``_engine``: the C kernel, the Triton kernel, torch.compile.

``fused=True`` picks a backend per device (``resolve_backend``): the C kernel of
``kernels/moments.c`` on the CPU (``_native``), the Triton kernel of ``_triton`` on CUDA
where triton imports (else torch.compile, with the reason logged once), torch.compile
elsewhere. ``fused_backend`` forces one; the Triton kernel also runs on CPU tensors under
``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import Tensor

from ._internal import compute_dtype, convert, copy_back

FUSED_BACKENDS = ("native", "triton", "compile")
_log = logging.getLogger(__name__)

_compiled: dict[str, Callable] = {}
_triton_why_not: list[str] = []  # [] untried, [""] available, [reason] unavailable


def _compiled_group(method: str) -> Callable:
    """A torch.compile'd single-pass update over a list of tensors (the 'compile' backend)."""
    if method not in _compiled:
        from ._engine import _single_tensor

        def group_update(p, g, m, v, beta, lr_eff, c, lam):
            for i in range(len(p)):
                _single_tensor(
                    method, p[i], g[i], None if m is None else m[i], None if v is None else v[i],
                    beta, lr_eff[i], c[i], lam[i],
                )  # fmt: skip

        _compiled[method] = torch.compile(group_update, fullgraph=True, dynamic=False)
    return _compiled[method]


def triton_unavailable() -> str:
    """Why the Triton backend cannot run here ("" when it can)."""
    if not _triton_why_not:
        try:
            from . import _triton  # noqa: F401  (imports triton)
        except Exception as err:  # ImportError, or a triton that fails on import
            _triton_why_not.append(f"triton does not import ({type(err).__name__}: {err})")
        else:
            _triton_why_not.append("")
    return _triton_why_not[0]


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The fused backend for tensors on ``device``: ``backend``, or the device's default.

    CPU: the C kernel; CUDA: the Triton kernel where triton imports, else torch.compile
    (with the reason logged once); other devices: torch.compile.
    """
    if backend is not None:
        if backend not in FUSED_BACKENDS:
            raise ValueError(f"unknown fused backend {backend!r}; use one of {FUSED_BACKENDS}")
        return backend
    if device.type == "cpu":
        return "native"
    if device.type == "cuda":
        why = triton_unavailable()
        if not why:
            return "triton"
        if len(_triton_why_not) == 1:
            _triton_why_not.append("logged")
            _log.warning("fused=True on CUDA uses torch.compile, not Triton: %s", why)
    return "compile"


def fused_step(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, beta: float, coef: tuple[float, float, float] | Tensor,
    backend: str,
) -> None:  # fmt: skip
    """Single-pass update of contiguous tensors that share device and dtype.

    ``coef`` is (lr_eff, c, lam) of a shared step, or ``device_coefficients``' table.
    """
    from ._engine import ROW_C, ROW_LAM, ROW_LR, k_shift

    device = p[0].device
    if backend == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "the triton fused kernel runs on CUDA (or on the CPU under TRITON_INTERPRET=1); "
                "use fused_backend='native' on the CPU"
            )
        from . import _triton

        if isinstance(coef, Tensor):
            _triton.step(method, p, g, m, v, table=coef)
        else:
            _triton.step(method, p, g, m, v, scalars=(coef[0], *k_shift(method, *coef[1:]), beta))
        return
    if backend == "native":
        from . import _native

        if device.type != "cpu":
            raise ValueError("the native fused kernel runs on the CPU only; use backend='compile'")
        assert not isinstance(coef, Tensor)  # update() reads CPU step tensors as ints
        dtype = p[0].dtype
        if dtype in _native.DTYPE_CODES and all(
            xs is None or xs[0].dtype == dtype for xs in (m, v)
        ):  # one dtype throughout (bfloat16 state only from callers of the functional API)
            _native.moments_step(method, p, g, m, v, *coef, beta)
            return
        # 16-bit parameters with float32 state (the optimizers' layout), or float16: the
        # float32 kernel on float32 copies, each parameter rounded back once.
        acc = compute_dtype(dtype)
        pf, gf, mf, vf = (convert(xs, acc) for xs in (p, g, m, v))
        _native.moments_step(method, pf, gf, mf, vf, *coef, beta)
        for dst, src in ((p, pf), (m, mf), (v, vf)):
            copy_back(dst, src)
        return
    # Step-dependent scalars enter as 0-dim tensors so that the graph is not recompiled
    # every step.
    if isinstance(coef, Tensor):
        lr_eff, c, lam = (list(coef[row].unbind()) for row in (ROW_LR, ROW_C, ROW_LAM))
    else:
        sdtype = torch.float64 if p[0].dtype == torch.float64 else torch.float32
        shared = torch.tensor(coef, dtype=sdtype, device=device).unbind()
        lr_eff, c, lam = ([x] * len(p) for x in shared)
    _compiled_group(method)(p, g, m, v, beta, lr_eff, c, lam)
