"""The Triton kernel of ``fused=True`` on CUDA: one launch per (device, dtype) group.

One kernel, specialised per method by a ``constexpr``, updates every tensor of a group in
one launch. Nothing is copied or flattened: a small int64 table on the device holds each
tensor's addresses (p, g, m~, v~) and size, and a chunk table maps each program to (tensor,
first element); a program updates ``CHUNK`` elements of one tensor in ``BLOCK``-wide
pieces. The tables depend only on the tensors' addresses and sizes, so they are built once
and cached (a step whose tensors stay where they are, as in a CUDA graph, copies nothing to
the device). Why not a flat buffer or one launch per tensor: a flat buffer would need the
parameters to live in it (or a copy per step), and one launch per tensor is what the
multi-tensor path already costs. When every tensor is 16-byte aligned and a whole number
of 16-byte vectors long, the kernel is compiled knowing it (``VEC``) and accesses 16 bytes
at a time; the tables cannot tell the compiler, which otherwise assumes one value.

The maths are ``_engine._single_tensor``'s, in the same overflow-safe form (r =
sqrt(v~) k / |m~| with k = sqrt(lam / c), the clamps to the smallest normal and the square
root of the largest finite number, no epsilon), in float32 for float32 and 16-bit parameters
(16-bit values are rounded to nearest even once, when stored; triton's interpreter would
truncate) and in float64 for float64. Square roots and divisions are IEEE-rounded
(``sqrt_rn``, ``div_rn`` in float32): the approximate ones flush subnormal v~ to zero,
which would lose the variance of gradients near 1e-20.

The per-step scalars (lr_eff, k, shift, beta) come as kernel arguments (float32), or, for
capturable step counts and float64 parameters, from ``_engine.device_coefficients``' table
(one column per tensor; one shared column for float64, whose scalars float32 arguments
would round).

Importing this module imports triton; on the CPU the kernel runs only under
``TRITON_INTERPRET=1`` set before triton is first imported (tests/test_triton_kernels.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._internal import compute_dtype, limits

#: Elements per program piece and per program; the tests shrink them to cover the edges.
BLOCK, CHUNK = 1024, 8192
_CODES = {"msgd": 0, "mssd": 1, "msvag": 2, "svag": 3, "mssd_va": 4, "mssd_erf": 5}
_TL = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}
_meta_cache: dict[tuple, tuple[Tensor, int]] = {}
_MAX_CACHED = 64


@triton.jit
def _round_to(x, TY: tl.constexpr):
    """``x`` rounded to ``TY``, to nearest even (triton's interpreter truncates to bfloat16)."""
    if TY == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x != x, x.to(tl.bfloat16), out)  # NaN stays NaN
    else:
        return x.to(TY)


@triton.jit
def _moments_kernel(
    addr_ptr, numel_ptr, chunk_ptr, coef_ptr, row_stride, col_stride,
    lr_eff, k, shift, beta,
    METHOD: tl.constexpr, HAS_M: tl.constexpr, COEF_TABLE: tl.constexpr,
    P_TY: tl.constexpr, S_TY: tl.constexpr, ACC: tl.constexpr,
    TINY: tl.constexpr, SQRT_MAX: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
    IEEE: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """``VEC``: 0, or the values in 16 bytes when every tensor of the launch is 16-byte
    aligned and a whole number of such vectors long (``_meta``): the compiler is told so,
    and reads and writes 16 bytes at a time instead of one value (tests/test_triton_compile.py
    checks the ``ld.global.v4`` in the PTX)."""
    pid = tl.program_id(0)
    i = tl.load(chunk_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(chunk_ptr + 2 * pid + 1), CHUNK)  # chunks start at k CHUNK
    n = tl.load(numel_ptr + i)
    p_ptr = tl.load(addr_ptr + 4 * i).to(tl.pointer_type(P_TY))
    g_ptr = tl.load(addr_ptr + 4 * i + 1).to(tl.pointer_type(P_TY))
    m_ptr = tl.load(addr_ptr + 4 * i + 2).to(tl.pointer_type(S_TY))
    v_ptr = tl.load(addr_ptr + 4 * i + 3).to(tl.pointer_type(S_TY))
    if COEF_TABLE:  # rows of _engine.device_coefficients: lr_eff, c, lam, k, shift, beta
        col = coef_ptr + i * col_stride
        a_lr = tl.load(col).to(ACC)
        a_k = tl.load(col + 3 * row_stride).to(ACC)
        a_shift = tl.load(col + 4 * row_stride).to(ACC)
        a_beta = tl.load(col + 5 * row_stride).to(ACC)
    else:
        a_lr = tl.cast(lr_eff, ACC)
        a_k = tl.cast(k, ACC)
        a_shift = tl.cast(shift, ACC)
        a_beta = tl.cast(beta, ACC)
    tiny = tl.full([BLOCK], TINY, ACC)
    sqrt_max = tl.full([BLOCK], SQRT_MAX, ACC)
    for piece in tl.range(0, tl.minimum(n - start, CHUNK), BLOCK):  # a tensor's tail: fewer
        offs = start + piece + tl.arange(0, BLOCK)
        mask = offs < n
        pp, gp, mp, vp = p_ptr + offs, g_ptr + offs, m_ptr + offs, v_ptr + offs
        if VEC:  # 16-byte aligned tensors, sizes in whole vectors: say so, for wide accesses
            mask = offs < tl.multiple_of(n, VEC)
            pp, gp = tl.multiple_of(pp, 16), tl.multiple_of(gp, 16)
            mp, vp = tl.multiple_of(mp, 16), tl.multiple_of(vp, 16)
        g = tl.load(gp, mask=mask, other=0.0).to(ACC)
        p = tl.load(pp, mask=mask, other=0.0).to(ACC)
        if HAS_M:  # beta m~ + (1 - beta) g, as _single_tensor's mul_(beta).add_(g, 1 - beta)
            mt = tl.load(mp, mask=mask, other=0.0).to(ACC) * a_beta + g * (1.0 - a_beta)
            tl.store(
                mp,
                (_round_to(mt, S_TY) if S_TY == tl.bfloat16 else mt.to(S_TY)),
                mask=mask,
            )
        else:  # beta = 0: the average is the gradient itself
            mt = g
        if METHOD == 1 or METHOD >= 4:  # sign(m~): 0 at 0 and NaN at NaN, as torch.sign
            sgn = tl.where(mt > 0, 1.0, tl.where(mt < 0, -1.0, mt * 0.0))
        if METHOD == 0:
            p = p - a_lr * mt
        elif METHOD == 1:
            p = p - a_lr * sgn
        else:
            vt = tl.load(vp, mask=mask, other=0.0).to(ACC)
            vt = vt * a_beta + (1.0 - a_beta) * g * g
            tl.store(
                vp,
                (_round_to(vt, S_TY) if S_TY == tl.bfloat16 else vt.to(S_TY)),
                mask=mask,
            )
            abs_m = tl.maximum(tl.abs(mt), tiny)  # m~ = 0: r = inf (0 where v~ = 0 too)
            # IEEE-rounded sqrt and division in float32 (float64's are): see the docstring
            if IEEE:
                r = tl.div_rn(tl.minimum(tl.sqrt_rn(vt), sqrt_max) * a_k, abs_m)
            else:
                r = tl.minimum(tl.sqrt(vt), sqrt_max) * a_k / abs_m  # v~ = inf: largest finite
            x = r * r + a_shift  # 2 lam (q - 1) for M-SSD-erf, 1 / gamma otherwise
            if METHOD == 5:
                x = tl.maximum(x, 0.0)  # s <= 0: w = 0, erf(1 / 0) = erf(inf) = 1
                num = tl.full([BLOCK], 1.0, ACC)
            else:
                x = tl.maximum(x, 1.0)  # d = 1 / gamma, gamma clipped to [0, 1]
                if METHOD == 2:
                    num = mt
                elif METHOD == 3:
                    num = g
                else:
                    num = sgn
            if METHOD >= 4:  # (1 + rho s / m^2)^(-1/2) = 1 / sqrt(d); erf(1 / sqrt(w))
                if IEEE:
                    x = tl.sqrt_rn(x)
                else:
                    x = tl.sqrt(x)
            if IEEE:
                step = tl.div_rn(num, x)
            else:
                step = num / x
            if METHOD == 5:
                step = sgn * tl.erf(step)
            p = p - a_lr * step
        tl.store(pp, (_round_to(p, P_TY) if P_TY == tl.bfloat16 else p.to(P_TY)), mask=mask)


def _meta(p, g, m, v, chunk: int) -> tuple[Tensor, int, int]:
    """The device's int64 tables (addresses, sizes, chunks) in one tensor, the chunk count,
    and ``VEC`` (the kernel's: values per 16 bytes if every tensor allows wide accesses)."""
    cols = [p, g, m or [None] * len(p), v or [None] * len(p)]
    addresses = [0 if x is None else x.data_ptr() for row in zip(*cols, strict=True) for x in row]
    numels = [x.numel() for x in p]
    states = m or v or p
    key = (p[0].device, p[0].dtype, states[0].dtype, chunk, tuple(addresses), tuple(numels))
    hit = _meta_cache.get(key)
    if hit is not None:
        return hit
    sizes = torch.tensor(numels, dtype=torch.int64)
    counts = (sizes + chunk - 1) // chunk
    owner = torch.repeat_interleave(torch.arange(len(p)), counts)
    first = torch.cumsum(counts, 0) - counts
    starts = (torch.arange(int(counts.sum())) - first[owner]) * chunk
    chunks = torch.stack([owner, starts], 1).reshape(-1)
    table = torch.cat([torch.tensor(addresses, dtype=torch.int64), sizes, chunks])
    if len(_meta_cache) >= _MAX_CACHED:
        _meta_cache.clear()
    device = p[0].device
    if device.type == "cuda":  # pinned and asynchronous: a new table does not stall the host
        table = table.pin_memory().to(device, non_blocking=True)
    vec = 16 // min(p[0].element_size(), states[0].element_size())
    wide = all(a % 16 == 0 for a in addresses) and all(n % vec == 0 for n in numels)
    _meta_cache[key] = hit = (table.to(device), len(owner), vec if wide else 0)
    return hit


def step(
    method: str, p: list[Tensor], g: list[Tensor], m: list[Tensor] | None,
    v: list[Tensor] | None, *, scalars: tuple[float, float, float, float] | None = None,
    table: Tensor | None = None, block: int | None = None, chunk: int | None = None,
) -> None:  # fmt: skip
    """One step of ``method`` on contiguous tensors of one device and dtype, in one launch.

    ``scalars`` = (lr_eff, k, shift, beta) shared by all tensors, or ``table`` =
    ``_engine.device_coefficients`` (one column per tensor, capturable steps).
    """
    block, chunk = block or BLOCK, chunk or CHUNK
    if chunk % block:
        raise ValueError(f"chunk={chunk} must be a multiple of block={block}")
    meta, n_chunks, vec = _meta(p, g, m, v, chunk)
    if n_chunks == 0:
        return
    n = len(p)
    acc = compute_dtype(p[0].dtype)
    if table is None and acc == torch.float64:  # float32 arguments would round the scalars
        lr_eff, k, shift, beta = scalars
        table = torch.tensor([lr_eff, 0.0, 0.0, k, shift, beta], dtype=acc, device=p[0].device)
        row_stride, col_stride = 1, 0
    else:
        row_stride, col_stride = n, 1
    lr_eff, k, shift, beta = scalars or (0.0, 0.0, 0.0, 0.0)
    tiny, sqrt_max = limits(acc)
    state = p if m is None else m
    _moments_kernel[(n_chunks,)](
        meta, meta[4 * n :], meta[5 * n :], meta if table is None else table,
        row_stride, col_stride, lr_eff, k, shift, beta,
        METHOD=_CODES[method], HAS_M=m is not None, COEF_TABLE=table is not None,
        P_TY=_TL[p[0].dtype], S_TY=_TL[state[0].dtype], ACC=_TL[acc],
        TINY=tiny, SQRT_MAX=sqrt_max, BLOCK=block, CHUNK=chunk, IEEE=acc == torch.float32,
        VEC=vec,
    )  # fmt: skip
