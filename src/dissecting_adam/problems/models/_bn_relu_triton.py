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

Forward, three launches (``forward``):

- statistics: per tile and channel the mean and the sum of squared deviations from it;
- a per-channel finish: the tiles merged by Chan's formula (exact in exact arithmetic, and
  without the cancellation of a sum of squares), invstd = 1 / sqrt(var + eps), scale =
  weight * invstd, shift = bias - mean * scale, and the running statistics updated in
  place as ``nn.BatchNorm2d`` updates them (momentum; the unbiased variance);
- y = max(x * scale + shift, 0); NaN stays NaN, as in ``torch.relu``.

Backward, three launches (``backward``):

- per tile and channel sum(g) and sum(g * xhat), with g = dy where x * scale + shift > 0
  (the forward's test on the forward's scale and shift, recomputed from x: y is not kept)
  and xhat = (x - mean) * invstd;
- a per-channel finish: the sums over tiles, which are the gradients of bias and weight,
  and the coefficients of dx;
- dx = weight * invstd * (g - sum(g) / M - xhat * sum(g * xhat) / M).

Everything per channel happens in the finishing kernels, not in PyTorch operations: a
layer costs six launches, not thirty, where launches (WRN-40-4 has 37 such layers) would
otherwise cost more than the memory traffic saved.

Values are read in their dtype (float32, bfloat16, float16), computed in float32 and written
in the input's dtype. Nothing is synchronised with the host, so a step with these kernels
can be captured in a CUDA graph. Importing this module imports triton; on the CPU the
kernels run only under ``TRITON_INTERPRET=1`` set before triton is first imported
(tests/test_bn_relu.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

#: (BLOCK_R, BLOCK_C) per layout; the tests shrink them to cover the tile edges.
TILES = {"nchw": (256, 4), "nhwc": (64, 32)}
#: (BLOCK_P, BLOCK_C) of the finishing kernels: tiles read per piece, channels per program.
FINISH = (64, 32)


@triton.jit
def _tile(M, KC, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's rows r and channels cc, and the mask of those that exist."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return r, cc, (r < M)[:, None] & (cc < KC)[None, :]


@triton.jit
def _offsets(r, cc, S, C, sk, sn, sc, sw):
    row = (r // S).to(tl.int64) * sn + (r % S).to(tl.int64) * sw
    col = (cc // C).to(tl.int64) * sk + (cc % C).to(tl.int64) * sc
    return row[:, None] + col[None, :]


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, M, S, KC, C, sk, sn, sc, sw,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    r, cc, mask = _tile(M, KC, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + _offsets(r, cc, S, C, sk, sn, sc, sw), mask=mask, other=0.0)
    x = x.to(tl.float32)
    pid_r = tl.program_id(0)
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
    r, cc, mask = _tile(M, KC, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + _offsets(r, cc, S, C, xk, xn, xc, xw), mask=mask, other=0.0)
    scale = tl.load(scale_ptr + cc, mask=cc < KC, other=0.0)
    shift = tl.load(shift_ptr + cc, mask=cc < KC, other=0.0)
    z = x.to(tl.float32) * scale[None, :] + shift[None, :]
    y = tl.where(z < 0.0, 0.0, z)  # NaN fails the test and stays NaN
    tl.store(y_ptr + _offsets(r, cc, S, C, yk, yn, yc, yw), y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, M, S, KC, C,
               xk, xn, xc, xw, gk, gn, gc, gw,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """This program's tile: g (dy where the forward passed x on) and xhat in float32, its
    rows, channels and mask."""
    r, cc, mask = _tile(M, KC, BLOCK_R, BLOCK_C)
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
    return g, xhat, r, cc, mask


@triton.jit
def _backward_sums_kernel(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                          sg_ptr, sgx_ptr, M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    g, xhat, r, cc, mask = _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                                      M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                                      BLOCK_R, BLOCK_C)  # fmt: skip
    pid_r = tl.program_id(0)
    tl.store(sg_ptr + pid_r * KC + cc, tl.sum(g, axis=0), mask=cc < KC)
    tl.store(sgx_ptr + pid_r * KC + cc, tl.sum(g * xhat, axis=0), mask=cc < KC)


@triton.jit
def _backward_dx_kernel(x_ptr, dy_ptr, dx_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                        a_ptr, b_ptr, c_ptr, M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                        dk, dn, dc, dw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    g, xhat, r, cc, mask = _grad_tile(x_ptr, dy_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                                      M, S, KC, C, xk, xn, xc, xw, gk, gn, gc, gw,
                                      BLOCK_R, BLOCK_C)  # fmt: skip
    a = tl.load(a_ptr + cc, mask=cc < KC, other=0.0)
    b = tl.load(b_ptr + cc, mask=cc < KC, other=0.0)
    c = tl.load(c_ptr + cc, mask=cc < KC, other=0.0)
    dx = a[None, :] * (g - b[None, :] - xhat * c[None, :])
    tl.store(dx_ptr + _offsets(r, cc, S, C, dk, dn, dc, dw), dx.to(dx_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


@triton.jit
def _parts(ptr, p, cc, KC, mask):
    """Rows ``p`` (tiles) of a (tiles, KC) table of per-tile values, at channels ``cc``."""
    return tl.load(ptr + p[:, None] * KC + cc[None, :], mask=mask, other=0.0)


@triton.jit
def _finish_stats_kernel(mean_ptr, m2_ptr, weight_ptr, bias_ptr, rmean_ptr, rvar_ptr,
                         out_ptr, P, KC, M, rows, last, eps, momentum, unbias,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """out (4, KC): mean, invstd, scale, shift; running statistics updated in place."""
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < KC
    total = tl.zeros((BLOCK_C,), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        n = tl.where(p == P - 1, last, rows)
        mask = (p < P)[:, None] & cmask[None, :]
        total += tl.sum(_parts(mean_ptr, p, cc, KC, mask) * n[:, None], axis=0)
    mean = total / M
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        n = tl.where(p == P - 1, last, rows)
        mask = (p < P)[:, None] & cmask[None, :]
        dev = tl.where(mask, _parts(mean_ptr, p, cc, KC, mask) - mean[None, :], 0.0)
        m2 += tl.sum(_parts(m2_ptr, p, cc, KC, mask) + dev * dev * n[:, None], axis=0)
    var = m2 / M
    # Two blocks of one shape: div_rn gives its result the first operand's type.
    invstd = tl.div_rn(tl.full((BLOCK_C,), 1.0, tl.float32), tl.sqrt_rn(var + eps))
    weight = tl.load(weight_ptr + cc, mask=cmask, other=0.0)
    bias = tl.load(bias_ptr + cc, mask=cmask, other=0.0)
    scale = weight * invstd
    shift = bias - mean * scale
    tl.store(out_ptr + cc, mean, mask=cmask)
    tl.store(out_ptr + KC + cc, invstd, mask=cmask)
    tl.store(out_ptr + 2 * KC + cc, scale, mask=cmask)
    tl.store(out_ptr + 3 * KC + cc, shift, mask=cmask)
    rmean = tl.load(rmean_ptr + cc, mask=cmask, other=0.0)
    rvar = tl.load(rvar_ptr + cc, mask=cmask, other=0.0)
    tl.store(rmean_ptr + cc, (1.0 - momentum) * rmean + momentum * mean, mask=cmask)
    tl.store(rvar_ptr + cc, (1.0 - momentum) * rvar + momentum * (var * unbias), mask=cmask)


@triton.jit
def _finish_grad_kernel(sg_ptr, sgx_ptr, weight_ptr, invstd_ptr, dweight_ptr, dbias_ptr,
                        coef_ptr, P, KC, M,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """The gradients of weight and bias, and coef (3, KC): the a, b, c of dx."""
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < KC
    sg = tl.zeros((BLOCK_C,), tl.float32)
    sgx = tl.zeros((BLOCK_C,), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & cmask[None, :]
        sg += tl.sum(_parts(sg_ptr, p, cc, KC, mask), axis=0)
        sgx += tl.sum(_parts(sgx_ptr, p, cc, KC, mask), axis=0)
    weight = tl.load(weight_ptr + cc, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + cc, mask=cmask, other=0.0)
    tl.store(dweight_ptr + cc, sgx, mask=cmask)
    tl.store(dbias_ptr + cc, sg, mask=cmask)
    tl.store(coef_ptr + cc, weight * invstd, mask=cmask)
    tl.store(coef_ptr + KC + cc, sg / M, mask=cmask)
    tl.store(coef_ptr + 2 * KC + cc, sgx / M, mask=cmask)


# --------------------------------------------------------------------------- host side


def strides(t: Tensor) -> tuple[int, int, int, int] | None:
    """(sk, sn, sc, sw) of a (K, N, C, H, W) tensor whose H and W collapse, else None."""
    k, n, c, h, w = t.stride()
    return (k, n, c, w) if t.shape[3] == 1 or h == t.shape[4] * w else None


def laid_out(t: Tensor) -> Tensor:
    """``t`` itself when the kernels can address it, else a contiguous copy."""
    return t if strides(t) is not None else t.contiguous()


class _Plan(NamedTuple):
    """How the tile kernels cover x (K, N, C, H, W): M rows, S = H*W, K*C channels, C,
    x's strides, the tile and the launch grid."""

    m: int
    s: int
    kc: int
    c: int
    strides: tuple[int, int, int, int]
    block_r: int
    block_c: int
    tiles: int
    grid: tuple[int, int]

    @classmethod
    def of(cls, x: Tensor) -> _Plan:
        k, n, c, h, w = x.shape
        st = strides(x)
        block_r, block_c = TILES["nhwc" if st[2] == 1 and c > 1 else "nchw"]
        m, kc = n * h * w, k * c
        tiles = triton.cdiv(m, block_r)
        return cls(m, h * w, kc, c, st, block_r, block_c, tiles, (tiles, triton.cdiv(kc, block_c)))

    def sizes(self) -> tuple[int, int, int, int]:
        return self.m, self.s, self.kc, self.c

    def blocks(self) -> dict:
        return {"BLOCK_R": self.block_r, "BLOCK_C": self.block_c}

    def per_tile(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Two (tiles, K*C) float32 tables of per-tile values."""
        part = torch.empty(self.tiles, self.kc, device=x.device, dtype=torch.float32)
        return part, torch.empty_like(part)


def _like(x: Tensor) -> Tensor:
    """An empty tensor of x's shape and dtype, in x's memory order where the kernels can
    address it."""
    out = torch.empty_like(x)
    return out if strides(out) is not None else torch.empty(x.shape, dtype=x.dtype, device=x.device)


def forward(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
            running_var: Tensor, eps: float, momentum: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """y = relu(batch_norm(x)) in training mode, in x's dtype and memory order, and the
    per-channel (4, K, C) float32 mean, invstd, scale and shift; x is (K, N, C, H, W) and
    weight, bias and the running statistics (K, C) float32, the latter updated in place."""
    x = laid_out(x)
    plan = _Plan.of(x)
    m = plan.m
    part_mean, part_m2 = plan.per_tile(x)
    _stats_kernel[plan.grid](x, part_mean, part_m2, *plan.sizes(), *plan.strides, **plan.blocks())
    channel = torch.empty(4, *weight.shape, device=x.device, dtype=torch.float32)
    fp, fc = FINISH
    last = m - (plan.tiles - 1) * plan.block_r
    _finish_stats_kernel[(triton.cdiv(plan.kc, fc),)](
        part_mean, part_m2, weight, bias, running_mean, running_var, channel, plan.tiles,
        plan.kc, float(m), float(plan.block_r), float(last), eps, momentum, m / (m - 1),
        BLOCK_P=fp, BLOCK_C=fc,
    )  # fmt: skip
    y = _like(x)
    _forward_kernel[plan.grid](x, y, channel[2], channel[3], *plan.sizes(), *plan.strides,
                               *strides(y), **plan.blocks())  # fmt: skip
    return y, channel


def backward(dy: Tensor, x: Tensor, weight: Tensor, channel: Tensor
             ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, and the gradients of weight and bias (K, C), of y = relu(batch_norm(x)), given
    ``forward``'s per-channel values."""
    x, dy = laid_out(x), laid_out(dy)
    plan = _Plan.of(x)
    part_g, part_gx = plan.per_tile(x)
    mean, invstd, scale, shift = channel
    _backward_sums_kernel[plan.grid](x, dy, scale, shift, mean, invstd, part_g, part_gx,
                                     *plan.sizes(), *plan.strides, *strides(dy),
                                     **plan.blocks())  # fmt: skip
    dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
    coef = torch.empty(3, plan.kc, device=x.device, dtype=torch.float32)
    fp, fc = FINISH
    _finish_grad_kernel[(triton.cdiv(plan.kc, fc),)](
        part_g, part_gx, weight, invstd, dweight, dbias, coef, plan.tiles, plan.kc,
        float(plan.m), BLOCK_P=fp, BLOCK_C=fc,
    )  # fmt: skip
    dx = _like(x)
    _backward_dx_kernel[plan.grid](x, dy, dx, scale, shift, mean, invstd, *coef, *plan.sizes(),
                                   *plan.strides, *strides(dy), *strides(dx),
                                   **plan.blocks())  # fmt: skip
    return dx, dweight, dbias
