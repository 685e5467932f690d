"""Shared functional core of M-SGD, M-SSD, M-SVAG, SVAG, M-SSD-VA and M-SSD-erf.

Longer than ~300 lines: the six methods' per-tensor, multi-tensor and fused dispatch share
one set of helpers, and splitting them would scatter one piece of maths over files.

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
``torch._foreach_*`` path (the default) and a single-pass fused path
(``fused=True``: a C kernel on the CPU, ``torch.compile`` on other devices).
The C kernel evaluates gamma as c m~^2 / (c m~^2 + lam (v~ - c m~^2)); it computes in
float (float32, bfloat16) or double, and in float32 it agrees with the other paths for
gradients 1e-30 .. 1e30 where the variance is representable (tests/test_faults_optim.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor

METHODS = ("msgd", "mssd", "msvag", "svag", "mssd_va", "mssd_erf")
_USES_V = ("msvag", "svag", "mssd_va", "mssd_erf")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the optimizer state and of the update's maths for parameters of ``dtype``.

    float32 for float16 and bfloat16 parameters (their 5- and 8-bit exponents cannot hold
    g^2 for small gradients, nor their 11- and 8-bit mantissas the variance v - m^2),
    the parameter's own dtype otherwise.
    """
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _limits(dtype: torch.dtype) -> tuple[float, float]:
    """(smallest normal number, square root of the largest finite number) of ``dtype``."""
    info = torch.finfo(dtype)
    return info.tiny, math.sqrt(info.max)


def rho(beta: float, t: int) -> float:
    """rho(beta, t) of paper Eq. 21: the variance-reduction factor of the bias-corrected average.

    rho = (1 - beta)(1 + beta^(t+1)) / ((1 + beta)(1 - beta^(t+1))); it is 1 at
    t = 0 (one sample) and tends to (1 - beta) / (1 + beta).
    """
    if beta == 0.0:
        return 1.0
    bt = beta ** (t + 1)
    return (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt))


def coefficients(method: str, lr: float, beta: float, t: int) -> tuple[float, float, float]:
    """Per-step scalars (lr_eff, c, lam) of the update at step t (0-based)."""
    c = 1.0 / (1.0 - beta ** (t + 1)) if beta > 0.0 else 1.0
    lam = 0.0
    if method in _USES_V and t > 0:
        r = rho(beta, t)
        lam = (1.0 if method == "svag" else r) / (1.0 - r)
    lr_eff = lr * c if method in ("msgd", "msvag") else lr
    return lr_eff, c, lam


# --------------------------------------------------------------------------- per tensor


def _single_tensor(
    method: str, p: Tensor, g: Tensor, m: Tensor | None, v: Tensor | None,
    beta: float, lr_eff: float | Tensor, c: float | Tensor, lam: float | Tensor,
) -> None:  # fmt: skip
    """One tensor's update with plain torch ops (the foreach=False path; compiled when fused).

    16-bit tensors are computed in float32 (``compute_dtype``) and written back rounded;
    tensors already in that dtype are updated in place (``.to`` returns them unchanged).
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
        tiny, sqrt_max = _limits(acc)
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


def _foreach(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, beta: float, lr_eff: float, c: float, lam: float,
) -> None:  # fmt: skip
    """The multi-tensor path for tensors that share device, dtype and step."""
    acc = compute_dtype(p[0].dtype)
    if p[0].dtype != acc:  # 16-bit parameters: the maths on float32 copies, then round
        pf, gf, mf, vf = (_to(xs, acc) for xs in (p, g, m, v))
        _foreach(method, pf, gf, mf, vf, beta, lr_eff, c, lam)
        for dst, src in ((p, pf), (m, mf), (v, vf)):
            _copy_back(dst, src)
        return
    if m is None:
        mt = g
    else:
        torch._foreach_lerp_(m, g, 1.0 - beta)  # beta m + (1 - beta) g in one pass
        mt = m
    if method == "msgd":
        torch._foreach_add_(p, mt, alpha=-lr_eff)
        return
    if method == "mssd":
        torch._foreach_add_(p, torch._foreach_sign(mt), alpha=-lr_eff)
        return
    assert v is not None
    torch._foreach_mul_(v, beta)
    torch._foreach_addcmul_(v, g, g, value=1.0 - beta)
    tiny, sqrt_max = _limits(acc)
    erf = method == "mssd_erf"
    r = torch._foreach_sqrt(v)
    torch._foreach_clamp_max_(r, sqrt_max)  # v~ = inf: the largest finite value
    abs_m = torch._foreach_abs(mt)
    torch._foreach_clamp_min_(abs_m, tiny)  # m~ = 0: r = inf (or 0 where v~ = 0 too)
    torch._foreach_mul_(r, math.sqrt((2.0 * lam if erf else lam) / c))
    torch._foreach_div_(r, abs_m)
    torch._foreach_mul_(r, r)  # lam q (2 lam q for M-SSD-erf)
    if erf:
        torch._foreach_sub_(r, 2.0 * lam)
        torch._foreach_clamp_min_(r, 0.0)  # w = 2 lam (q - 1); s <= 0: w = +0
        torch._foreach_rsqrt_(r)  # |m| / sqrt(2 rho s), inf where w = 0
        torch._foreach_erf_(r)  # erf(inf) = 1
        torch._foreach_addcmul_(p, torch._foreach_sign(mt), r, value=-lr_eff)
        return
    torch._foreach_add_(r, 1.0 - lam)
    torch._foreach_clamp_min_(r, 1.0)  # d = 1 / gamma, gamma clipped to [0, 1]
    if method == "mssd_va":
        torch._foreach_sqrt_(r)
        torch._foreach_addcdiv_(p, torch._foreach_sign(mt), r, value=-lr_eff)
        return
    torch._foreach_addcdiv_(p, mt if method == "msvag" else g, r, value=-lr_eff)


def _to(xs: list[Tensor] | None, dtype: torch.dtype) -> list[Tensor] | None:
    """``xs`` in ``dtype``; tensors already in it are the same objects, not copies."""
    return None if xs is None else [x.to(dtype) for x in xs]


def _copy_back(dst: list[Tensor] | None, src: list[Tensor] | None) -> None:
    """Write the converted copies in ``src`` back into ``dst`` (rounding to dst's dtype)."""
    if dst is None or src is None:
        return
    pairs = [(d, s) for d, s in zip(dst, src, strict=True) if d is not s]
    if pairs:
        torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])


# --------------------------------------------------------------------------- fused

_compiled: dict[str, Callable] = {}


def _compiled_group(method: str) -> Callable:
    """A torch.compile'd single-pass update over a list of tensors (non-CPU fused path)."""
    if method not in _compiled:

        def group_update(p, g, m, v, beta, lr_eff, c, lam):
            for i in range(len(p)):
                _single_tensor(
                    method, p[i], g[i], None if m is None else m[i], None if v is None else v[i],
                    beta, lr_eff, c, lam,
                )  # fmt: skip

        _compiled[method] = torch.compile(group_update, fullgraph=True, dynamic=False)
    return _compiled[method]


def _fused(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, beta: float, lr_eff: float, c: float, lam: float,
    backend: str | None,
) -> None:  # fmt: skip
    """Single-pass update of contiguous tensors that share device, dtype and step."""
    device = p[0].device
    if backend is None:
        backend = "native" if device.type == "cpu" else "compile"
    if backend == "native":
        from . import _native

        if device.type != "cpu":
            raise ValueError("the native fused kernel runs on the CPU only; use backend='compile'")
        dtype = p[0].dtype
        if dtype in _native.DTYPE_CODES and all(
            xs is None or xs[0].dtype == dtype for xs in (m, v)
        ):  # one dtype throughout (bfloat16 state only from callers of the functional API)
            _native.moments_step(method, p, g, m, v, lr_eff, c, lam, beta)
            return
        # 16-bit parameters with float32 state (the optimizers' layout), or float16: the
        # float32 kernel on float32 copies, each parameter rounded back once.
        acc = compute_dtype(dtype)
        pf, gf, mf, vf = (_to(xs, acc) for xs in (p, g, m, v))
        _native.moments_step(method, pf, gf, mf, vf, lr_eff, c, lam, beta)
        for dst, src in ((p, pf), (m, mf), (v, vf)):
            _copy_back(dst, src)
        return
    if backend != "compile":
        raise ValueError(f"unknown fused backend {backend!r}; use 'native' or 'compile'")
    # Step-dependent scalars enter as 0-dim tensors so that the graph is not recompiled
    # every step.
    sdtype = torch.float64 if p[0].dtype == torch.float64 else torch.float32
    scalars = torch.tensor([lr_eff, c, lam], dtype=sdtype, device=device).unbind()
    _compiled_group(method)(p, g, m, v, beta, *scalars)


# --------------------------------------------------------------------------- dispatch

_is_contiguous = Tensor.is_contiguous
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


def _take(xs: list[Tensor] | None, idx: list[int] | None) -> list[Tensor] | None:
    return xs if xs is None or idx is None else [xs[i] for i in idx]


def _partition(params, grads, m, v, steps, fused):
    """Split tensors into multi-tensor groups (device, dtype, step) and loose ones.

    A group's index list is None when it holds every tensor (the common case, which
    then costs no list copies). The fused kernels also need flat memory: tensors that
    are not contiguous (channels_last, views) are updated one at a time.
    """
    flat = not fused or all(
        all(map(_is_contiguous, xs)) for xs in (params, grads, m or (), v or ())
    )  # fmt: skip
    keys = {(p.device, p.dtype) for p in params}
    if flat and len(keys) == 1 and len(set(steps)) == 1:
        return [], {(*keys.pop(), steps[0]): None}
    loose: list[int] = []
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if not flat and not (
            p.is_contiguous()
            and grads[i].is_contiguous()
            and (m is None or m[i].is_contiguous())
            and (v is None or v[i].is_contiguous())
        ):
            loose.append(i)
        else:
            groups[(p.device, p.dtype, steps[i])].append(i)
    return loose, groups


def update(
    method: str,
    params: list[Tensor],
    grads: list[Tensor],
    m: list[Tensor] | None,
    v: list[Tensor] | None,
    steps: list[int],
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
        steps: for each parameter, the number of steps it has taken so far (t).
        lr, beta: step size and averaging constant.
        foreach: multi-tensor path (default) or a per-tensor loop (False).
        fused: single-pass fused path (C kernel on the CPU, torch.compile elsewhere).
        fused_backend: force ``"native"`` or ``"compile"`` for the fused path.
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
    uses_v = method in _USES_V
    if m is None and (uses_v or beta > 0.0):
        raise ValueError(f"{method} with beta={beta} needs the first-moment buffers m")
    if uses_v and v is None:
        raise ValueError(f"{method} needs the second-moment buffers v")
    coef = {t: coefficients(method, lr, beta, t) for t in set(steps)}

    if not fused and foreach is False:
        loose, groups = list(range(n)), {}
    else:
        loose, groups = _partition(params, grads, m, v, steps, fused)
    for i in loose:
        _single_tensor(
            method, params[i], grads[i], None if m is None else m[i],
            None if v is None else v[i], beta, *coef[steps[i]],
        )  # fmt: skip
    for (_, _, t), idx in groups.items():
        gp, gg, gm, gv = (_take(xs, idx) for xs in (params, grads, m, v))
        if fused:
            _fused(method, gp, gg, gm, gv, beta, *coef[t], fused_backend)
        elif gp[0].device.type == "cpu":
            # On the CPU the multi-tensor ops are loops over tensors; running them on
            # buckets of ~1M values keeps the temporaries small and in cache (about 2x
            # faster for M-SVAG on WRN-40-4's shapes than one bucket).
            for b in _buckets(gp, _CPU_BUCKET):
                _foreach(method, *(_take(xs, b) for xs in (gp, gg, gm, gv)), beta, *coef[t])
        else:
            _foreach(method, gp, gg, gm, gv, beta, *coef[t])
