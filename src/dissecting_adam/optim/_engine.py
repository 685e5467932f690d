"""Shared functional core of M-SGD, M-SSD, M-SVAG, SVAG, M-SSD-VA and M-SSD-erf.

Longer than ~300 lines: the six methods' per-tensor and multi-tensor paths, their host and
device scalars and the dispatch share one piece of maths that splitting would scatter.

All six methods keep the same moving averages (paper Eq. 4-5, one beta):

    m~ <- beta m~ + (1 - beta) g,   v~ <- beta v~ + (1 - beta) g^2,
    c  = 1 / (1 - beta^(t+1))       (bias correction: m = c m~, v = c v~).

M-SVAG's and SVAG's factor gamma = m^2 / (m^2 + kappa s) with
s = (v - m^2) / (1 - rho) (kappa = rho for M-SVAG, 1 for SVAG) depends on m~ and v~
only through the ratio q = v~ / (c m~^2) (q >= 1 in exact arithmetic):

    gamma = 1 / d,   d = 1 + lam (q - 1),   lam = kappa / (1 - rho)  (lam = 0 at t = 0).

The ratio is formed without squaring m~ or v~ (m~^2 and c m~^2 leave float32's range
for |g| >= ~1e19 or <= ~1e-19, which made the multi-tensor path return NaN or freeze):

    r = sqrt(v~) sqrt(lam / c) / |m~|,   lam q = r^2,   d = max(r^2 + 1 - lam, 1).

Every operand stays within a factor sqrt(lam / c) of sqrt(v~) or |m~|, so nothing over- or
underflows where gamma m is representable; an r^2 that overflows means gamma < 1e-38.
Rules, no epsilon anywhere:
- d <= 1 (zero variance, round-off, t = 0) gives gamma = 1: the paper's clip to [0, 1];
- |m~| is taken as at least the smallest normal number, so m~ = 0 gives r = inf and
  gamma = 0 where v~ > 0, and gamma = 1 where v~ = 0 too; in both cases the update is 0
  (m~ = 0, sign(m~) = 0, or for SVAG g = 0 since v~ = 0): the paper's 0/0 case does not move;
- sqrt(v~) is taken as at most the square root of the largest finite number: a v~ that
  overflowed to inf (|g| > ~1.8e19 in float32) counts as the largest finite value, a lower
  bound on the variance (so gamma is an upper bound; it is 1 where |m~| is as large).

The variance-adapted sign methods (paper §C; docs/optimizers.md) use the same q and
lam (kappa = rho) and move by lr sign(m~) times a factor in [0, 1]:

    M-SSD-VA:  (1 + rho s / m^2)^(-1/2)   = sqrt(gamma) = 1 / sqrt(d),
    M-SSD-erf: erf(|m| / sqrt(2 rho s))   = erf(1 / sqrt(w)),  w = 2 lam (q - 1),

with w = max(r'^2 - 2 lam, 0), r' = sqrt(v~) sqrt(2 lam / c) / |m~|. Where s <= 0
(s_0 = 0, zero variance, round-off) w = 0 and the factor is erf(inf) = 1; where m~ = 0
the sign is 0 and the coordinate does not move.

Parameters in float16 or bfloat16 are updated in float32 (``compute_dtype``): the
optimizers keep their state in float32, the update is computed in float32 and the new
parameter is rounded to its own dtype once per step (as torch's fused Adam computes).

Three implementations of the same maths, all tested against
``reference.py``: a per-tensor loop (``foreach=False``), the multi-tensor
``torch._foreach_*`` path (the default) and a single-pass fused path (``fused=True``:
a C kernel on the CPU, a Triton kernel on CUDA, ``torch.compile`` elsewhere or on request;
``fused_backend``). The foreach and Triton paths take the per-step scalars as
(lr_eff, k, shift) with k = sqrt(lam / c) (sqrt(2 lam / c) for M-SSD-erf) and
shift = 1 - lam (-2 lam), so that the factor's argument is r^2 + shift.

Step counts kept as device tensors (``capturable=True``): the scalars are computed on the
device from them (``device_coefficients``, in float64 where the device has it, then
rounded to the state dtype like the host's Python floats), so a step reads nothing back to
the host and can be captured in a CUDA graph.
The C kernel evaluates gamma as c m~^2 / (c m~^2 + lam (v~ - c m~^2)); it computes in
float (float32, bfloat16) or double, and in float32 it agrees with the other paths for
gradients 1e-30 .. 1e30 where the variance is representable (tests/test_faults_optim.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._fused import FUSED_BACKENDS, fused_step, resolve_backend
from ._internal import compute_dtype, convert, copy_back, limits, partition, rho, take

__all__ = [
    "METHODS", "USES_V", "FUSED_BACKENDS", "coefficients", "k_shift", "device_coefficients",
    "compute_dtype", "rho", "update",
]  # fmt: skip

METHODS = ("msgd", "mssd", "msvag", "svag", "mssd_va", "mssd_erf")
#: The methods that keep the second moment v~.
USES_V = ("msvag", "svag", "mssd_va", "mssd_erf")


def coefficients(method: str, lr: float, beta: float, t: int) -> tuple[float, float, float]:
    """Per-step scalars (lr_eff, c, lam) of the update at step t (0-based)."""
    c = 1.0 / (1.0 - beta ** (t + 1)) if beta > 0.0 else 1.0
    lam = 0.0
    if method in USES_V and t > 0:
        r = rho(beta, t)
        lam = (1.0 if method == "svag" else r) / (1.0 - r)
    lr_eff = lr * c if method in ("msgd", "msvag") else lr
    return lr_eff, c, lam


def k_shift(method: str, c: float, lam: float) -> tuple[float, float]:
    """(k, shift): r = sqrt(v~) k / |m~| and the factor's argument r^2 + shift."""
    if method == "mssd_erf":
        return math.sqrt(2.0 * lam / c), -2.0 * lam
    return math.sqrt(lam / c), 1.0 - lam


#: Rows of ``device_coefficients``' table.
ROW_LR, ROW_C, ROW_LAM, ROW_K, ROW_SHIFT, ROW_BETA = range(6)


def device_coefficients(
    method: str, lr: float, beta: float, steps: list[Tensor], dtype: torch.dtype
) -> Tensor:
    """The (6, n) table (lr_eff, c, lam, k, shift, beta) of ``steps``, on their device.

    The host's ``coefficients`` and ``k_shift`` written as tensor ops (no host sync), in
    float64 where the device has it, then rounded to ``dtype`` (the state dtype).
    """
    device = steps[0].device
    wide = torch.float32 if device.type == "mps" else torch.float64
    t = torch.stack(steps).to(wide)
    ones = torch.ones_like(t)
    bt = torch.pow(beta, t + 1.0) if beta > 0.0 else torch.zeros_like(t)
    c = 1.0 / (1.0 - bt)
    lam = torch.zeros_like(t)
    if method in USES_V:
        r = (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt))
        kappa = ones if method == "svag" else r
        lam = torch.where(t > 0, kappa / (1.0 - r), 0.0)  # rho(beta, 0) = 1: lam = 0
    lr_eff = lr * c if method in ("msgd", "msvag") else lr * ones
    two = 2.0 if method == "mssd_erf" else 1.0
    k = torch.sqrt(two * lam / c)
    shift = -2.0 * lam if method == "mssd_erf" else 1.0 - lam
    return torch.stack([lr_eff, c, lam, k, shift, beta * ones]).to(dtype)


# --------------------------------------------------------------------------- per tensor


def _single_tensor(
    method: str, p: Tensor, g: Tensor, m: Tensor | None, v: Tensor | None,
    beta: float, lr_eff: float | Tensor, c: float | Tensor, lam: float | Tensor,
) -> None:  # fmt: skip
    """One tensor's update with plain torch ops (the foreach=False path; compiled when fused).

    16-bit tensors are computed in float32 (``compute_dtype``) and written back rounded;
    tensors already in that dtype are updated in place (``.to`` returns them unchanged).
    The scalars may be 0-dim tensors (capturable steps, the compiled path).
    """
    acc = compute_dtype(p.dtype)
    pf, gf = p.to(acc), g.to(acc)
    mf = None if m is None else m.to(acc)
    if mf is None:  # beta = 0: the average is the gradient itself
        mt = gf
    else:
        mf.mul_(beta).add_(gf, alpha=1.0 - beta)
        mt = mf
    if method == "msgd":
        pf.sub_(mt * lr_eff)
    elif method == "mssd":
        pf.sub_(torch.sign(mt) * lr_eff)
    else:
        assert v is not None
        vf = v.to(acc)
        vf.mul_(beta).addcmul_(gf, gf, value=1.0 - beta)
        tiny, sqrt_max = limits(acc)
        root_v = torch.sqrt(vf).clamp_max(sqrt_max)  # v~ = inf: the largest finite value
        abs_m = mt.abs().clamp_min(tiny)  # m~ = 0: r = inf (or 0 where v~ = 0 too)
        if method == "mssd_erf":
            r = root_v * (2.0 * lam / c) ** 0.5 / abs_m
            w = (r * r - 2.0 * lam).clamp_min(0.0)  # 2 lam (q - 1); s <= 0: w = 0
            pf.sub_(torch.sign(mt) * torch.erf(torch.rsqrt(w)) * lr_eff)  # erf(inf) = 1
        else:
            r = root_v * (lam / c) ** 0.5 / abs_m
            d = (r * r + (1.0 - lam)).clamp_min(1.0)  # 1 / gamma, gamma clipped to [0, 1]
            if method == "mssd_va":
                pf.sub_(torch.sign(mt) / torch.sqrt(d) * lr_eff)
            else:
                pf.sub_((mt if method == "msvag" else gf) / d * lr_eff)
        if v.dtype != acc:
            v.copy_(vf)
    if m is not None and m.dtype != acc:
        m.copy_(mf)
    if p.dtype != acc:
        p.copy_(pf)


# --------------------------------------------------------------------------- multi-tensor

Scalar = float | list[Tensor]  # one Python float, or one 0-dim device tensor per tensor


def _axpy_(p: list[Tensor], x: list[Tensor], a: Scalar) -> None:
    """p += a x for one float ``a`` or one 0-dim tensor per tensor."""
    if isinstance(a, list):
        torch._foreach_add_(p, torch._foreach_mul(x, a))
    else:
        torch._foreach_add_(p, x, alpha=a)


def _foreach(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, beta: float, lr_eff: Scalar, k: Scalar, shift: Scalar,
) -> None:  # fmt: skip
    """The multi-tensor path for tensors that share device and dtype (and step, for floats)."""
    acc = compute_dtype(p[0].dtype)
    if p[0].dtype != acc:  # 16-bit parameters: the maths on float32 copies, then round
        pf, gf, mf, vf = (convert(xs, acc) for xs in (p, g, m, v))
        _foreach(method, pf, gf, mf, vf, beta, lr_eff, k, shift)
        for dst, src in ((p, pf), (m, mf), (v, vf)):
            copy_back(dst, src)
        return
    neg_lr = list(torch._foreach_neg(lr_eff)) if isinstance(lr_eff, list) else -lr_eff
    if m is None:
        mt = g
    else:
        torch._foreach_lerp_(m, g, 1.0 - beta)  # beta m + (1 - beta) g in one pass
        mt = m
    if method == "msgd":
        _axpy_(p, mt, neg_lr)
        return
    if method == "mssd":
        _axpy_(p, torch._foreach_sign(mt), neg_lr)
        return
    assert v is not None
    torch._foreach_mul_(v, beta)
    torch._foreach_addcmul_(v, g, g, value=1.0 - beta)
    tiny, sqrt_max = limits(acc)
    r = torch._foreach_sqrt(v)
    torch._foreach_clamp_max_(r, sqrt_max)  # v~ = inf: the largest finite value
    abs_m = torch._foreach_abs(mt)
    torch._foreach_clamp_min_(abs_m, tiny)  # m~ = 0: r = inf (or 0 where v~ = 0 too)
    torch._foreach_mul_(r, k)
    torch._foreach_div_(r, abs_m)
    torch._foreach_mul_(r, r)  # lam q (2 lam q for M-SSD-erf)
    torch._foreach_add_(r, shift)
    if method == "mssd_erf":
        torch._foreach_clamp_min_(r, 0.0)  # w = 2 lam (q - 1); s <= 0: w = +0
        torch._foreach_rsqrt_(r)  # |m| / sqrt(2 rho s), inf where w = 0
        torch._foreach_erf_(r)  # erf(inf) = 1
        if isinstance(neg_lr, list):
            torch._foreach_mul_(r, torch._foreach_sign(mt))
            _axpy_(p, r, neg_lr)
        else:
            torch._foreach_addcmul_(p, torch._foreach_sign(mt), r, value=neg_lr)
        return
    torch._foreach_clamp_min_(r, 1.0)  # d = 1 / gamma, gamma clipped to [0, 1]
    if method == "mssd_va":
        torch._foreach_sqrt_(r)
        num = torch._foreach_sign(mt)
    else:
        num = mt if method == "msvag" else g
    if isinstance(neg_lr, list):
        _axpy_(p, torch._foreach_div(num, r), neg_lr)
    else:
        torch._foreach_addcdiv_(p, num, r, value=neg_lr)


# --------------------------------------------------------------------------- dispatch

_CPU_BUCKET = 1 << 20  # values per multi-tensor call on the CPU


def _buckets(tensors: list[Tensor], limit: int) -> list[list[int] | None]:
    """Consecutive index runs holding at most ``limit`` values (or one larger tensor)."""
    out: list[list[int]] = [[]]
    size = 0
    for i, numel in enumerate(map(Tensor.numel, tensors)):
        if out[-1] and size + numel > limit:
            out.append([])
            size = 0
        out[-1].append(i)
        size += numel
    return [None] if len(out) == 1 else out


def _rows(table: Tensor, rows: tuple[int, ...]) -> list[list[Tensor]]:
    """Per-tensor 0-dim scalars of ``device_coefficients``' ``rows`` (views: no copies)."""
    return [list(table[row].unbind()) for row in rows]


def update(
    method: str,
    params: list[Tensor],
    grads: list[Tensor],
    m: list[Tensor] | None,
    v: list[Tensor] | None,
    steps: list[int] | list[Tensor],
    *,
    lr: float,
    beta: float,
    foreach: bool | None = None,
    fused: bool | None = None,
    fused_backend: str | None = None,
) -> None:
    """Apply one step of ``method`` in place to ``params`` and the averages ``m``, ``v``.

    Args:
        method: one of ``METHODS``.
        params, grads: parameters and their gradients.
        m, v: the un-corrected averages m~ and v~ (``m`` is None when beta = 0 for
            M-SGD and M-SSD; ``v`` is None for them always and needed by the others).
            For 16-bit ``params`` they should be float32 (``compute_dtype``); 16-bit
            averages are accepted too and computed in float32, then rounded back.
        steps: for each parameter, the number of steps it has taken so far (t): ints, or
            0-dim float tensors on the parameters' devices (capturable: not read on the
            host; the caller increments them).
        lr, beta: step size and averaging constant.
        foreach: multi-tensor path (default) or a per-tensor loop (False).
        fused: single-pass fused path (C kernel on the CPU, Triton on CUDA).
        fused_backend: force ``"native"``, ``"triton"`` or ``"compile"`` for the fused path.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    n = len(params)
    if n == 0:
        return
    if not (len(grads) == len(steps) == n):
        raise ValueError("params, grads and steps must have the same length")
    if fused and foreach:
        raise ValueError("foreach and fused cannot both be True")
    uses_v = method in USES_V
    if m is None and (uses_v or beta > 0.0):
        raise ValueError(f"{method} with beta={beta} needs the first-moment buffers m")
    if uses_v and v is None:
        raise ValueError(f"{method} needs the second-moment buffers v")
    if fused:
        fused_backend = resolve_backend(fused_backend, params[0].device)
        if fused_backend == "native" and not all(isinstance(t, int) for t in steps):
            steps = [t if isinstance(t, int) else int(t) for t in steps]  # CPU: no device sync
    coef = {t: coefficients(method, lr, beta, t) for t in set(steps) if isinstance(t, int)}

    def scalars(idx: list[int] | None, dtype: torch.dtype) -> Tensor:
        return device_coefficients(method, lr, beta, take(steps, idx), compute_dtype(dtype))

    if not fused and foreach is False:
        loose, groups = list(range(n)), {}
    else:
        loose, groups = partition(params, grads, m, v, steps, fused)
    for i in loose:
        t = steps[i]
        c3 = (
            coef[t]
            if isinstance(t, int)
            else [x[0] for x in _rows(scalars([i], params[i].dtype), (ROW_LR, ROW_C, ROW_LAM))]
        )
        _single_tensor(
            method, params[i], grads[i], None if m is None else m[i],
            None if v is None else v[i], beta, *c3,
        )  # fmt: skip
    for (_, dtype, t), idx in groups.items():
        gp, gg, gm, gv = (take(xs, idx) for xs in (params, grads, m, v))
        table = None if t is not None else scalars(idx, dtype)
        if fused:
            c3 = coef[t] if table is None else table
            fused_step(method, gp, gg, gm, gv, beta, c3, fused_backend)
            continue
        if table is None:
            lr_eff, c, lam = coef[t]
            three: list = [lr_eff, *k_shift(method, c, lam)]
        else:
            three = _rows(table, (ROW_LR, ROW_K, ROW_SHIFT))
        if gp[0].device.type == "cpu":
            # On the CPU the multi-tensor ops are loops over tensors; running them on
            # buckets of ~1M values keeps the temporaries small and in cache (about 2x
            # faster for M-SVAG on WRN-40-4's shapes than one bucket).
            for b in _buckets(gp, _CPU_BUCKET):
                sc = [take(x, b) if isinstance(x, list) else x for x in three]
                _foreach(method, *(take(xs, b) for xs in (gp, gg, gm, gv)), beta, *sc)
        else:
            _foreach(method, gp, gg, gm, gv, beta, *three)
