"""Shared functional core of M-SGD, M-SSD, M-SVAG, SVAG, M-SSD-VA and M-SSD-erf.

Longer than ~300 lines: the six methods' per-tensor, multi-tensor and fused dispatch share
one set of helpers, and splitting them would scatter one piece of maths over files.

All six methods keep the same moving averages (paper Eq. 4-5, one beta):

    m~ <- beta m~ + (1 - beta) g,   v~ <- beta v~ + (1 - beta) g^2,
    c  = 1 / (1 - beta^(t+1))       (bias correction: m = c m~, v = c v~).

M-SVAG's and SVAG's factor gamma = m^2 / (m^2 + kappa s) with
s = (v - m^2) / (1 - rho) (kappa = rho for M-SVAG, 1 for SVAG) is evaluated in
the algebraically equal form that needs no extra buffer:

    a = c m~^2,   den = a + lam (v~ - a),   gamma = a / den,
    lam = kappa / (1 - rho)  (and lam = 0 at t = 0, where s = 0).

Since v~ >= c m~^2 in exact arithmetic, den >= a >= 0 and gamma lies in
[0, 1]. Where round-off gives den <= a (zero variance) gamma is 1, which is
the paper's clip; where m~ = 0 the update is 0 whatever gamma is, so the
paper's 0/0 case (m = v = 0) leaves the coordinate where it is. There is no
epsilon.

The variance-adapted sign methods (paper §C; docs/optimizers.md) use the same a, den and
lam (kappa = rho) and move by lr sign(m~) times a factor in [0, 1]:

    M-SSD-VA:  (1 + rho s / m^2)^(-1/2)   = sqrt(gamma) = sqrt(a / den),
    M-SSD-erf: erf(|m| / sqrt(2 rho s))   = erf(sqrt(a / (2 r))),  r = lam (v~ - a).

Where s <= 0 (s_0 = 0, zero variance, round-off) the factor is 1 (erf(inf)
= 1); where m~ = 0 the sign is 0 and the coordinate does not move.

Three implementations of the same maths, all tested against
``reference.py``: a per-tensor loop (``foreach=False``), the multi-tensor
``torch._foreach_*`` path (the default) and a single-pass fused path
(``fused=True``: a C kernel on the CPU, ``torch.compile`` on other devices).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor

METHODS = ("msgd", "mssd", "msvag", "svag", "mssd_va", "mssd_erf")
_USES_V = ("msvag", "svag", "mssd_va", "mssd_erf")


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
    """One tensor's update with plain torch ops (the foreach=False path; compiled when fused)."""
    if m is None:  # beta = 0: the average is the gradient itself
        mt = g
    else:
        m.mul_(beta).add_(g, alpha=1.0 - beta)
        mt = m
    if method == "msgd":
        p.sub_(mt * lr_eff)
        return
    if method == "mssd":
        p.sub_(torch.sign(mt) * lr_eff)
        return
    assert v is not None
    v.mul_(beta).addcmul_(g, g, value=1.0 - beta)
    a = mt * mt * c
    if method == "mssd_erf":
        r = (v - a) * lam  # rho s / c; r <= 0: zero variance, factor erf(inf) = 1
        pos = r > 0
        factor = torch.where(pos, torch.erf(torch.sqrt(a / torch.where(pos, 2.0 * r, 1.0))), 1.0)
        p.sub_(torch.sign(mt) * factor * lr_eff)
        return
    den = a + (v - a) * lam
    gamma = torch.where(den > a, a / torch.where(den > a, den, 1.0), 1.0)
    if method == "mssd_va":
        p.sub_(torch.sign(mt) * torch.sqrt(gamma) * lr_eff)
        return
    d = mt if method == "msvag" else g
    p.sub_(gamma * d * lr_eff)


# --------------------------------------------------------------------------- multi-tensor


def _foreach(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, beta: float, lr_eff: float, c: float, lam: float,
) -> None:  # fmt: skip
    """The multi-tensor path for tensors that share device, dtype and step."""
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
    if method == "mssd_erf":
        _foreach_erf_factor(p, mt, v, lr_eff, c, lam)
        return
    a = torch._foreach_mul(mt, mt)  # m~^2
    den = torch._foreach_mul(v, lam)
    torch._foreach_add_(den, a, alpha=c * (1.0 - lam))  # den = a + lam (v~ - a), a = c m~^2
    torch._foreach_mul_(a, c)
    # gamma = a / max(den, a): 1 where den <= a (zero variance, or round-off).
    torch._foreach_maximum_(den, a)
    # den = 0 only where m~ = v~ = 0, the paper's 0/0: subtracting sign(den) - 1
    # (exactly -1 there, exactly 0 elsewhere) makes gamma 0 there and changes
    # nothing else. No epsilon.
    zero = torch._foreach_sign(den)
    torch._foreach_sub_(zero, 1.0)
    torch._foreach_sub_(den, zero)
    torch._foreach_div_(a, den)  # gamma, in [0, 1]; dividing first avoids underflow
    if method == "mssd_va":
        torch._foreach_sqrt_(a)
        torch._foreach_addcmul_(p, torch._foreach_sign(mt), a, value=-lr_eff)
        return
    torch._foreach_addcmul_(p, a, mt if method == "msvag" else g, value=-lr_eff)


def _foreach_erf_factor(
    p: list[Tensor], mt: list[Tensor], v: list[Tensor], lr_eff: float, c: float, lam: float
) -> None:
    """M-SSD-erf's step p -= lr sign(m~) erf(sqrt(a / (2 r))) over a list of tensors."""
    a = torch._foreach_mul(mt, mt)
    torch._foreach_mul_(a, c)  # a = c m~^2 = m^2 / c
    r = torch._foreach_mul(v, lam)
    torch._foreach_add_(r, a, alpha=-lam)  # r = lam (v~ - a) = rho s / c
    torch._foreach_clamp_min_(r, 0.0)  # s <= 0: a / 0 = inf below, erf(inf) = 1
    torch._foreach_abs_(r)  # an underflow can leave -0.0, and a / -0 = -inf
    torch._foreach_mul_(r, 2.0)
    # Where a = 0 the sign below is 0 and the factor only has to be finite: adding
    # 1 - sign(a) (exactly 1 there, exactly 0 elsewhere) turns 0/0 into 1/0.
    one = torch._foreach_sign(a)
    torch._foreach_sub_(one, 1.0)
    torch._foreach_sub_(a, one)
    torch._foreach_div_(a, r)  # m^2 / (2 rho s), inf where s <= 0
    torch._foreach_sqrt_(a)
    torch._foreach_erf_(a)
    torch._foreach_addcmul_(p, torch._foreach_sign(mt), a, value=-lr_eff)


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
        if p[0].dtype not in _native.DTYPE_CODES:  # float16: no native kernel
            for i in range(len(p)):
                mi = None if m is None else m[i]
                vi = None if v is None else v[i]
                _single_tensor(method, p[i], g[i], mi, vi, beta, lr_eff, c, lam)
            return
        _native.moments_step(method, p, g, m, v, lr_eff, c, lam, beta)
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
