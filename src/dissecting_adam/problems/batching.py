"""Mini-batches by indexing resident tensors: shuffled epochs and stateful text streams.

No DataLoader and no per-sample Python: an image batch is one index into the data set with
a slice of a seeded permutation; a text batch is one slice of a (streams, length) view.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """Inputs and targets on the data's device; ``epoch_start`` marks an epoch's first batch."""

    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int
    epoch_start: bool


def epoch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Index batches of shuffled epochs, forever; each epoch's remainder is dropped (DeepOBS).

    The permutation comes from a CPU generator, so that a seed gives the same batches on
    every device, and moves to ``device`` once per epoch.
    """
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(n // batch_size):
            yield perm[i * batch_size : (i + 1) * batch_size]


def stream_view(tokens: torch.Tensor, streams: int, seq_length: int, whole_batches: bool):
    """Cut ``tokens`` into ``streams`` contiguous rows of inputs and of targets (shifted by 1).

    ``whole_batches=True`` is DeepOBS's layout: each row holds a whole number of
    ``seq_length`` windows and the rest of the text is dropped (training). ``False`` keeps
    rows as long as possible, floor((n - 1) / streams), and the last window is shorter
    (evaluation: fewer than ``streams`` targets are left out).
    """
    n = tokens.numel() - 1  # the last character has no target
    if whole_batches:
        length = n // (streams * seq_length) * seq_length
    else:
        length = n // streams
    if length == 0:
        raise ValueError(
            f"{tokens.numel()} characters are too few for {streams} streams of {seq_length}"
        )
    x = tokens[: streams * length].view(streams, length)  # (B, L)
    y = tokens[1 : streams * length + 1].view(streams, length)  # (B, L)
    return x, y


def stream_batches(x: torch.Tensor, y: torch.Tensor, seq_length: int, epoch: int = 0):
    """One pass over the streams: consecutive (B, T) windows continue each row."""
    for k, t in enumerate(range(0, x.shape[1], seq_length)):
        yield Batch(x[:, t : t + seq_length], y[:, t : t + seq_length], epoch, k == 0)
