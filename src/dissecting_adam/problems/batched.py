"""K members of one problem as one batched computation: their training loss, and their RNGs.

Member k is a network built by ``problem.build_model(seed_k)``; the K networks' parameters and
buffers are stacked along a new leading dimension (``torch.func.stack_module_state``) and one
``vmap`` of ``functional_call`` runs the K forward passes at once, member k on its own batch.
The backward pass of the sum of the K losses gives each member the gradient of its own loss;
BatchNorm's running statistics (stacked buffers) are updated in place per member. Member k's
loss, gradients and buffers equal those of its single model on the same batch, to float
tolerance (batched matmuls and convolutions sum in another order).

Problems that carry state from batch to batch or draw random numbers in training override
``Problem.batched_loss`` (tolstoi: the LSTM state, per member, and dropout masks drawn from
member k's own RNG stream, ``MemberRNG``, in the single run's order).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, vmap

from .batching import Batch

if TYPE_CHECKING:
    from .base import Problem


class _Loss(nn.Module):
    """``problem.training_loss`` as a module, so that ``functional_call`` can swap weights."""

    def __init__(self, problem: Problem, model: nn.Module):
        super().__init__()
        self.problem, self.model = problem, model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.problem.training_loss(self.model, Batch(inputs, targets, 0, False))


class BatchedLoss:
    """The training loss of K members of one problem at once (default: vmap of functional_call
    of problem.training_loss over stacked parameters and buffers; stateless problems)."""

    def __init__(self, problem: Problem, template: nn.Module):
        """``template``: a model of the problem (any member's); a copy moves to 'meta', so
        only its structure is kept and the caller's model is untouched."""
        self.problem = problem
        model = copy.deepcopy(template).to("meta").train()
        self.module = self.member_module(problem, model)
        self.fn = vmap(self._member)  # (K, ...) params, buffers and inputs -> (K, ...)

    def member_module(self, problem: Problem, model: nn.Module) -> nn.Module:
        """The module whose forward is one member's computation (called by functional_call
        with the member's tensors under the prefix ``model.``)."""
        return _Loss(problem, model)

    def _member(self, params: dict, buffers: dict, *args):
        full = {f"model.{n}": t for n, t in {**params, **buffers}.items()}
        return functional_call(self.module, full, args)

    def compile(self, mode: str | None = None) -> None:
        """Compile the K forward and backward passes as one graph (random draws, if any,
        stay outside it, in eager mode)."""
        self.fn = torch.compile(self.fn, mode=mode)

    def init_carried(self, k: int, device) -> object | None:
        """The state carried between batches at the start (None: the problem has none)."""
        return None

    def __call__(
        self, params: dict, buffers: dict, batches: list[Batch], carried, member_rng
    ) -> tuple[torch.Tensor, object]:
        """Losses (K,) and the new carried state. ``batches[k]`` is member k's Batch (its own
        iterator's). ``member_rng`` is the members' ``MemberRNG``: ``member_rng(k)`` (or
        ``member_rng.each()``) makes member k's RNG stream the global one; a problem that
        draws random numbers in training (dropout) draws member k's there. Buffers
        (BatchNorm) are updated in place per member."""
        inputs = torch.stack([b.inputs for b in batches])  # (K, B, ...)
        targets = torch.stack([b.targets for b in batches])
        return self.fn(params, buffers, inputs, targets), carried

    def carried_of(self, carried, k: int):
        """Member k's carried state in the single model's format, or None."""
        return None

    def with_member(self, carried, k: int, state):
        """``carried`` with member k's slice replaced by a single model's ``state`` (to resume
        a member from a single run's checkpoint)."""
        return carried


class MemberRNG:
    """K global-RNG streams, one per member: member k's starts as ``torch.manual_seed(seeds[k])``
    leaves the global state (CPU, and every CUDA device when CUDA is available, as the
    runner's checkpoints save it), and ``with rng(k):`` makes it the global one for the block.

    Member k thus draws exactly what a single run seeded with ``seeds[k]`` draws, provided
    that everything the single run draws from the global RNG is drawn inside ``rng(k)``, in
    the same order, and nothing else is.
    """

    def __init__(self, seeds: Sequence[int], cuda: bool | None = None):
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        devices = list(range(torch.cuda.device_count())) if self.cuda else []
        self._states = []
        for seed in seeds:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                self._states.append(self._get())

    def __len__(self) -> int:
        return len(self._states)

    def _get(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if self.cuda and "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])

    @contextlib.contextmanager
    def __call__(self, k: int) -> Iterator[None]:
        outer = self._get()
        self._set(self._states[k])
        try:
            yield
        finally:
            self._states[k] = self._get()
            self._set(outer)

    def each(self) -> Iterator[int]:
        """Member after member (k = 0..K-1), each with its stream as the global one while
        the loop body runs: what ``with rng(k)`` does for each k, with the outer state saved
        and put back once instead of K times (the char-LSTM draws its masks so each step)."""
        outer = self._get()
        try:
            for k in range(len(self._states)):
                self._set(self._states[k])
                yield k
                self._states[k] = self._get()
        finally:
            self._set(outer)

    def state(self, k: int) -> dict:
        """Member k's state: ``{"torch": ..., "cuda": [...]}`` (keys of a checkpoint's rng)."""
        return dict(self._states[k])

    def set_state(self, k: int, state: dict) -> None:
        """Set member k's stream, e.g. from a single run's checkpoint (other keys ignored)."""
        new = {"torch": state["torch"]}
        if self.cuda and "cuda" in state:
            new["cuda"] = state["cuda"]
        elif self.cuda:
            new["cuda"] = self._states[k]["cuda"]
        self._states[k] = new
