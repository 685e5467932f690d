"""The four test problems: API, defaults, batches, determinism, evaluation, one step each.

Data come from tiny generated files in the originals' on-disk formats (``synthetic_mirror``),
loaded through the same code as the real downloads; the networks are tested in
``test_problems_models.py``, the real data sets in ``test_data.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from dissecting_adam import problems
from dissecting_adam.optim import MSVAG
from dissecting_adam.problems import augment
from dissecting_adam.problems.datasets import synthetic

NAMES = ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"]

TEXT = "".join(
    f"Line {i}: Well, Prince, so Genoa and Lucca are now just family estates.\n" for i in range(60)
)

# Small settings so that every problem runs in well under a second on a CPU.
SMALL = {
    "fmnist_2c2d": {"batch_size": 8, "eval_batch_size": 16},
    "cifar10_3c3d": {"batch_size": 8, "eval_batch_size": 16},
    "cifar100_wrn404": {"batch_size": 2, "eval_batch_size": 4},
    "tolstoi_char_rnn": {"batch_size": 4, "seq_length": 10},
}


@pytest.fixture(scope="module")
def synthetic_mirror(tmp_path_factory):
    """A mirror of generated files; returns (mirror path, {problem name: source})."""
    mirror = tmp_path_factory.mktemp("mirror")
    sources = {
        "fmnist_2c2d": synthetic.write_fashion_mnist(mirror, n_train=40, n_test=20),
        "cifar10_3c3d": synthetic.write_cifar(mirror, "cifar-10", n_train=40, n_test=20),
        "cifar100_wrn404": synthetic.write_cifar(mirror, "cifar-100", n_train=10, n_test=6),
        "tolstoi_char_rnn": synthetic.write_text(mirror, TEXT, deletions=((1, 2),)),
    }
    return mirror, sources


@pytest.fixture(scope="module")
def small(synthetic_mirror, tmp_path_factory):
    """name -> a small problem on generated data (data loaded once per module)."""
    mirror, sources = synthetic_mirror
    root = tmp_path_factory.mktemp("data")
    return {
        name: problems.load(
            name, source=sources[name], data_root=str(root), mirror=str(mirror), **SMALL[name]
        )
        for name in NAMES
    }


# --- registry and defaults ---------------------------------------------------------------


def test_registry_holds_the_four_problems_in_paper_order():
    assert list(problems.PROBLEMS) == NAMES


def test_unknown_problem_lists_the_four():
    with pytest.raises(ValueError) as err:
        problems.load("mnist_mlp")
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(TypeError, match="valid:.*batch_size"):
        problems.load("fmnist_2c2d", batchsize=3)


@pytest.mark.parametrize(
    "name, batch, steps, wd, milestones, gamma",
    [
        ("fmnist_2c2d", 64, 6_000, 0.0, (), 1.0),
        ("cifar10_3c3d", 128, 40_000, 2e-3, (), 1.0),
        ("cifar100_wrn404", 128, 80_000, 5e-4, (24_000, 48_000, 64_000), 0.2),
        ("tolstoi_char_rnn", 50, 200_000, 0.0, (125_000,), 0.1),
    ],
)
def test_defaults_follow_the_spec_table(name, batch, steps, wd, milestones, gamma):
    p = problems.load(name)
    assert (p.batch_size, p.num_steps, p.config.weight_decay) == (batch, steps, wd)
    assert (p.config.lr_milestones, p.config.lr_gamma) == (milestones, gamma)


def test_defaults_are_overridable():
    p = problems.load("cifar100_wrn404", batch_size=7, num_steps=9, lr_milestones=[3])
    assert (p.batch_size, p.num_steps, p.config.lr_milestones) == (7, 9, (3,))


def test_step_size_schedules():
    p3 = problems.load("cifar100_wrn404")
    factors = [p3.lr_factor(s) for s in (0, 23_999, 24_000, 48_000, 64_000, 79_999)]
    assert factors == pytest.approx([1, 1, 0.2, 0.04, 0.008, 0.008])
    p4 = problems.load("tolstoi_char_rnn")
    assert [p4.lr_factor(s) for s in (124_999, 125_000)] == pytest.approx([1, 0.1])
    assert problems.load("fmnist_2c2d").lr_factor(5_999) == 1.0
    # The torch scheduler applies the same factors, one scheduler.step() per optimizer step.
    p = problems.load("cifar100_wrn404", lr_milestones=(2,), lr_gamma=0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched, lrs = p.lr_scheduler(opt), []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]


# --- one training step ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_shapes(small, name):
    p = small[name]
    model = p.build_model(0)
    batch = next(p.train_batches(0))
    logits = model(batch.inputs)
    classes = {"cifar100_wrn404": 100, "tolstoi_char_rnn": 83}.get(name, 10)
    assert logits.shape == (*batch.targets.shape, classes)
    loss = p.training_loss(model, batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    for prm in model.parameters():
        if prm.requires_grad:
            assert prm.grad is not None and prm.grad.shape == prm.shape


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_different_seed_different(name):
    p = problems.load(name)
    a, b, c = (p.build_model(s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    problems.load("fmnist_2c2d").build_model(5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404"])
def test_same_seed_same_batches_different_seed_different(small, name):
    p = small[name]

    def first(seed, k=3):
        it = p.train_batches(seed)
        return [next(it) for _ in range(k)]

    a, b, c = first(1), first(1), first(2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    assert any(not torch.equal(x.inputs, z.inputs) for x, z in zip(a, c, strict=True))


def test_epochs_are_reshuffled_permutations(small):
    p = small["fmnist_2c2d"]  # 40 training images, batch 8: 5 batches per epoch
    it = p.train_batches(0)
    batches = [next(it) for _ in range(10)]
    assert [b.epoch for b in batches] == [0] * 5 + [1] * 5
    assert [b.epoch_start for b in batches] == [True, False, False, False, False] * 2
    data = p.data
    epochs = []
    for e in (0, 1):
        images = torch.cat([b.inputs for b in batches[5 * e : 5 * e + 5]])
        # Every training image exactly once per epoch (pixels identify an image).
        key = (images * 255).round().to(torch.uint8).flatten(1)
        ref = data.train_images.flatten(1)
        match = (key[:, None, :] == ref[None, :, :]).all(-1)  # (40, 40)
        assert torch.equal(match.sum(1), torch.ones(40, dtype=torch.int64))
        assert torch.equal(match.sum(0), torch.ones(40, dtype=torch.int64))
        epochs.append(match.float().argmax(1))
    assert not torch.equal(epochs[0], epochs[1])


# --- evaluation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fmnist_2c2d", "cifar10_3c3d"])
def test_eval_covers_the_whole_test_set_and_an_equal_train_subset(small, name):
    p = small[name]  # 20 test images, eval batches of 16: no remainder dropped
    n_test = len(p.data.test_labels)
    for split in ("test", "train_eval"):
        assert sum(len(b.targets) for b in p.eval_batches(split)) == n_test
    assert torch.equal(p.train_eval_indices(), p.train_eval_indices())


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_returns_loss_and_accuracy(small, name):
    p = small[name]
    model = p.build_model(0)
    model.train()
    for split in ("test", "train_eval"):
        r = p.evaluate(model, split)
        assert 0.0 <= r.accuracy <= 1.0
        assert r.loss == pytest.approx(r.data_loss + p.l2_term(model).item(), rel=1e-6)
        assert math.isfinite(r.loss)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError):
        p.evaluate(model, "validation")


def test_cifar_eval_images_are_standardised_not_augmented(small):
    p = small["cifar10_3c3d"]
    x = torch.cat([b.inputs for b in p.eval_batches("test")])
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), torch.zeros(len(x)), atol=1e-5, rtol=0)
    expected = augment.preprocess_test(p.data.test_images)
    torch.testing.assert_close(x, expected)


# --- one optimizer step on every problem -----------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "fmnist_2c2d",
        "cifar10_3c3d",
        pytest.param("cifar100_wrn404", marks=pytest.mark.slow),  # ~15 s on two busy cores
        "tolstoi_char_rnn",
    ],
)
def test_one_msvag_step_changes_the_loss(small, name):
    p = small[name]
    torch.manual_seed(0)
    model = p.build_model(0)
    opt = MSVAG(model.parameters(), lr=0.01)
    batch = next(p.train_batches(0))
    model.eval()  # no dropout / batch statistics noise: compare like with like
    with torch.no_grad():
        before = p.training_loss(model, batch).item()
    if name == "tolstoi_char_rnn":
        model.reset_state()
    model.train()
    loss = p.training_loss(model, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    if name == "tolstoi_char_rnn":
        model.reset_state()
    with torch.no_grad():
        after = p.training_loss(model, batch).item()
    assert after != before and math.isfinite(after)


def test_readme_example_runs(small):
    """The ten-line benchmark loop of docs/problems.md, on a small problem."""
    problem = small["cifar10_3c3d"]
    model = problem.build_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # any torch optimizer
    sched = problem.lr_scheduler(opt)  # the problem's fixed schedule
    batches = problem.train_batches(seed=0)
    for _step in range(3):
        opt.zero_grad()
        problem.training_loss(model, next(batches)).backward()
        opt.step()
        sched.step()
    result = problem.evaluate(model, "test")
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss)


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(synthetic_mirror, tmp_path, name):
    """Data resident on the GPU; same seed, same batches and weights as on the CPU."""
    mirror, sources = synthetic_mirror
    kw = dict(source=sources[name], data_root=str(tmp_path), mirror=str(mirror), **SMALL[name])
    cpu, gpu = problems.load(name, **kw), problems.load(name, device="cuda", **kw)
    d = gpu.data
    resident = d.tensors() if hasattr(d, "tensors") else (d.train, d.test)
    assert all(t.is_cuda for t in resident)
    b_cpu, b_gpu = next(cpu.train_batches(3)), next(gpu.train_batches(3))
    assert b_gpu.inputs.is_cuda and b_gpu.targets.is_cuda
    torch.testing.assert_close(b_gpu.inputs.cpu(), b_cpu.inputs, atol=1e-4, rtol=0)
    model_cpu, model_gpu = cpu.build_model(0), gpu.build_model(0)
    for a, b in zip(model_cpu.state_dict().values(), model_gpu.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())
    model_cpu.eval()
    model_gpu.eval()
    with torch.no_grad():
        loss_cpu = cpu.training_loss(model_cpu, b_cpu)
        loss_gpu = gpu.training_loss(model_gpu, b_gpu)
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-3)
    r_cpu, r_gpu = cpu.evaluate(model_cpu), gpu.evaluate(model_gpu)
    assert r_gpu.loss == pytest.approx(r_cpu.loss, rel=1e-3)
