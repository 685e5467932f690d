"""Mini-batches by indexing resident tensors: shuffled epochs and stateful text streams.

No DataLoader and no per-sample Python: an image batch is one index into the data set with
a slice of a seeded permutation; a text batch is one slice of a (streams, length) view.

Training iterators (``TrainBatches``) can say where they are (``state()``) and start again
from there, at a cost that does not grow with the number of batches drawn: a resumed run
gets the very batches it would have drawn next, without replaying the ones before.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

#: Version of the dict ``TrainBatches.state()`` returns; a state of another version is
#: refused rather than misread.
STATE_FORMAT = 1


class Batch(NamedTuple):
    """Inputs and targets on the data's device; ``epoch_start`` marks an epoch's first batch."""

    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int
    epoch_start: bool


class TrainBatches(Iterator[Batch]):
    """Training batches, forever, whose position can be saved and resumed.

    ``state()`` is a small dict of ints, strings, None and CPU tensors (``torch.save``-able)
    from which the problem's ``train_batches(seed, state=...)`` continues with exactly the
    batches this iterator would yield next. ``step`` counts the batches drawn so far.
    """

    step: int

    def __iter__(self) -> TrainBatches:
        return self

    @abstractmethod
    def __next__(self) -> Batch: ...

    @abstractmethod
    def state(self) -> dict:
        """Where the iterator is: resume with ``problem.train_batches(seed, state=...)``."""

    @abstractmethod
    def skip(self, n: int) -> None:
        """Advance by ``n`` batches exactly as drawing them would (the same random draws),
        without forming them: catching up with a checkpoint that holds no data state."""


def check_state(state, identity: dict) -> None:
    """Refuse a data state that is not of this format, problem, seed and data layout."""
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"not a training-batch state (a dict with a 'format'): {type(state)}")
    if state["format"] != STATE_FORMAT:
        raise ValueError(
            f"training-batch state of format {state['format']!r}; this version reads format "
            f"{STATE_FORMAT} only"
        )
    wrong = {k: (state.get(k), v) for k, v in identity.items() if state.get(k) != v}
    if wrong:
        said = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise ValueError(f"this training-batch state belongs to another run or data layout: {said}")


def _count(n: int) -> int:
    if n < 0:
        raise ValueError(f"cannot skip a negative number of batches ({n})")
    return n


def epoch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Index batches of shuffled epochs, forever; each epoch's remainder is dropped (DeepOBS).

    The permutation comes from a CPU generator, so that a seed gives the same batches on
    every device, and moves to ``device`` once per epoch. ``ShuffledBatches`` draws the same
    indices and can also save its position.
    """
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(n // batch_size):
            yield perm[i * batch_size : (i + 1) * batch_size]


class ShuffledBatches(TrainBatches):
    """``epoch_indices`` from ``torch.Generator().manual_seed(seed)``, each index batch made
    into a batch by ``form(idx, generator) -> (inputs, targets)``, which may draw from the
    same generator after the permutation (CIFAR's augmentation); ``draws(generator)`` makes
    exactly the draws ``form`` makes, without the rest of its work (``skip``).

    The state is the generator's, the number of batches drawn and the current epoch's
    permutation (None when the next batch starts an epoch): resuming sets the generator and
    moves that permutation to the device, whatever the step.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        form: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
        draws: Callable[[torch.Generator], object],
        identity: dict,
        state: dict | None = None,
    ):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.per_epoch = n // batch_size
        self._form, self._draws = form, draws
        self._identity = {"format": STATE_FORMAT, **identity, "seed": seed, "examples": n,
                          "batch_size": batch_size}  # fmt: skip
        self._gen = torch.Generator()
        self._perm = self._perm_device = None
        if state is None:
            self._gen.manual_seed(seed)
            self.step = 0
            return
        check_state(state, self._identity)
        step, perm = int(state["step"]), state["permutation"]
        if step < 0 or (perm is None) != (step % self.per_epoch == 0):
            raise ValueError(f"inconsistent training-batch state: step {step}, permutation "
                             f"{'absent' if perm is None else 'present'}")  # fmt: skip
        if perm is not None:
            if perm.shape != (n,) or perm.dtype != torch.int64:
                raise ValueError(f"the state's permutation is {perm.dtype} {tuple(perm.shape)}, "
                                 f"not int64 ({n},)")  # fmt: skip
            self._perm = perm.cpu()
        self._gen.set_state(state["generator"].cpu())
        self.step = step

    def __next__(self) -> Batch:
        i = self.step % self.per_epoch
        if i == 0:
            self._perm, self._perm_device = torch.randperm(self.n, generator=self._gen), None
        if self._perm_device is None:  # once per epoch (or per resume)
            self._perm_device = self._perm.to(self.device)
        idx = self._perm_device[i * self.batch_size : (i + 1) * self.batch_size]
        inputs, targets = self._form(idx, self._gen)
        batch = Batch(inputs, targets, self.step // self.per_epoch, i == 0)
        self.step += 1
        return batch

    def skip(self, n: int) -> None:
        for _ in range(_count(n)):
            if self.step % self.per_epoch == 0:
                self._perm, self._perm_device = torch.randperm(self.n, generator=self._gen), None
            self._draws(self._gen)
            self.step += 1

    def state(self) -> dict:
        at_epoch_start = self.step % self.per_epoch == 0
        return {
            **self._identity,
            "step": self.step,
            "generator": self._gen.get_state(),
            # Permutations are never written to after they are drawn, so the state can
            # share this one rather than copy 8 bytes per example.
            "permutation": None if at_epoch_start else self._perm,
        }


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


class StreamBatches(TrainBatches):
    """``stream_batches`` over (B, L) streams of whole windows, epoch after epoch.

    Nothing is random, so the state is the number of batches drawn (and what identifies the
    run and the layout); batch ``s`` is window ``s mod (L / T)`` of epoch ``s div (L / T)``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seq_length: int, seed: int,
                 identity: dict, state: dict | None = None):  # fmt: skip
        self.x, self.y, self.seq_length = x, y, seq_length
        if x.shape[1] % seq_length:
            raise ValueError(f"streams of {x.shape[1]} are not whole windows of {seq_length}")
        self.per_epoch = x.shape[1] // seq_length
        self._identity = {"format": STATE_FORMAT, **identity, "seed": seed,
                          "streams": x.shape[0], "seq_length": seq_length,
                          "batches_per_epoch": self.per_epoch}  # fmt: skip
        self.step = 0
        if state is not None:
            check_state(state, self._identity)
            self.step = int(state["step"])
            if self.step < 0:
                raise ValueError(f"inconsistent training-batch state: step {self.step}")

    def __next__(self) -> Batch:
        k = self.step % self.per_epoch
        t = k * self.seq_length
        window = slice(t, t + self.seq_length)
        batch = Batch(self.x[:, window], self.y[:, window], self.step // self.per_epoch, k == 0)
        self.step += 1
        return batch

    def skip(self, n: int) -> None:
        self.step += _count(n)

    def state(self) -> dict:
        return {**self._identity, "step": self.step}
