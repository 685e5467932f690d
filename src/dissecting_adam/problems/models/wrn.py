"""Wide residual network WRN-40-4 for CIFAR-100, after DeepOBS's ``_wrn.py`` (by L. Balles).

Pre-activation units (BN, ReLU, conv3x3, BN, ReLU, conv3x3); the first unit of each group
takes its shortcut after its first BN-ReLU, through a 1x1 convolution with the group's
stride (channels always change there: 16->64, 64->128, 128->256). Convolutions without bias,
Glorot-uniform kernels, a dense layer with bias at the end. BatchNorm: TF momentum 0.9
(decay of the running average) is PyTorch momentum 0.1; epsilon 1e-5.

Every batch norm is followed by a ReLU; ``fused_bn_relu=True`` computes each pair as one
``BatchNormReLU2d`` (Triton kernels on CUDA, ``bn_relu.py``), with the same parameters,
buffers and state-dict keys as the eager pair.
"""

from __future__ import annotations

import torch
from torch import nn

from .bn_relu import BatchNormReLU2d
from .layers import Conv2dSame, glorot_uniform_

BN_MOMENTUM = 0.1  # = 1 - TF's decay 0.9
BN_EPS = 1e-5


def _bn(ch: int, fused: bool = False) -> nn.BatchNorm2d:
    """Batch norm; ``fused``: batch norm and the ReLU after it, as one module."""
    return (BatchNormReLU2d if fused else nn.BatchNorm2d)(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActUnit(nn.Module):
    """One residual unit; ``projection`` marks a group's first unit (1x1-conv shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, projection: bool,
                 fused_bn_relu: bool = False):  # fmt: skip
        super().__init__()
        self.bn1 = _bn(in_ch, fused_bn_relu)
        self.conv1 = Conv2dSame(in_ch, out_ch, 3, stride, bias=False)
        self.bn2 = _bn(out_ch, fused_bn_relu)
        self.conv2 = Conv2dSame(out_ch, out_ch, 3, 1, bias=False)
        self.shortcut = Conv2dSame(in_ch, out_ch, 1, stride, bias=False) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._bn_relu(self.bn1, x)
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self._bn_relu(self.bn2, self.conv1(pre)))
        return out + shortcut

    @staticmethod
    def _bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        y = bn(x)
        return y if isinstance(bn, BatchNormReLU2d) else torch.relu(y)


class WideResNet(nn.Module):
    """WRN-depth-k; WRN-40-4 (6 units per group) has 8,972,340 parameters."""

    def __init__(self, depth: int = 40, widening_factor: int = 4, num_outputs: int = 100,
                 fused_bn_relu: bool = False):  # fmt: skip
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6 n + 4, got {depth}")
        if widening_factor < 2:
            # k = 1 would need DeepOBS's identity / max-pool shortcuts: not implemented.
            raise ValueError(f"widening_factor must be >= 2, got {widening_factor}")
        units = (depth - 4) // 6
        widths = [16, 16 * widening_factor, 32 * widening_factor, 64 * widening_factor]
        layers: list[nn.Module] = [Conv2dSame(3, 16, 3, bias=False)]
        for group, stride in enumerate((1, 2, 2)):
            in_ch, out_ch = widths[group], widths[group + 1]
            layers.append(PreActUnit(in_ch, out_ch, stride, in_ch != out_ch, fused_bn_relu))
            layers += [
                PreActUnit(out_ch, out_ch, 1, False, fused_bn_relu) for _ in range(units - 1)
            ]
        # nn.Identity keeps the layers' indices, and so the state-dict keys, of the eager pair.
        layers += [_bn(widths[-1], fused_bn_relu), nn.Identity() if fused_bn_relu else nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], num_outputs)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                glorot_uniform_(m.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))  # global average pool: (B, 256)
