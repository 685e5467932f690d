"""Mini-batch variance estimates (paper §D): the estimator against a per-example loop, the
optimizers against their literal reference, hand cases, and the runner path."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from optim_db import MINIBATCH
from torch import nn

from dissecting_adam.optim.msvag_mb import MSVAGMB, SVAGMB
from dissecting_adam.optim.reference import ReferenceMiniBatchOptimizer
from dissecting_adam.per_example import (
    PerExampleError,
    backward_with_variance,
    batch_moments,
    check_supported,
)
from dissecting_adam.problems import Batch, load
from dissecting_adam.problems.models.char_rnn import CharRNN
from dissecting_adam.problems.models.cnn import TwoC2D

CLASSES = MINIBATCH  # the registry's mini-batch variance methods


# --------------------------------------------------------------------------- estimator
def _brute_force(model, x, y, state=None):
    """Per-example gradients one at a time; mean and unbiased variance of the mean."""
    grads, losses = [], []
    for k in range(x.shape[0]):
        model.zero_grad()
        if hasattr(model, "forward_from"):
            st = (
                None
                if state is None
                else tuple((h[:, k : k + 1], c[:, k : k + 1]) for h, c in state)
            )
            out = model.forward_from(x[k : k + 1], st)[0]
        else:
            out = model(x[k : k + 1])
        loss = F.cross_entropy(out.flatten(0, -2), y[k : k + 1].reshape(-1))
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    n = x.shape[0]
    stats = {}
    for name in grads[0]:
        g = torch.stack([gk[name] for gk in grads])
        # docs/extensions.md: s = ((1/|B|) sum_k g_k^2 - g^2) / (|B| - 1), written out.
        mean = g.mean(0)
        stats[name] = (mean, ((g**2).mean(0) - mean**2) / (n - 1))
    return stats, sum(losses) / n


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 5)
    ).double()


def _char_rnn():
    torch.manual_seed(1)
    return CharRNN(11, 8, keep_prob=1.0).double()


@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize("kind", ["cnn", "rnn-fresh", "rnn-state"])
def test_estimate_equals_per_example_loop(kind, chunk):
    gen = torch.Generator().manual_seed(2)
    state = None
    if kind == "cnn":
        model = _small_cnn()
        x = torch.randn(7, 1, 6, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (7,), generator=gen)
    else:
        model = _char_rnn()
        x = torch.randint(0, 11, (5, 6), generator=gen)
        y = torch.randint(0, 11, (5, 6), generator=gen)
        if kind == "rnn-state":
            state = tuple(
                (torch.randn(1, 5, 8, generator=gen, dtype=torch.float64),
                 torch.randn(1, 5, 8, generator=gen, dtype=torch.float64))
                for _ in range(2)
            )  # fmt: skip
    got = batch_moments(model, x, y, state, chunk_size=chunk)
    expected, loss = _brute_force(model, x, y, state)
    assert got.loss.item() == pytest.approx(loss, rel=1e-12)
    assert set(got.grad) == set(expected)
    for name, (mean, var) in expected.items():
        torch.testing.assert_close(got.grad[name], mean, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(got.variance[name], var.clamp(min=0), rtol=1e-7, atol=1e-16)
        assert var.abs().max() > 0
    if state is not None:  # the new state is the batch forward's final state
        _, full = model.forward_from(x, state)
        for (h, c), (h2, c2) in zip(got.state, full, strict=True):
            torch.testing.assert_close(h, h2)
            torch.testing.assert_close(c, c2)


def test_estimate_on_the_p1_network_float32():
    torch.manual_seed(0)
    model = TwoC2D()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 3, 9])
    got = batch_moments(model, x, y, chunk_size=3)
    expected, _ = _brute_force(model, x, y)
    for name, (mean, var) in expected.items():
        torch.testing.assert_close(got.grad[name], mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.variance[name], var.clamp(min=0), rtol=1e-3, atol=1e-8)


def test_regulariser_gradient_in_g_but_not_in_the_variance():
    problem = load("fmnist_2c2d", weight_decay=0.1)
    torch.manual_seed(0)
    model = TwoC2D().double()  # float64: the brute force's textbook form cancels in float32
    x, y = torch.randn(3, 1, 28, 28, dtype=torch.float64), torch.tensor([1, 2, 1])
    expected, data_loss = _brute_force(model, x, y)
    model.zero_grad(set_to_none=True)
    loss = backward_with_variance(problem, model, Batch(x, y, 0, False))
    assert loss.item() == pytest.approx(data_loss + problem.l2_term(model).item(), rel=1e-12)
    decayed = {
        "features.0.weight",
        "features.3.weight",
        "classifier.0.weight",
        "classifier.2.weight",
    }
    for name, p in model.named_parameters():
        mean, var = expected[name]
        reg = 0.1 * p.detach() if name in decayed else 0.0
        torch.testing.assert_close(p.grad, mean + reg, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(p.batch_variance, var.clamp(min=0), rtol=1e-7, atol=1e-16)


def test_batchnorm_and_single_example_are_refused():
    with pytest.raises(PerExampleError, match="BatchNorm.*optimizer=msvag"):
        check_supported(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), "cifar100_wrn404")
    with pytest.raises(PerExampleError, match="at least 2 examples"):
        batch_moments(_small_cnn(), torch.randn(1, 1, 6, 6, dtype=torch.float64), torch.tensor([0]))
    assert not load("cifar100_wrn404").per_example_gradients
    assert load("tolstoi_char_rnn").per_example_gradients


# --------------------------------------------------------------------------- optimizers
SHAPES = [(7, 3), (50,), (2, 3, 3)]


def _inputs(step, gen, dtype):
    out = []
    for shape in SHAPES:
        g = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.3
        s = torch.rand(shape, generator=gen, dtype=torch.float64) * 3.0
        g.view(-1)[0], s.view(-1)[0] = 0.0, 0.0  # m = s = 0: never moves
        if g.numel() > 2:
            g.view(-1)[1], s.view(-1)[1] = 0.75, 0.0  # no variance: gamma = 1
        out.append((g.to(dtype), s.to(dtype)))
    return out


def _set(params, inputs):
    for p, (g, s) in zip(params, inputs, strict=True):
        p.grad = g.clone()
        p.batch_variance = s.clone()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("method", list(CLASSES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_matches_reference_over_1000_steps(method, foreach, dtype, tol):
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    fast = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().double().requires_grad_() for p in init]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3, "beta": 0.5}]

    opt = CLASSES[method](groups(fast), lr=1e-2, beta=0.9, foreach=foreach)
    ref_opt = ReferenceMiniBatchOptimizer(groups(ref), method, lr=1e-2, beta=0.9)
    frozen = [p.detach().clone() for p in fast]
    for step in range(1000):
        inputs = _inputs(step, gen, dtype)
        _set(fast, inputs)
        _set(ref, [(g.double(), s.double()) for g, s in inputs])
        opt.step()
        ref_opt.step()
    for p, r, p0 in zip(fast, ref, frozen, strict=True):
        torch.testing.assert_close(p.detach().double(), r.detach(), rtol=tol, atol=tol)
        assert p.view(-1)[0] == p0.view(-1)[0]  # the zero coordinate never moved
    assert opt.state[fast[0]]["step"] == 1000


def test_first_and_second_step_by_hand():
    # t = 0: m = g = 2, s = s_0 = 1, rho = 1: gamma = 4 / 5, update 0.8 * 2 * lr.
    # t = 1 (beta 0.9, g = 1, s_1 = 3): m~ = 0.28, s~ = 0.39, c = 1 / 0.19,
    # rho(0.9, 1) = 181 / 361, gamma = m^2 / (m^2 + rho s).
    for method in CLASSES:
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = CLASSES[method]([p], lr=1.0, beta=0.9)
        p.grad, p.batch_variance = torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0])
        opt.step()
        assert p.item() == pytest.approx(-1.6, rel=1e-15)
        p.grad, p.batch_variance = torch.tensor([1.0], dtype=torch.float64), torch.tensor([3.0])
        opt.step()
        beta = Fraction(9, 10)
        c = 1 / (1 - beta**2)
        m = c * (beta * (1 - beta) * 2 + (1 - beta) * 1)
        s = c * (beta * (1 - beta) * 1 + (1 - beta) * 3)
        rho = (1 - beta) * (1 + beta**2) / ((1 + beta) * (1 - beta**2))
        assert rho == Fraction(181, 361)
        if method == "msvag_mb":
            step = m * m / (m * m + rho * s) * m
        else:
            step = m * m / (m * m + s) * 1
        assert p.item() == pytest.approx(-1.6 - float(step), rel=1e-14)


def test_constant_gradient_without_variance_is_msgd():
    from dissecting_adam.optim import MSGD

    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    q = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt, ref = MSVAGMB([p], lr=0.1), MSGD([q], lr=0.1)
    for _ in range(2000):
        p.grad = torch.tensor([1.0, -2.0, 1e-20], dtype=torch.float64)
        p.batch_variance = torch.zeros(3, dtype=torch.float64)
        q.grad = p.grad.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_step_needs_a_fresh_variance_and_resumes_exactly():
    p = torch.ones(4, requires_grad=True)
    opt = MSVAGMB([p], lr=0.1)
    p.grad = torch.ones(4)
    with pytest.raises(RuntimeError, match="backward_with_variance"):
        opt.step()
    p.batch_variance = torch.ones(4)
    opt.step()
    with pytest.raises(RuntimeError, match="batch_variance"):  # used once, then removed
        opt.step()
    p.batch_variance = torch.ones(3)
    with pytest.raises(RuntimeError, match="does not match"):
        opt.step()
    with pytest.raises(ValueError, match="learning rate"):
        MSVAGMB([p], lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        SVAGMB([p], lr=0.1, beta=1.0)
    # state_dict round trip: the resumed optimizer continues bit-identically.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    opt_a = MSVAGMB([a], lr=0.1)
    seq = [(torch.randn(5, generator=gen), torch.rand(5, generator=gen)) for _ in range(20)]
    for g, s in seq[:10]:
        a.grad, a.batch_variance = g, s
        opt_a.step()
    b.data.copy_(a.detach())
    opt_b = MSVAGMB([b], lr=0.1)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as torch.save/load would
    for g, s in seq[10:]:
        a.grad, a.batch_variance = g, s
        b.grad, b.batch_variance = g.clone(), s.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- runner
@pytest.mark.parametrize("problem", ["fmnist_2c2d", "tolstoi_char_rnn"])
@pytest.mark.parametrize("optimizer", ["msvag_mb", "svag_mb"])
def test_runner_trains_with_minibatch_variance(tmp_path, problem, optimizer, one_thread):
    import json
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from dissecting_adam.runner.plan import plan
    from dissecting_adam.runner.session import execute

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    overrides = [
        "profile=smoke", "data.variant=synthetic", f"results_root={tmp_path}",
        f"problem={problem}", f"optimizer={optimizer}", "optimizer.lr=0.01",
        "problem.batch_size=4", "train.num_steps=4", "train.eval_every=2",
        "train.progress=off", "train.log_every=1",
    ]  # fmt: skip
    if problem == "tolstoi_char_rnn":
        overrides.append("+problem.seq_length=5")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        summary = execute(plan(compose("train", overrides=overrides)))
    assert summary["status"] == "completed" and summary["steps_done"] == 4
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if r["split"] == "minibatch"]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
