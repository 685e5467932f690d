"""Training batches resume from a saved state in constant time (issue 21).

``problem.train_batches(seed, state=it.state())`` must continue with exactly the batches
``it`` would have yielded next (inputs, targets, epoch, epoch_start; CIFAR's augmentation
included), after any number of batches, without replaying them. Data: tiny generated files in
the originals' formats, loaded through the real code.
"""

from __future__ import annotations

import copy
import io
import itertools
import time

import pytest
import torch

from dissecting_adam import problems
from dissecting_adam.problems.batching import STATE_FORMAT, Batch, epoch_indices
from dissecting_adam.problems.datasets import synthetic

NAMES = ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"]

TEXT = "".join(
    f"{i} Natasha ran through the ballroom, laughing at the old Count.\n" for i in range(30)
)

# Few batches per epoch, so that every test crosses epoch boundaries.
SMALL = {
    "fmnist_2c2d": {"batch_size": 8},  # 40 images: 5 batches per epoch
    "cifar10_3c3d": {"batch_size": 8},  # 44 images: 5 per epoch, 4 dropped
    "cifar100_wrn404": {"batch_size": 3},  # 10 images: 3 per epoch, 1 dropped
    "tolstoi_char_rnn": {"batch_size": 4, "seq_length": 10},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """name -> a small problem on generated data (loaded once per module)."""
    mirror = tmp_path_factory.mktemp("mirror")
    sources = {
        "fmnist_2c2d": synthetic.write_fashion_mnist(mirror, n_train=40, n_test=8),
        "cifar10_3c3d": synthetic.write_cifar(mirror, "cifar-10", n_train=44, n_test=8),
        "cifar100_wrn404": synthetic.write_cifar(mirror, "cifar-100", n_train=10, n_test=4),
        "tolstoi_char_rnn": synthetic.write_text(mirror, TEXT, deletions=((1, 2),)),
    }
    root = tmp_path_factory.mktemp("data")
    loaded = {
        name: problems.load(
            name, source=sources[name], data_root=str(root), mirror=str(mirror), **SMALL[name]
        )
        for name in NAMES
    }
    for p in loaded.values():
        p.data  # noqa: B018 - load now, not inside a timed or compared section
    return loaded


def per_epoch(problem) -> int:
    return problem.train_batches(0).per_epoch


def draw(it, k: int) -> list[Batch]:
    return [next(it) for _ in range(k)]


def assert_same(got: list[Batch], expected: list[Batch]) -> None:
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(a.inputs, b.inputs), f"inputs of batch {k} differ"
        assert torch.equal(a.targets, b.targets), f"targets of batch {k} differ"
        assert (a.epoch, a.epoch_start) == (b.epoch, b.epoch_start), f"batch {k}'s epoch"
        assert a.inputs.dtype == b.inputs.dtype and a.inputs.shape == b.inputs.shape


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def generator_batches(problem, seed: int):
    """The generator ``train_batches`` was before states (kept verbatim as the reference
    that stored runs were trained on)."""
    if problem.name == "tolstoi_char_rnn":
        from dissecting_adam.problems.batching import stream_batches, stream_view

        x, y = stream_view(problem.data.train, problem.batch_size, problem.config.seq_length, True)
        epoch = 0
        while True:
            yield from stream_batches(x, y, problem.config.seq_length, epoch)
            epoch += 1
    gen = torch.Generator().manual_seed(seed)
    data = problem.data
    n = len(data.train_labels)
    per = n // problem.batch_size
    for step, idx in enumerate(epoch_indices(n, problem.batch_size, gen, problem.device)):
        inputs = problem.train_transform(data.train_images[idx], gen)
        yield Batch(inputs, data.train_labels[idx], step // per, step % per == 0)


@pytest.mark.parametrize("name", NAMES)
def test_batches_are_those_of_the_generator_they_replace(small, name):
    p = small[name]
    k = 3 * per_epoch(p) + 2
    assert_same(draw(p.train_batches(7), k), list(itertools.islice(generator_batches(p, 7), k)))


@pytest.mark.parametrize("name", NAMES)
def test_resumed_batches_are_bit_identical(small, name):
    p = small[name]
    per = per_epoch(p)
    # At the start, mid-epoch, the last batch of an epoch, an epoch's first, and later.
    for n in sorted({0, 1, per - 1, per, per + 1, 2 * per + per // 2}):
        it = p.train_batches(3)
        draw(it, n)
        state = it.state()
        assert state["step"] == n
        expected = draw(it, 2 * per + 1)  # across at least two epoch boundaries
        assert_same(draw(p.train_batches(3, state=state), 2 * per + 1), expected)
        assert_same(draw(p.train_batches(3, state=saved_and_loaded(state)), 2 * per + 1), expected)


@pytest.mark.parametrize("name", NAMES)
def test_resuming_twice_and_from_a_resumed_iterator(small, name):
    p = small[name]
    per = per_epoch(p)
    expected = draw(p.train_batches(1), 4 * per)
    it = p.train_batches(1)
    got = draw(it, per + 1)
    it = p.train_batches(1, state=saved_and_loaded(it.state()))
    got += draw(it, per)
    it = p.train_batches(1, state=saved_and_loaded(it.state()))
    got += draw(it, 2 * per - 1)
    assert_same(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_a_snapshot_of_cpu_tensors_and_ints(small, name):
    p = small[name]
    per = per_epoch(p)
    it = p.train_batches(2)
    draw(it, per + 1)
    state = it.state()
    kept = copy.deepcopy(state)
    draw(it, 3 * per)  # later draws must not change a state taken before
    for key, value in state.items():
        assert isinstance(value, (int, str, torch.Tensor, type(None))), key
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu" and torch.equal(value, kept[key]), key
        else:
            assert value == kept[key], key
    assert state["format"] == STATE_FORMAT and state["problem"] == name and state["seed"] == 2
    if name != "tolstoi_char_rnn":
        assert state["permutation"].shape == (len(p.data.train_labels),)
        it = p.train_batches(2)
        draw(it, per)  # the next batch starts an epoch: no permutation to keep
        assert it.state()["permutation"] is None
    else:
        assert set(state) == {"format", "problem", "seed", "streams", "seq_length",
                              "batches_per_epoch", "step"}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_skip_draws_what_drawing_draws(small, name):
    """``skip`` (for checkpoints written before data states) lands where drawing lands."""
    p = small[name]
    per = per_epoch(p)
    for n in (0, per - 1, per, 3 * per + 1):
        drawn, skipped = p.train_batches(4), p.train_batches(4)
        draw(drawn, n)
        skipped.skip(n)
        a, b = drawn.state(), skipped.state()
        assert a.keys() == b.keys()
        for key in a:
            same = torch.equal if isinstance(a[key], torch.Tensor) else (lambda x, y: x == y)
            assert same(a[key], b[key]), key
        assert_same(draw(skipped, per + 1), draw(drawn, per + 1))


@pytest.mark.parametrize("name", NAMES)
def test_another_runs_state_is_refused(small, name):
    p = small[name]
    it = p.train_batches(5)
    draw(it, 2)
    state = it.state()
    with pytest.raises(ValueError, match="seed=5 \\(expected 6\\)"):
        p.train_batches(6, state=state)
    other = next(n for n in NAMES if n != name)
    with pytest.raises(ValueError, match="problem="):
        p.train_batches(5, state=small[other].train_batches(5).state())
    with pytest.raises(ValueError, match="format 2"):
        p.train_batches(5, state={**state, "format": 2})
    with pytest.raises(ValueError, match="not a training-batch state"):
        p.train_batches(5, state={"step": 2})
    layout = "batch_size" if name != "tolstoi_char_rnn" else "streams"
    with pytest.raises(ValueError, match=layout):
        p.train_batches(5, state={**state, layout: state[layout] + 1})
    with pytest.raises(ValueError, match="negative"):
        it.skip(-1)


def test_inconsistent_image_state_is_refused(small):
    p = small["fmnist_2c2d"]
    it = p.train_batches(0)
    draw(it, 2)
    state = it.state()
    with pytest.raises(ValueError, match="inconsistent"):
        p.train_batches(0, state={**state, "permutation": None})
    with pytest.raises(ValueError, match="permutation"):
        p.train_batches(0, state={**state, "permutation": state["permutation"][:-1]})


def _best_of(fns: dict, repeats: int) -> dict:
    """Each callable's fastest of ``repeats`` runs, taken in turn so that a burst of load
    from other processes on a shared CPU falls on all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def test_resume_cost_does_not_grow_with_the_step(tmp_path):
    """Issue 21's target: resuming at step 100 and at step 5,000 cost the same (within 2x),
    far below replaying the batches (generated CIFAR-10, batches of 4)."""
    mirror = tmp_path / "mirror"
    source = synthetic.write_cifar(mirror, "cifar-10", n_train=200, n_test=8)
    p = problems.load("cifar10_3c3d", source=source, data_root=str(tmp_path / "data"),
                      mirror=str(mirror), batch_size=4)  # fmt: skip
    early, late = p.train_batches(0), p.train_batches(0)
    draw(early, 100)
    start = time.perf_counter()
    draw(late, 5_000)
    replay_s = time.perf_counter() - start
    states = {100: early.state(), 5_000: late.state()}

    def resume(step: int):
        return lambda: next(p.train_batches(0, state=states[step]))

    resume(100)(), resume(5_000)()  # warm-up
    cost = _best_of({step: resume(step) for step in states}, 30)
    skipping = p.train_batches(0)
    start = time.perf_counter()
    skipping.skip(5_000)  # what a checkpoint without a data state costs instead
    skip_s = time.perf_counter() - start
    print(
        f"\nresume (construct + first batch), best of 30: step 100 {cost[100] * 1e6:.0f} us, "
        f"step 5,000 {cost[5_000] * 1e6:.0f} us; replaying 5,000 batches {replay_s:.2f} s; "
        f"skip(5,000) {skip_s:.3f} s"
    )
    assert cost[5_000] < 2 * cost[100] and cost[100] < 2 * cost[5_000]
    assert cost[5_000] < replay_s / 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_a_cpu_state_resumes_on_cuda(small, name):
    """States are CPU tensors and the draws CPU-generated: a run saved on one device resumes
    on another with the same batches."""
    cpu = small[name]
    cuda = type(cpu)(type(cpu.config)(**{**vars(cpu.config), "device": "cuda"}), cpu.source)
    per = per_epoch(cpu)
    it = cpu.train_batches(3)
    draw(it, per + 1)
    state = saved_and_loaded(it.state())
    expected = draw(it, 2 * per)
    got = draw(cuda.train_batches(3, state=state), 2 * per)
    for a, b in zip(got, expected, strict=True):
        assert a.inputs.device.type == "cuda"
        torch.testing.assert_close(a.inputs.cpu(), b.inputs, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.targets.cpu(), b.targets)
        assert (a.epoch, a.epoch_start) == (b.epoch, b.epoch_start)
