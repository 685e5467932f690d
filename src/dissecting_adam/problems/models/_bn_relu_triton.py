"""The Triton kernels of ``BatchNormReLU2d``: batch norm (training mode) and ReLU with 8
activation-sized reads and writes (3 forward, 5 backward) where eager PyTorch makes about
13.

Every tensor is seen as (K, N, C, H, W): K members of a seed-parallel group (1 for a single
model), each normalising its C channels over (N, H, W). Rows are the M = N*H*W positions
and columns the K*C channels; a tensor is addressed through its strides (sk, sn, sc, sw),
which covers contiguous (NCHW) and channels_last (NHWC) tensors, stacked or not, without a
copy (H and W must collapse: stride(H) = W * stride(W), true for both layouts). A program
owns a tile of BLOCK_R rows by BLOCK_C channels, shaped so that its loads are contiguous:
long along rows in NCHW, wide along channels in NHWC.

- ``stats``: per tile and channel the mean and the sum of squared deviations from it; the
  tiles are merged on the device by Chan's formula (exact in exact arithmetic, and without
  the cancellation of a sum of squares).
- ``forward``: y = max(x * scale + shift, 0), scale = weight / sqrt(var + eps), shift =
  bias - mean * scale; NaN stays NaN, as in ``torch.relu``.
- ``backward_sums``: per channel sum(g) and sum(g * xhat), with g = dy where x * scale +
  shift > 0 (the forward's test, recomputed from x: y is not kept) and xhat = (x - mean) *
  invstd; they are the gradients of bias and weight.
- ``backward_dx``: dx = weight * invstd * (g - sum(g) / M - xhat * sum(g * xhat) / M).

Values are read in their dtype (float32, bfloat16, float16), computed in float32 and written
in the input's dtype. Nothing is synchronised with the host, so a step with these kernels
can be captured in a CUDA graph. Importing this module imports triton; on the CPU the
kernels run only under ``TRITON_INTERPRET=1`` set before triton is first imported
(tests/test_bn_relu.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: (BLOCK_R, BLOCK_C) per layout; the tests shrink them to cover the tile edges.
TILES = {"nchw": (256, 4), "nhwc": (64, 32)}


@triton.jit
def _offsets(r, cc, S, C, sk, sn, sc, sw):
    row = (r // S).to(tl.int64) * sn + (r % S).to(tl.int64) * sw
    col = (cc // C).to(tl.int64) * sk + (cc % C).to(tl.int64) * sc
    return row[:, None] + col[None, :]


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, M, S, KC, C, sk, sn, sc, sw,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < M)[:, None] & (cc < KC)[None, :]
    x = tl.load(x_ptr + _offsets(r, cc, S, C, sk, sn, sc, sw), mask=mask, other=0.0)
    x = x.to(tl.float32)
    n = tl.minimum(M - pid_r * BLOCK_R, BLOCK_R).to(tl.float32)
    mean = tl.sum(x, axis=0) / n
    d = tl.where(mask, x - mean[None, :], 0.0)
    m2 = tl.sum(d * d, axis=0)
    tl.store(mean_ptr + pid_r * KC + cc, mean, mask=cc < KC)
    tl.store(m2_ptr + pid_r * KC + cc, m2, mask=cc < KC)


@triton.jit
def _forward_kernel(x_ptr, y_ptr, scale_ptr, shift_ptr, M, S, KC, C,
                    xk, xn, xc, xw, yk, yn, yc, yw,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < M)[:, None] & (cc < KC)[None, :]
    x = tl.load(x_ptr + _offsets(r, cc, S, C, xk, xn, xc, xw), mask=mask, other=0.0)
    scale = tl.load(scale_ptr + cc, mask=cc < KC, other=0.0)
    shift = tl.load(shift_ptr + cc, mask=cc < KC, other=0.0)
    z = x.to(tl.float32) * scale[None, :] + shift[None, :]
    y = tl.where(z < 0.0, 0.0, z)  # NaN fails the test and stays NaN
    tl.store(y_ptr + _offsets(r, cc, S, C, yk, yn, yc, yw), y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, r, cc, M, S, KC, C,
               xk, xn, xc, xw, gk, gn, gc, gw):  # fmt: skip
    """g (dy where the forward passed x on) and xhat for one tile, in float32."""
    mask = (r < M)[:, None] & (cc < KC)[None, :]
    x = tl.load(x_ptr + _offsets(r, cc, S, C, xk, xn, xc, xw), mask=mask, other=0.0)
    dy = tl.load(dy_ptr + _offsets(r, cc, S, C, gk, gn, gc, gw), mask=mask, other=0.0)
    x = x.to(tl.float32)
    scale = tl.load(scale_ptr + cc, mask=cc < KC, other=0.0)
    shift = tl.load(shift_ptr + cc, mask=cc < KC, other=0.0)
    mean = tl.load(mean_ptr + cc, mask=cc < KC, other=0.0)
    invstd = tl.load(invstd_ptr + cc, mask=cc < KC, other=0.0)
    z = x * scale[None, :] + shift[None, :]
    g = tl.where(z > 0.0, dy.to(tl.float32), 0.0)
    xhat = (x - mean[None, :]) * invstd[None, :]
    return g, xhat, mask


@triton.jit
def _backward_sums_kernel(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                          sg_ptr, sgx_ptr, M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    g, xhat, mask = _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, r, cc,
                               M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw)  # fmt: skip
    tl.store(sg_ptr + pid_r * KC + cc, tl.sum(g, axis=0), mask=cc < KC)
    tl.store(sgx_ptr + pid_r * KC + cc, tl.sum(g * xhat, axis=0), mask=cc < KC)


@triton.jit
def _backward_dx_kernel(x_ptr, dy_ptr, dx_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                        a_ptr, b_ptr, c_ptr, M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                        dk, dn, dc, dw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    g, xhat, mask = _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, r, cc,
                               M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw)  # fmt: skip
    a = tl.load(a_ptr + cc, mask=cc < KC, other=0.0)
    b = tl.load(b_ptr + cc, mask=cc < KC, other=0.0)
    c = tl.load(c_ptr + cc, mask=cc < KC, other=0.0)
    dx = a[None, :] * (g - b[None, :] - xhat * c[None, :])
    tl.store(dx_ptr + _offsets(r, cc, S, C, dk, dn, dc, dw), dx.to(dx_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


# --------------------------------------------------------------------------- host side


def strides(t: Tensor) -> tuple[int, int, int, int] | None:
    """(sk, sn, sc, sw) of a (K, N, C, H, W) tensor whose H and W collapse, else None."""
    k, n, c, h, w = t.stride()
    return (k, n, c, w) if t.shape[3] == 1 or h == t.shape[4] * w else None


def laid_out(t: Tensor) -> Tensor:
    """``t`` itself when the kernels can address it, else a contiguous copy."""
    return t if strides(t) is not None else t.contiguous()


def _grid(x: Tensor) -> tuple[int, int, int, int, tuple, tuple[int, int]]:
    k, n, c, h, w = x.shape
    st = strides(x)
    block_r, block_c = TILES["nhwc" if st[2] == 1 and c > 1 else "nchw"]
    m = n * h * w
    return m, h * w, k * c, c, st, (block_r, block_c)


def stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per (member, channel) mean and biased variance of x (K, N, C, H, W), float32 (K, C)."""
    m, s, kc, c, st, (br, bc) = _grid(x)
    tiles = triton.cdiv(m, br)
    part_mean = torch.empty(tiles, kc, device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    _stats_kernel[(tiles, triton.cdiv(kc, bc))](x, part_mean, part_m2, m, s, kc, c, *st,
                                               BLOCK_R=br, BLOCK_C=bc)  # fmt: skip
    # Chan et al.'s merge; every tile holds br rows but the last (python numbers only, so
    # that a CUDA graph can capture it).
    last = m - (tiles - 1) * br
    full_mean, last_mean = part_mean[:-1], part_mean[-1]
    mean = (full_mean.sum(0) * br + last_mean * last) / m
    m2 = (part_m2.sum(0) + ((full_mean - mean) ** 2).sum(0) * br
          + (last_mean - mean) ** 2 * last)  # fmt: skip
    shape = x.shape[0], x.shape[2]
    return mean.view(shape), (m2 / m).view(shape)


def forward(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """max(x * scale + shift, 0) per channel, in x's dtype and memory order."""
    y = torch.empty_like(x)
    if strides(y) is None:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    m, s, kc, c, st, (br, bc) = _grid(x)
    grid = (triton.cdiv(m, br), triton.cdiv(kc, bc))
    _forward_kernel[grid](x, y, scale, shift, m, s, kc, c, *st, *strides(y),
                          BLOCK_R=br, BLOCK_C=bc)  # fmt: skip
    return y


def backward(dy: Tensor, x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, mean: Tensor,
             invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, and the gradients of weight and bias (K, C), of y = relu(bn(x))."""
    dy = laid_out(dy)
    m, s, kc, c, st, (br, bc) = _grid(x)
    tiles = triton.cdiv(m, br)
    grid = (tiles, triton.cdiv(kc, bc))
    part_g = torch.empty(tiles, kc, device=x.device, dtype=torch.float32)
    part_gx = torch.empty_like(part_g)
    per_channel = [t.reshape(-1) for t in (scale, shift, mean, invstd)]
    _backward_sums_kernel[grid](x, dy, *per_channel, part_g, part_gx, m, s, kc, c, *st,
                                *strides(dy), BLOCK_R=br, BLOCK_C=bc)  # fmt: skip
    sum_g, sum_gx = part_g.sum(0), part_gx.sum(0)
    a = (weight.reshape(-1) * per_channel[3]).float()
    dx = torch.empty_like(x)
    if strides(dx) is None:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _backward_dx_kernel[grid](x, dy, dx, *per_channel, a, sum_g / m, sum_gx / m, m, s, kc, c,
                              *st, *strides(dy), *strides(dx), BLOCK_R=br, BLOCK_C=bc)  # fmt: skip
    shape = weight.shape
    return dx, sum_gx.view(shape).to(weight.dtype), sum_g.view(shape).to(weight.dtype)
