"""Batch norm followed by ReLU as one module whose training step runs fused Triton kernels.

``BatchNormReLU2d`` is an ``nn.BatchNorm2d`` (the same parameters, buffers and state-dict
keys, so checkpoints move freely between a fused and an eager model) whose forward in
training mode is ``relu(batch_norm(x))`` computed by ``_bn_relu_triton``: the statistics in
one pass, the normalised, shifted and rectified output in a second, and in the backward
pass two more, where eager PyTorch runs batch norm and ReLU as separate kernels and keeps
both outputs. The running statistics are updated as ``nn.BatchNorm2d`` updates them
(momentum, unbiased variance, ``num_batches_tracked``). Evaluation mode, float64 and
the settings the kernels do not cover (no affine, no running statistics, cumulative
averaging) run the eager ``relu(batch_norm(x))``, which is the reference
(``bn_relu_reference``) the kernels are tested against (tests/test_bn_relu.py).

Seed-parallel groups call the model under ``vmap``: ``_BNReLU.vmap`` folds the members into
the kernels' leading dimension (K members, each with its own statistics, parameters and
running buffers, updated in place) instead of a loop.

The kernels are Triton's, so the module runs on CUDA devices, and on the CPU only under
``TRITON_INTERPRET=1`` (tests); elsewhere it says so in one line.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn


def bn_relu_reference(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``relu(bn(x))``: eager PyTorch, the literal reference."""
    return torch.relu(nn.BatchNorm2d.forward(bn, x))


def kernels_available(device: torch.device | str) -> str | None:
    """None when the Triton kernels can run on ``device``, else why not (one line)."""
    if torch.device(device).type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"its Triton kernels need a CUDA device, not {device}"


def _dense(t: Tensor) -> Tensor:
    """``t`` as the kernels index (K, C) values: contiguous float32 (itself if it is)."""
    return t.detach().float().contiguous()


class _BNReLU(torch.autograd.Function):
    """relu(batch_norm(x)) in training mode for x (K, N, C, H, W) and weight, bias and
    running statistics (K, C): K independent batch norms. Outputs y, and the per-channel
    mean, invstd, scale and shift (4, K, C), which are not differentiable."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, eps, momentum):
        from . import _bn_relu_triton as kern

        m = x.shape[1] * x.shape[3] * x.shape[4]
        if m < 2:
            raise ValueError(
                f"batch norm needs more than 1 value per channel in training, got input "
                f"shape {tuple(x.shape[1:])}"
            )
        stats = [_dense(running_mean), _dense(running_var)]
        y, channel = kern.forward(x, _dense(weight), _dense(bias), *stats, eps, momentum)
        for buffer, new in zip((running_mean, running_var), stats, strict=True):
            if new.data_ptr() != buffer.data_ptr():  # updated in a copy: written back
                buffer.copy_(new)
        return y, channel

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight = inputs[:2]
        _, channel = output
        ctx.mark_non_differentiable(channel)
        ctx.save_for_backward(x, weight, channel)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dchannel):
        from . import _bn_relu_triton as kern

        x, weight, channel = ctx.saved_tensors
        dx, dweight, dbias = kern.backward(dy, x, _dense(weight), channel)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, running_mean, running_var, eps, momentum):
        if in_dims[3] is None or in_dims[4] is None:
            raise ValueError(
                "BatchNormReLU2d under vmap needs running statistics per member (stacked "
                "buffers, as torch.func.stack_module_state makes them)"
            )

        def members(t: Tensor, dim: int | None) -> Tensor:
            if dim is None:  # shared by the members: the same tensor for each
                t = t.unsqueeze(0).expand(info.batch_size, *t.shape)
            else:
                t = t.movedim(dim, 0)
            return t.flatten(0, 1)  # (B, K, ...) -> (B*K, ...): a view for stacked buffers

        args = [members(t, d) for t, d in zip((x, weight, bias, running_mean, running_var),
                                              in_dims[:5], strict=True)]  # fmt: skip
        y, channel = _BNReLU.apply(*args, eps, momentum)
        return (y.unflatten(0, (info.batch_size, -1)),
                channel.unflatten(1, (info.batch_size, -1))), (0, 1)  # fmt: skip


class BatchNormReLU2d(nn.BatchNorm2d):
    """``relu(BatchNorm2d(x))``; in training mode through fused Triton kernels (module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        fused = (
            self.training
            and self.affine
            and self.track_running_stats
            and self.momentum is not None
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        )
        if not fused:
            return bn_relu_reference(x, self)
        why = kernels_available(x.device)
        if why is not None:
            raise RuntimeError(f"BatchNormReLU2d: {why}; build the model without fused_bn_relu")
        self.num_batches_tracked.add_(1)
        y, _ = _BNReLU.apply(
            x.unsqueeze(0),
            self.weight.unsqueeze(0),
            self.bias.unsqueeze(0),
            self.running_mean.unsqueeze(0),
            self.running_var.unsqueeze(0),
            self.eps,
            self.momentum,
        )
        return y.squeeze(0)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", relu=fused"
