"""P4: the two-layer char-LSTM on War and Peace with stateful, unshuffled batches.

The training split is cut into ``batch_size`` contiguous streams; consecutive batches
continue each stream by ``seq_length`` characters, and the targets are the inputs shifted by
one. The LSTM state is carried from batch to batch (detached) and reset to zero at the start
of every training epoch and every evaluation pass; an evaluation in the middle of an epoch
leaves the training state as it found it.

K members at once (``batched_loss``): the state is carried per member, stacked (K, 1, B, H),
and reset per member at its epoch starts; dropout masks are drawn member by member from each
member's own RNG stream, outside vmap, as the single model's ``nn.Dropout`` calls draw them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Problem, ProblemConfig
from .batched import BatchedLoss
from .batching import Batch, StreamBatches, stream_batches, stream_view
from .datasets import synthetic
from .datasets.integrity import DataError
from .datasets.tolstoi import TextData, TextSource, load_tolstoi, tolstoi_manifest
from .models.char_rnn import CharRNN


@dataclass(frozen=True)
class TolstoiData:
    """The character ids on the device; ``vocab`` stays a tuple of characters."""

    train: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    fingerprint: str = ""

    def to(self, device) -> TolstoiData:
        return TolstoiData(
            self.train.to(device), self.test.to(device), self.vocab, self.fingerprint
        )


@dataclass(frozen=True)
class TolstoiCharRNNConfig(ProblemConfig):
    batch_size: int = 50  # parallel streams
    num_steps: int = 200_000  # [S?]
    lr_milestones: tuple[int, ...] = (125_000,)  # [S?]
    lr_gamma: float = 0.1  # [S?]
    seq_length: int = 50
    keep_prob: float = 0.8
    vocab_size: int = 83  # DeepOBS hard-codes the size of War and Peace's vocabulary


class TolstoiCharRNN(Problem):
    name = "tolstoi_char_rnn"
    Config = TolstoiCharRNNConfig
    seed_parallel = True
    group_draws = True  # dropout, member by member

    def default_source(self) -> TextSource:
        return TextSource()

    @classmethod
    def standin(cls, folder: Path, min_train: int = 1) -> TextSource:
        """80 lines of the novel's first sentence, in the real file's encoding (a training
        example is a stream position: every batch size fits)."""
        text = "".join(
            f"Line {i}: Well, Prince, so Genoa and Lucca are now family estates.\n"
            for i in range(80)
        )
        return synthetic.write_text(folder, text)

    def load_data(self) -> TolstoiData:
        text: TextData = load_tolstoi(self.config.data_root, self.config.mirror, self.source)
        if len(text.vocab) > self.config.vocab_size:
            raise DataError(
                f"The text has {len(text.vocab)} distinct characters, more than the model's "
                f"vocab_size={self.config.vocab_size}: is it the right file?"
            )
        self._data_fingerprint = text.fingerprint
        return TolstoiData(text.train, text.test, text.vocab, text.fingerprint)

    def data_fingerprint(self) -> str:
        """16 hex digits identifying the data: a hash of the verified text's manifest (its
        sha256 and the preprocessing settings). That of the data this problem loaded, if it
        did; else the text is prepared and verified (not preprocessed)."""
        if self._data_fingerprint is None:
            cfg = self.config
            manifest = tolstoi_manifest(cfg.data_root, cfg.mirror, self.source)
            self._data_fingerprint = manifest.fingerprint
        return self._data_fingerprint

    def make_model(self) -> nn.Module:
        return CharRNN(self.config.vocab_size, 128, self.config.keep_prob)

    def train_batches(self, seed: int, state: dict | None = None) -> StreamBatches:
        """DeepOBS's batches, epoch after epoch; ``seed`` has no effect (nothing is shuffled)
        but is recorded in the state, which resumes this seed's iterator only."""
        seq_length = self.config.seq_length
        x, y = stream_view(self.data.train, self.batch_size, seq_length, True)
        return StreamBatches(x, y, seq_length, seed, {"problem": self.name}, state)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """Test split, or the first len(test) characters of the training split."""
        test = self.data.test
        tokens = test if split == "test" else self.data.train[: test.numel()]
        x, y = stream_view(tokens, self.batch_size, self.config.seq_length, False)
        return stream_batches(x, y, self.config.seq_length)

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The LSTM's state carries over from batch to batch; each pass over the text
        starts from a zero state (DeepOBS)."""
        if batch.epoch_start:
            model.reset_state()
        return super().training_loss(model, batch)

    def evaluate(self, model: nn.Module, split: str = "test", max_batches: int | None = None):
        """An evaluation pass starts from a zero state and leaves training's state as it was."""
        saved = model.state
        model.reset_state()
        try:
            return super().evaluate(model, split, max_batches)
        finally:
            model.state = saved

    def batched_loss(self, template: nn.Module) -> BatchedLoss:
        return CharRNNBatchedLoss(self, template)


class _MemberLoss(nn.Module):
    """One member's training loss and final LSTM state, given its state and dropout masks."""

    def __init__(self, problem: Problem, model: CharRNN):
        super().__init__()
        self.problem, self.model = problem, model

    def forward(self, inputs, targets, state, masks):
        logits, state = self.model.forward_masked(inputs, state, masks)
        data_loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
        return data_loss + self.problem.l2_term(self.model), state


class CharRNNBatchedLoss(BatchedLoss):
    """K char-LSTMs: carried state ((h, c) per layer, each (K, 1, B, H)), per-member resets
    at epoch starts, and dropout masks from each member's RNG stream.

    Per step, member k's four masks are drawn with its stream as the global one
    (``member_rng.each()``), for k = 0..K-1, before
    the batched forward pass: exactly the random numbers its single run's training forward
    draws (and nothing else is drawn there).
    """

    def __init__(self, problem: Problem, template: nn.Module):
        super().__init__(problem, template)
        self._model.reset_state()  # the copy's; members' states are carried, not kept here
        self._layout_cache = None

    def member_module(self, problem: Problem, model: nn.Module) -> nn.Module:
        return _MemberLoss(problem, model)

    @property
    def _model(self) -> CharRNN:
        return self.module.model

    def _zeros(self, k: int, batch: int, device, dtype):
        hidden = self._model.lstm1.hidden_size
        zeros = lambda: torch.zeros(k, 1, batch, hidden, device=device, dtype=dtype)  # noqa: E731
        return tuple((zeros(), zeros()) for _ in range(2))

    def init_carried(self, k: int, device):
        dtype = self._model.embedding.weight.dtype
        return self._zeros(k, self.problem.batch_size, device, dtype)

    def __call__(self, params, buffers, batches, carried, member_rng):
        inputs = torch.stack([b.inputs for b in batches])  # (K, B, T)
        targets = torch.stack([b.targets for b in batches])
        K, B, T = inputs.shape
        dtype, device = params["embedding.weight"].dtype, inputs.device
        starts = [b.epoch_start for b in batches]
        if carried is None or carried[0][0].shape[2] != B:  # as CharRNN: start afresh
            carried = self._zeros(K, B, device, dtype)
        elif any(starts):  # training_loss's reset, for these members only
            keep = torch.tensor([not s for s in starts], device=device).view(K, 1, 1, 1)
            carried = tuple(tuple(torch.where(keep, t, 0.0) for t in layer) for layer in carried)
        ones = self._ones(B, T, dtype, device)
        drawn = [self._model.dropout_masks(ones) for _ in member_rng.each()]
        masks = tuple(torch.stack(m) for m in zip(*drawn, strict=True))  # 4 x (K, B, T, H)
        losses, state = self.fn(params, buffers, inputs, targets, carried, masks)
        return losses, tuple(tuple(t.detach() for t in layer) for layer in state)

    def _ones(self, batch: int, steps: int, dtype, device):
        """Ones in the layouts of the four dropped tensors, made once per shape (no graph)."""
        key = (batch, steps, dtype, torch.device(device))
        if self._layout_cache is None or self._layout_cache[0] != key:
            layouts = self._model.dropout_layouts(batch, steps, dtype, device)
            ones = tuple(torch.ones_like(t, requires_grad=False) for t in layouts)
            self._layout_cache = (key, ones)
        return self._layout_cache[1]

    def carried_of(self, carried, k: int):
        """Member k's state as ``CharRNN.state`` holds it: ((h, c), (h, c)), each (1, B, H)."""
        if carried is None:
            return None
        return tuple((h[k].clone(), c[k].clone()) for h, c in carried)

    def with_member(self, carried, k: int, state):
        """A copy of ``carried`` whose member k starts from ``state`` (None: zeros, as a fresh
        CharRNN); ``carried`` must come from ``init_carried`` or a call."""
        new = tuple((h.clone(), c.clone()) for h, c in carried)
        with torch.no_grad():
            for i, (h, c) in enumerate(new):
                if state is None:
                    h[k].zero_()
                    c[k].zero_()
                    continue
                single_h, single_c = state[i]
                if single_h.shape != h[k].shape or single_c.shape != c[k].shape:
                    raise ValueError(
                        f"member state {tuple(single_h.shape)} does not fit the group's "
                        f"{tuple(h[k].shape)} (a different number of streams?)"
                    )
                h[k].copy_(single_h)
                c[k].copy_(single_c)
        return new
