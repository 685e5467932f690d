"""One batch norm + ReLU layer, forward and backward, eager against the fused Triton kernels
(``problems/models/bn_relu.py``), at WRN-40-4's largest activation (batch 128, 64
channels, 32 x 32), with the fused kernels' bytes per second against a copy's.

The fused layer moves 8 activation-sized tensors (x read three times, y written, dy read
twice, x read twice more and dx written: ``BYTES_PASSES``); its rate is those bytes over
its time, so 1.0 x the copy bandwidth would be the memory's limit. Eager PyTorch moves
more (about 13 passes) and is timed, not modelled.
"""

from __future__ import annotations

import torch
from torch import nn

from .optim_step import copy_bandwidth
from .timing import timed

#: WRN-40-4's first group at batch 128: the largest batch norm input of P3.
SHAPE = (128, 64, 32, 32)
BYTES_PASSES = 8
CASES = (("nhwc", torch.float32), ("nhwc", torch.bfloat16), ("nchw", torch.float32))


def _per_call(fn, device: str, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _, seconds = timed(lambda: [fn() for _ in range(repeats)], device)
    return seconds / repeats


def time_bn_relu(device: str, shape=SHAPE, cases=CASES, repeats: int = 20,
                 copy_mib: int = 256) -> list[dict]:  # fmt: skip
    """Per (layout, dtype): eager and fused ms per forward + backward, the speed-up, and the
    fused layer's bytes per second against a copy's measured here."""
    from ..problems.models.bn_relu import BatchNormReLU2d

    copy = copy_bandwidth(device, copy_mib)
    rows = []
    for layout, dtype in cases:
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, device=device, generator=gen).to(dtype)
        x = x.contiguous(memory_format=fmt).requires_grad_()
        dy = torch.randn(shape, device=device, generator=gen).to(dtype)
        dy = dy.contiguous(memory_format=fmt)
        times = {}
        for impl, cls in (("eager", nn.BatchNorm2d), ("fused", BatchNormReLU2d)):
            layer = cls(shape[1]).to(device)

            def step(layer=layer, x=x, dy=dy, eager=impl == "eager"):
                y = torch.relu(layer(x)) if eager else layer(x)
                return torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)

            times[impl] = _per_call(step, device, repeats)
        moved = BYTES_PASSES * x.numel() * x.element_size()
        rows.append({"layout": layout, "dtype": str(dtype).removeprefix("torch."),
                     "shape": "x".join(map(str, shape)), "eager_ms": times["eager"] * 1e3,
                     "fused_ms": times["fused"] * 1e3, "speed_up": times["eager"] / times["fused"],
                     "fused_gb_per_s": moved / times["fused"] / 1e9,
                     "fused_vs_copy": moved / times["fused"] / copy})  # fmt: skip
    return rows
