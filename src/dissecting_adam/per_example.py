"""Per-example gradient statistics of a mini-batch with ``torch.func`` (paper §D).

For a mini-batch B with per-example data losses l_k (the training loss is their mean plus
the regulariser), ``batch_moments`` returns for every trainable tensor

    g = (1/|B|) sum_k grad l_k                              (the mini-batch gradient)
    s = ((1/|B|) sum_k (grad l_k)^2 - g^2) / (|B| - 1)        (element-wise)

s is the unbiased estimate of the variance of g, the quantity M-SVAG's moving averages
estimate. It is computed from per-chunk means and sums of squared deviations combined
with Chan et al.'s pairwise update, which avoids the cancellation of the textbook form.
The regulariser adds the same vector to every per-example gradient, so it has no variance:
``backward_with_variance`` keeps it out of s and adds its gradient to g only.

Coverage (torch.func, ``vmap`` over ``grad``): fmnist_2c2d and cifar10_3c3d (convolutions,
pooling, dense layers) and tolstoi_char_rnn (one example = one stream of the batch, with
its own carried LSTM state; dropout is drawn independently per example; oneDNN's fused
LSTM kernel is switched off inside vmap, which has no batching rule for it). cifar100_wrn404 is
refused: BatchNorm in training mode normalises with statistics of the whole mini-batch, so
an example's gradient depends on the others and a per-example gradient is not defined.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

#: Values of per-example gradients held at once (chunk size x trainable values: 512 MB in float32).
CHUNK_VALUES = 1 << 27


class PerExampleError(RuntimeError):
    """Per-example gradients are not defined or not available for this model or batch."""


@dataclass
class BatchMoments:
    """Mean data loss, and per trainable tensor (by name) the mean gradient g and s."""

    loss: Tensor
    grad: dict[str, Tensor]
    variance: dict[str, Tensor]
    state: tuple | None = None  # a stateful model's new state (tolstoi's LSTM)


def check_supported(model: nn.Module, what: str = "this model") -> None:
    """Raise ``PerExampleError`` if per-example gradients of ``model`` are not defined."""
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise PerExampleError(
            f"The mini-batch variance estimate needs per-example gradients, which are not "
            f"defined for {what}: BatchNorm in training mode ({len(norms)} layers, e.g. "
            f"{norms[0]!r}) normalises each example with statistics of the whole mini-batch. "
            "Use the moving-average variance instead (optimizer=msvag or optimizer=svag)."
        )


class _FromState(nn.Module):
    """Calls ``inner.forward_from(x, state)`` so that functional_call reaches it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, state):
        return self.inner.forward_from(x, state)


def _example_loss(module: nn.Module, stateful: bool):
    """l_k(params, consts, x_k, y_k, state_k) -> (loss_k, new state_k) for one example."""

    def loss(params, consts, x, y, state):
        x = x.unsqueeze(0)
        if stateful:
            state = None if state is None else tuple((h[:, None], c[:, None]) for h, c in state)
            logits, new = functional_call(module, (params, consts), (x, state))
            new = tuple((h[:, 0].detach(), c[:, 0].detach()) for h, c in new)
        else:
            logits, new = functional_call(module, (params, consts), (x,)), ()
        return F.cross_entropy(logits.flatten(0, -2), y.reshape(-1)), new

    return loss


def batch_moments(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    state: tuple | None = None,
    *,
    chunk_size: int | None = None,
) -> BatchMoments:
    """Mean loss, mean gradient and variance estimate s of a mini-batch (see module doc).

    Args:
        model: the network (in its current train/eval mode); one example is one row of
            ``inputs``. A model with ``forward_from(x, state) -> (logits, state)`` is run
            through it with ``state`` (per-row tensors of shape (layers, B, H)).
        inputs, targets: the mini-batch; the loss is cross-entropy, averaged over an
            example's targets (tokens) and then over the examples.
        chunk_size: examples per vmap call (default: as many as keep ~128M values).
    """
    check_supported(model)
    n = inputs.shape[0]
    if n < 2:
        raise PerExampleError(
            f"A variance estimate from one mini-batch needs at least 2 examples, got {n}; "
            "raise the batch size."
        )
    stateful = hasattr(model, "forward_from")
    if stateful and state is None:
        # An explicit zero state (what None means): vmap cannot batch the LSTM's own zeros.
        state = model.zero_state(n, next(model.parameters()))
    module = _FromState(model) if stateful else model
    prefix = "inner." if stateful else ""
    params = {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}
    consts = {k: p.detach() for k, p in module.named_parameters() if not p.requires_grad}
    consts.update(dict(module.named_buffers()))
    if chunk_size is None:
        chunk_size = max(1, CHUNK_VALUES // max(1, sum(p.numel() for p in params.values())))
    # Per example: (grads, (loss, new state)); states stack along their batch dim 1.
    per_example = vmap(
        grad_and_value(_example_loss(module, stateful), has_aux=True),
        in_dims=(None, None, 0, 0, None if state is None else 1),
        out_dims=(0, (0, 1)),
        randomness="different",
    )
    count, mean, m2 = 0, {}, {}
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)
    states = []
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        part = None if state is None else tuple((h[:, lo:hi], c[:, lo:hi]) for h, c in state)
        # oneDNN's fused LSTM has no vmap batching rule (vmap would loop over the examples,
        # ~3x slower on P4); without it the LSTM runs as batchable ops.
        with torch.enable_grad(), warnings.catch_warnings(), _without_onednn():
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            grads, (losses, new) = per_example(params, consts, inputs[lo:hi], targets[lo:hi], part)
        loss_sum += losses.detach().double().sum()
        if stateful:
            states.append(new)
        for k, gk in grads.items():
            _combine(k, gk.detach(), count, mean, m2)
        count += hi - lo
    variance = {k: m2[k].div_(n * (n - 1)).clamp_(min=0.0) for k in m2}
    strip = len(prefix)
    new_state = None
    if stateful:
        new_state = tuple(
            (torch.cat([s[i][0] for s in states], 1), torch.cat([s[i][1] for s in states], 1))
            for i in range(len(states[0]))
        )
    return BatchMoments(
        loss=(loss_sum / n).to(next(iter(mean.values())).dtype),
        grad={k[strip:]: v for k, v in mean.items()},
        variance={k[strip:]: v for k, v in variance.items()},
        state=new_state,
    )


@contextlib.contextmanager
def _without_onednn():
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _combine(key: str, g: Tensor, count: int, mean: dict, m2: dict) -> None:
    """Merge a chunk of per-example gradients (c, ...) into the running mean and M2."""
    c = g.shape[0]
    chunk_mean = g.mean(0)
    # In place: g is this chunk's own buffer, and allocating another one of its size
    # costs as much as the arithmetic (P1: 65M values a chunk).
    chunk_m2 = g.sub_(chunk_mean).square_().sum(0)
    if count == 0:
        mean[key], m2[key] = chunk_mean, chunk_m2
        return
    total = count + c
    delta = chunk_mean - mean[key]
    mean[key].add_(delta, alpha=c / total)
    m2[key].add_(chunk_m2).add_(delta.square_(), alpha=count * c / total)


def backward_with_variance(problem, model: nn.Module, batch) -> Tensor:
    """The training step's backward pass for a mini-batch-variance optimizer.

    Sets ``p.grad`` (mean data-loss gradient + the regulariser's gradient) and
    ``p.batch_variance`` (s of the data loss only) on every trainable parameter, carries a
    stateful model's state, and returns the training loss (detached), like
    ``problem.training_loss(model, batch)`` followed by ``backward()``.
    """
    if batch.epoch_start and hasattr(model, "reset_state"):  # as the LSTM's training_loss
        model.reset_state()
    state = getattr(model, "state", None) if hasattr(model, "forward_from") else None
    if state is not None and state[0][0].shape[1] != batch.inputs.shape[0]:
        state = None
    moments = batch_moments(model, batch.inputs, batch.targets, state)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = moments.grad[name]
        p.grad = g if p.grad is None else p.grad.add_(g)
        p.batch_variance = moments.variance[name]
    reg = problem.l2_term(model)
    if reg.requires_grad:
        reg.backward()
    if moments.state is not None:
        model.state = moments.state
    return moments.loss + reg.detach()
