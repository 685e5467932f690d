"""K members of one problem as one batched loss (``problems.batched``): member k's loss,
gradients, BatchNorm buffers, carried LSTM state and random draws equal those of its single
model over consecutive SGD steps, on all four problems (tiny generated data, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.func import stack_module_state

from dissecting_adam import problems
from dissecting_adam.problems.batched import BatchedLoss, MemberRNG
from dissecting_adam.problems.batching import Batch
from dissecting_adam.problems.datasets import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"]
SEEDS = [3, 1, 4]
STEPS = 4
LR = 0.05
#: Measured max |difference|: float64 4e-14 (WRN), float32 5e-7 (char-LSTM, its loss).
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12)}
#: All four in float64, where a member equals its single model to rounding. In float32 only
#: the char-LSTM (smooth everywhere): the CNNs' max-pool and ReLU routes flip on last-bit
#: differences within a few SGD steps (3c3d: up to 1.6% on a gradient at step 1; 2c2d 6e-7),
#: and WRN's BatchNorm over batches of 2 is ill-conditioned (a single float32 model's
#: gradients are already up to 2% from float64's, the batched ones no further).
CASES = [pytest.param(name, torch.float64, id=f"{name}-f64") for name in NAMES] + [
    pytest.param("tolstoi_char_rnn", torch.float32, id="tolstoi_char_rnn-f32")
]
SIZE = {"cifar100_wrn404": (2, 3), "fmnist_2c2d": (2, 3)}  # members, steps (slow builds)
# Two training batches per epoch for tolstoi: every member crosses an epoch start.
TEXT = "".join(f"{i} Prince Andrei looked at the sky.\n" for i in range(5))
SMALL = {
    "fmnist_2c2d": {"batch_size": 4},
    "cifar10_3c3d": {"batch_size": 4},
    "cifar100_wrn404": {"batch_size": 2},
    "tolstoi_char_rnn": {"batch_size": 2, "seq_length": 30},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """name -> a small problem on generated data."""
    mirror = tmp_path_factory.mktemp("mirror")
    sources = {
        "fmnist_2c2d": synthetic.write_fashion_mnist(mirror, n_train=12, n_test=4),
        "cifar10_3c3d": synthetic.write_cifar(mirror, "cifar-10", n_train=12, n_test=4),
        "cifar100_wrn404": synthetic.write_cifar(mirror, "cifar-100", n_train=6, n_test=2),
        "tolstoi_char_rnn": synthetic.write_text(mirror, TEXT, deletions=()),
    }
    root = tmp_path_factory.mktemp("data")
    return {
        name: problems.load(
            name, source=sources[name], data_root=str(root), mirror=str(mirror), **SMALL[name]
        )
        for name in NAMES
    }


def cast(batch: Batch, dtype) -> Batch:
    inputs = batch.inputs.to(dtype) if batch.inputs.is_floating_point() else batch.inputs
    return batch._replace(inputs=inputs)


def build(problem, seed, dtype):
    return problem.build_model(seed).to(dtype).train()


def skipped(batches, n):
    """Member k starts k batches into its stream: members' epochs start at different steps."""
    for _ in range(n):
        next(batches)
    return batches


def single_run(problem, seed, dtype, masks=None, steps=STEPS, skip=0):
    """One model trained ``steps`` steps of plain SGD as the runner's loop does (global RNG seeded
    once); per step: loss, gradients, buffers and carried state after the forward pass."""
    model = build(problem, seed, dtype)
    if masks is not None:  # (input, output) of every dropout call
        model.dropout.register_forward_hook(lambda m, a, out: masks.append((a[0], out)))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    batches = skipped(problem.train_batches(seed), skip)
    torch.manual_seed(seed)
    records = []
    for _ in range(steps):
        batch = cast(next(batches), dtype)
        loss = problem.training_loss(model, batch)
        grads = torch.autograd.grad(loss, [model.get_parameter(n) for n in names])
        records.append(
            {
                "epoch_start": batch.epoch_start,
                "loss": loss.detach(),
                "grads": dict(zip(names, grads, strict=True)),
                "buffers": {n: b.clone() for n, b in model.named_buffers()},
                "state": getattr(model, "state", None),
            }
        )
        with torch.no_grad():
            for n, g in zip(names, grads, strict=True):
                model.get_parameter(n).sub_(LR * g)
    return records, torch.get_rng_state()


class Diff:
    """The largest absolute and relative differences seen, for the report."""

    def __init__(self, rtol, atol):
        self.rtol, self.atol, self.abs, self.rel = rtol, atol, 0.0, 0.0

    def check(self, got, want, what):
        torch.testing.assert_close(
            got, want, rtol=self.rtol, atol=self.atol, msg=lambda m: f"{what}: {m}"
        )
        d = (got - want).abs().double() if got.is_floating_point() else (got != want).double()
        self.abs = max(self.abs, d.max().item())
        self.rel = max(self.rel, (d / want.abs().double().clamp_min(1e-3)).max().item())


def group_run(problem, dtype, draws=None, seeds=SEEDS, steps=STEPS):
    """The seeds trained as one batched loss; per step, per member: what single_run records."""
    models = [build(problem, s, dtype) for s in seeds]
    params, buffers = stack_module_state(models)
    loss = problem.batched_loss(models[0])
    if draws is not None:  # record every member's masks
        model, draw = loss.module.model, loss.module.model.dropout_masks
        model.dropout_masks = lambda layouts: draws.append(draw(layouts)) or draws[-1]
    names = [n for n, p in params.items() if p.requires_grad]
    rng = MemberRNG(seeds)
    carried = loss.init_carried(len(seeds), problem.device)
    iterators = [skipped(problem.train_batches(s), k) for k, s in enumerate(seeds)]
    records = []
    for _ in range(steps):
        batches = [cast(next(it), dtype) for it in iterators]
        losses, carried = loss(params, buffers, batches, carried, rng)
        grads = torch.autograd.grad(losses.sum(), [params[n] for n in names])
        records.append(
            [
                {
                    "epoch_start": batches[k].epoch_start,
                    "loss": losses[k].detach(),
                    "grads": {n: g[k] for n, g in zip(names, grads, strict=True)},
                    "buffers": {n: b[k].clone() for n, b in buffers.items()},
                    "state": loss.carried_of(carried, k),
                }
                for k in range(len(seeds))
            ]
        )
        with torch.no_grad():
            for n, g in zip(names, grads, strict=True):
                params[n].sub_(LR * g)
    return records, rng


@pytest.mark.parametrize(("name", "dtype"), CASES)
def test_members_equal_their_single_models_over_sgd_steps(small, name, dtype):
    problem = small[name]
    lstm = name == "tolstoi_char_rnn"
    members, steps = SIZE.get(name, (len(SEEDS), STEPS))
    seeds = SEEDS[:members]
    singles = [single_run(problem, s, dtype, steps=steps, skip=k) for k, s in enumerate(seeds)]
    outside = torch.get_rng_state()
    group, rng = group_run(problem, dtype, seeds=seeds, steps=steps)
    assert torch.equal(torch.get_rng_state(), outside), "the group drew from the global RNG"
    diff = Diff(*TOL[dtype])
    for k, (records, final_rng) in enumerate(singles):
        for step, (want, got) in enumerate(zip(records, (g[k] for g in group), strict=True)):
            at = f"{name} member {k} step {step}"
            assert got["epoch_start"] == want["epoch_start"]
            diff.check(got["loss"], want["loss"], f"{at}: loss")
            for n, g in want["grads"].items():
                diff.check(got["grads"][n], g, f"{at}: grad {n}")
            assert want["buffers"].keys() == got["buffers"].keys()
            for n, b in want["buffers"].items():  # BatchNorm: running stats and counter
                diff.check(got["buffers"][n], b, f"{at}: buffer {n}")
            if lstm:
                for (h, c), (h1, c1) in zip(got["state"], want["state"], strict=True):
                    diff.check(h, h1, f"{at}: carried h")
                    diff.check(c, c1, f"{at}: carried c")
            else:
                assert got["state"] is None and want["state"] is None
        # Exactly the same random numbers consumed (dropout), none for the CNNs.
        assert torch.equal(rng.state(k)["torch"], final_rng), f"{name} member {k}: RNG"
    if lstm:  # each member crosses an epoch start, not all at the same step
        starts = [[s["epoch_start"] for s in records[1:]] for records, _ in singles]
        assert all(any(m) for m in starts) and len({tuple(m) for m in starts}) > 1, starts
    print(f"\n{name} {dtype}: max |diff| {diff.abs:.2e}, max rel diff {diff.rel:.2e}")


def test_dropout_masks_are_the_single_runs_bit_for_bit(small):
    """Member k's four masks per step are the factors its single run's nn.Dropout applied."""
    problem, dtype = small["tolstoi_char_rnn"], torch.float32
    calls = [[] for _ in SEEDS]
    for k, seed in enumerate(SEEDS):
        single_run(problem, seed, dtype, calls[k], skip=k)
    draws = []
    group_run(problem, dtype, draws)
    assert len(draws) == STEPS * len(SEEDS)
    for k in range(len(SEEDS)):
        for step in range(STEPS):
            masks = draws[step * len(SEEDS) + k]
            singles = calls[k][4 * step : 4 * step + 4]
            for i, (mask, (x, out)) in enumerate(zip(masks, singles, strict=True)):
                assert mask.shape == x.shape and mask.stride() == x.stride()
                assert torch.equal(x * mask, out), f"member {k} step {step} mask {i}"
                assert 0 < (mask == 0).float().mean() < 0.5  # dropout did act


def test_carried_of_and_with_member_round_trip(small):
    problem = small["tolstoi_char_rnn"]
    models = [build(problem, s, torch.float32) for s in SEEDS]
    params, buffers = stack_module_state(models)
    loss, K = problem.batched_loss(models[0]), len(SEEDS)
    batches = [next(problem.train_batches(s)) for s in SEEDS]
    _, carried = loss(params, buffers, batches, loss.init_carried(K, "cpu"), MemberRNG(SEEDS))
    zeros = loss.init_carried(K, "cpu")
    for k in range(K):
        state = loss.carried_of(carried, k)
        assert [tuple(t.shape) for t in state[0]] == [(1, 2, 128)] * 2  # CharRNN.state's
        moved = loss.with_member(zeros, k, state)
        for i in range(K):
            want = state if i == k else loss.carried_of(zeros, i)
            for a, b in zip(loss.carried_of(moved, i), want, strict=True):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        reset = loss.with_member(carried, k, None)
        for i in range(K):
            want = loss.carried_of(zeros if i == k else carried, i)
            for a, b in zip(loss.carried_of(reset, i), want, strict=True):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(t.abs().sum() == 0 for layer in zeros for t in layer), "with_member copies"
    wrong = tuple((h[:, :1], c[:, :1]) for h, c in loss.carried_of(carried, 0))
    with pytest.raises(ValueError, match="streams"):
        loss.with_member(carried, 0, wrong)


def test_stateless_problems_carry_nothing(small):
    problem = small["fmnist_2c2d"]
    loss = problem.batched_loss(problem.build_model(0))
    assert type(loss) is BatchedLoss
    assert loss.init_carried(2, "cpu") is None and loss.carried_of(None, 1) is None
    assert loss.with_member(None, 1, None) is None
    assert all(p.seed_parallel for p in problems.PROBLEMS.values())


def test_member_rng_streams_are_manual_seed_streams():
    rng = MemberRNG([7, 8], cuda=False)
    outside = torch.get_rng_state()
    with rng(1):
        a = torch.rand(3)
    with rng(0):
        b = torch.rand(5)
    with rng(1):
        a = torch.cat([a, torch.rand(2)])
    assert torch.equal(torch.get_rng_state(), outside)
    torch.manual_seed(8)
    assert torch.equal(a, torch.rand(5))
    torch.manual_seed(7)
    assert torch.equal(b, torch.rand(5))
    saved = rng.state(0)
    with rng(0):
        c = torch.rand(2)
    rng.set_state(0, {**saved, "numpy": None})  # a checkpoint's rng: other keys ignored
    with rng(0):
        assert torch.equal(torch.rand(2), c)
