"""P4: the two-layer char-LSTM on War and Peace with stateful, unshuffled batches.

The training split is cut into ``batch_size`` contiguous streams; consecutive batches
continue each stream by ``seq_length`` characters, and the targets are the inputs shifted by
one. The LSTM state is carried from batch to batch (detached) and reset to zero at the start
of every training epoch and every evaluation pass; an evaluation in the middle of an epoch
leaves the training state as it found it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .base import Problem, ProblemConfig
from .batching import Batch, stream_batches, stream_view
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

    def default_source(self) -> TextSource:
        return TextSource()

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
        if getattr(self, "_data_fingerprint", None) is None:
            cfg = self.config
            manifest = tolstoi_manifest(cfg.data_root, cfg.mirror, self.source)
            self._data_fingerprint = manifest.fingerprint
        return self._data_fingerprint

    def make_model(self) -> nn.Module:
        return CharRNN(self.config.vocab_size, 128, self.config.keep_prob)

    def train_batches(self, seed: int) -> Iterator[Batch]:
        """DeepOBS's batches, epoch after epoch; ``seed`` has no effect (nothing is shuffled)."""
        x, y = stream_view(self.data.train, self.batch_size, self.config.seq_length, True)
        epoch = 0
        while True:
            yield from stream_batches(x, y, self.config.seq_length, epoch)
            epoch += 1

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """Test split, or the first len(test) characters of the training split."""
        test = self.data.test
        tokens = test if split == "test" else self.data.train[: test.numel()]
        x, y = stream_view(tokens, self.batch_size, self.config.seq_length, False)
        return stream_batches(x, y, self.config.seq_length)

    def before_batch(self, model: nn.Module, batch: Batch) -> None:
        if batch.epoch_start:
            model.reset_state()

    @contextlib.contextmanager
    def evaluation_context(self, model: nn.Module):
        saved = model.state
        model.reset_state()
        try:
            yield
        finally:
            model.state = saved
