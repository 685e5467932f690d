"""TensorFlow conventions that DeepOBS's models rely on, as PyTorch building blocks.

TF's "SAME" padding is asymmetric when the total padding is odd (the extra row and column go
at the bottom and right); PyTorch pads symmetrically. The two agree in output shape but not
in which pixels a strided window sees, so strided SAME layers here pad like TF.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Std of a standard normal truncated at +-2, the correction TF applies for Glorot normal.
TRUNC2_STD = 0.87962566103423978


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) of one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF's SAME padding (asymmetric where TF's is)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True):
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(in_ch, out_ch, kernel, stride, kernel // 2 if symmetric else 0, bias=bias)
        self._pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class MaxPoolSame(nn.Module):
    """TF's ``max_pooling2d(padding="same")``: pads with -inf, bottom/right first."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel, self.stride, value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME"


def glorot_uniform_(w: torch.Tensor) -> torch.Tensor:
    """TF's glorot_uniform; TF's fans for 1-D tensors are (n, n), e.g. an LSTM softmax bias."""
    if w.dim() == 1:
        bound = math.sqrt(6.0 / (2 * w.numel()))
        return nn.init.uniform_(w, -bound, bound)
    return nn.init.xavier_uniform_(w)


def glorot_normal_(w: torch.Tensor) -> torch.Tensor:
    """TF/Keras glorot_normal: a normal truncated at 2 std, rescaled so that the variance is
    2 / (fan_in + fan_out)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
    std = math.sqrt(2.0 / (fan_in + fan_out)) / TRUNC2_STD
    return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


def decayed_weights(model: nn.Module) -> list[nn.Parameter]:
    """The tensors DeepOBS's L2 term covers: conv and dense kernels only.

    Not biases, not BatchNorm's scale and shift, not embeddings or LSTM weights (tolstoi has
    no weight decay).
    """
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def l2_term(model: nn.Module, weight_decay: float) -> torch.Tensor:
    """0.5 * wd * sum ||w||^2 over ``decayed_weights``: its gradient is wd * w (coupled L2).

    One reduction over the kernels laid end to end (WRN-40-4: 41 tensors, 8.9M values):
    three kernels forward and back instead of two per tensor. Equal to the sum of the
    per-tensor sums to float32 rounding (the additions are grouped differently), exactly
    for one tensor. ``torch._foreach_norm`` would fuse too, but has no vmap batching rule
    (seed-parallel groups, per-example gradients) and squares a square root.
    """
    weights = decayed_weights(model)
    if weight_decay == 0.0 or not weights:
        return torch.zeros((), device=next(model.parameters()).device)
    flat = torch.cat([w.reshape(-1) for w in weights])
    return 0.5 * weight_decay * flat.square().sum()
