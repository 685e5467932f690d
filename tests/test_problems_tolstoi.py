"""tolstoi_char_rnn: DeepOBS's stateful streams, and the LSTM state's carry and reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissecting_adam import problems
from dissecting_adam.problems.batching import stream_view
from dissecting_adam.problems.datasets import synthetic

TEXT = "".join(f"{i} The Rostovs' house on the Povarskaya was full of guests.\n" for i in range(12))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    source = synthetic.write_text(mirror, TEXT, deletions=((1, 3),))
    root = tmp_path_factory.mktemp("data")
    # keep_prob 1: no dropout, so outputs can be compared exactly.
    return problems.load(
        "tolstoi_char_rnn",
        source=source,
        data_root=str(root),
        mirror=str(mirror),
        batch_size=3,
        seq_length=7,
        keep_prob=1.0,
    )


def deepobs_batches(arr: np.ndarray, batch_size: int, seq_length: int):
    """DeepOBS's tolstoi._make_dataset, verbatim in numpy."""
    num_batches = int(np.floor((np.size(arr) - 1) / (batch_size * seq_length)))
    x = arr[: num_batches * batch_size * seq_length]
    y = arr[1 : num_batches * batch_size * seq_length + 1]
    x_batches = np.split(x.reshape(batch_size, -1), num_batches, 1)
    y_batches = np.split(y.reshape(batch_size, -1), num_batches, 1)
    return np.array(x_batches), np.array(y_batches)


def test_training_batches_are_deepobs_batches_epoch_after_epoch(problem):
    X, Y = deepobs_batches(problem.data.train.numpy(), 3, 7)
    it = problem.train_batches(seed=0)
    got = [next(it) for _ in range(2 * len(X))]
    for k, b in enumerate(got):
        np.testing.assert_array_equal(b.inputs.numpy(), X[k % len(X)])
        np.testing.assert_array_equal(b.targets.numpy(), Y[k % len(X)])
        assert b.epoch == k // len(X) and b.epoch_start == (k % len(X) == 0)
    # The seed changes nothing: DeepOBS does not shuffle this data set.
    assert torch.equal(next(problem.train_batches(seed=5)).inputs, got[0].inputs)


def test_eval_streams_leave_fewer_than_one_target_per_stream_out(problem):
    n = problem.data.test.numel()
    for split in ("test", "train_eval"):
        batches = list(problem.eval_batches(split))
        targets = sum(b.targets.numel() for b in batches)
        assert targets == 3 * ((n - 1) // 3) and n - 1 - targets < 3
        assert [b.epoch_start for b in batches] == [True] + [False] * (len(batches) - 1)
        first = torch.cat([b.inputs for b in batches], dim=1)[0]
        tokens = problem.data.test if split == "test" else problem.data.train[:n]
        assert torch.equal(first, tokens[: first.numel()])  # stream 0 is the text's start


def test_stream_view_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(23)
    x, y = stream_view(tokens, streams=2, seq_length=5, whole_batches=True)
    assert x.shape == (2, 10) and torch.equal(y, x + 1)
    x, y = stream_view(tokens, streams=2, seq_length=5, whole_batches=False)
    assert x.shape == (2, 11) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="too few"):
        stream_view(torch.arange(5), streams=3, seq_length=5, whole_batches=True)


def test_state_is_carried_between_batches(problem):
    model = problem.build_model(0)
    it = problem.train_batches(0)
    b1, b2 = next(it), next(it)
    problem.training_loss(model, b1)
    carried = model(b2.inputs)
    # The same characters in one long sequence from a zero state.
    model.reset_state()
    whole = model(torch.cat([b1.inputs, b2.inputs], dim=1))
    torch.testing.assert_close(carried, whole[:, 7:], atol=1e-5, rtol=1e-5)
    assert all(not t.requires_grad for s in model.state for t in s)  # detached


def test_state_is_reset_at_each_epoch_start(problem):
    model = problem.build_model(0)
    per_epoch = len(deepobs_batches(problem.data.train.numpy(), 3, 7)[0])
    it = problem.train_batches(0)
    for _ in range(per_epoch):
        problem.training_loss(model, next(it))
    assert model.state is not None
    b = next(it)
    assert b.epoch_start and b.epoch == 1
    loss_reset = problem.training_loss(model, b)
    fresh = problem.build_model(0)
    loss_fresh = problem.training_loss(fresh, b)
    assert loss_reset.item() == pytest.approx(loss_fresh.item(), rel=1e-6)


def test_evaluation_starts_from_zero_state_and_restores_the_training_state(problem):
    model = problem.build_model(0)
    reference = problem.evaluate(model, "test")
    it = problem.train_batches(0)
    problem.training_loss(model, next(it))
    saved = [t.clone() for s in model.state for t in s]
    again = problem.evaluate(model, "test")
    assert again == reference  # the carried training state did not leak in
    for a, b in zip(saved, (t for s in model.state for t in s), strict=True):
        assert torch.equal(a, b)


def test_dropout_acts_in_training_only():
    model = problems.load("tolstoi_char_rnn").build_model(0)
    x = torch.randint(0, 83, (2, 9))
    model.eval()
    a = model(x)
    model.reset_state()
    b = model(x)
    assert torch.equal(a, b)
    model.train()
    model.reset_state()
    assert not torch.allclose(model(x), a)
