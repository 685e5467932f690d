"""Whole-step CUDA graphs (``runner.graphs``, ``train.cuda_graph``).

On the CPU: the setting's default, its refusals (one line each, before anything runs), the
identity, and the recipe's plumbing (static tensors, carried LSTM state, re-capture at a
milestone and after a restore) with the CUDA capture replaced by a stand-in that replays
the captured step eagerly. Marked ``cuda``: the real capture against the eager run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dissecting_adam.optim import MSVAG
from dissecting_adam.problems import PROBLEMS, load
from dissecting_adam.runner import engine, graphs, session
from dissecting_adam.runner.plan import plan
from dissecting_adam.runner.spec import ConfigError, RunSpec, TrainSettings
from dissecting_adam.runner.store import config_hash

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = Path(__file__).resolve().parents[1] / "conf"
STEPS, MILESTONE = 10, 6


def planned(*overrides) -> RunSpec:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return plan(compose("train", overrides=list(overrides)))


def graphed(spec: RunSpec, **train) -> RunSpec:
    return spec.derive(train=dataclasses.replace(spec.train, cuda_graph=True, **train))


def test_off_by_default_in_the_settings_and_the_config():
    assert TrainSettings(num_steps=1, eval_every=1).cuda_graph is False
    assert OmegaConf.load(CONF / "train.yaml").train.cuda_graph is False


def test_the_planner_reads_the_flag_from_the_command_line():
    assert planned("problem=fmnist_2c2d", "train.cuda_graph=true").train.cuda_graph is True
    with pytest.raises(ConfigError, match="cuda_graph"):
        planned("problem=fmnist_2c2d", "train.cuda_graph=maybe")


def test_the_flag_is_not_part_of_the_identity():
    spec = planned("problem=fmnist_2c2d", "optimizer=msvag")
    assert config_hash(graphed(spec).identity()) == "5097e799e5"  # tests/test_precision.py


def test_refused_on_the_cpu_with_one_line_before_any_run_folder(tmp_path):
    spec = graphed(planned("profile=smoke", "data.variant=synthetic", "device=cpu",
                           f"results_root={tmp_path}"))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        session.execute(spec)
    assert "\n" not in str(err.value) and "train.cuda_graph=false" in str(err.value)
    assert "needs a CUDA device" in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides, train, parallel, words",
    [
        (["optimizer=msvag_mb"], {}, 1, "per-example gradients"),
        (["deterministic=true"], {}, 1, "deterministic=true"),
        ([], {"compile": "default"}, 1, "train.compile=default"),
        (["problem=tolstoi_char_rnn"], {}, 4, "cannot graph a group of tolstoi_char_rnn"),
    ],
)
def test_refused_where_a_graph_cannot_be_had(overrides, train, parallel, words):
    spec = graphed(planned("profile=smoke", *overrides), **train)
    with pytest.raises(ConfigError, match=words) as err:
        graphs.check(spec, "cuda", parallel)
    assert "\n" not in str(err.value)
    graphs.check(planned("profile=smoke", *overrides), "cpu", parallel)  # flag off: no say


@pytest.mark.parametrize("name", ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404"])
def test_groups_of_the_image_problems_are_graphed(name):
    graphs.check(graphed(planned(f"problem={name}")), "cuda", 4)  # no refusal
    graphs.check(graphed(planned("problem=tolstoi_char_rnn")), "cuda", 1)  # its single runs


def test_the_engine_refuses_a_cpu_model_and_makes_the_optimizer_capturable(tmp_path):
    problem = _problem("fmnist_2c2d", tmp_path)
    model = problem.build_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        graphs.GraphedSingle(problem, model, opt, problem.lr_scheduler(opt), 0)
    opt.state[opt.param_groups[0]["params"][0]] = {"step": 3}  # as torch's eager Adam keeps it
    graphs.capturable(opt)
    assert all(g["capturable"] for g in opt.param_groups)
    step = next(s["step"] for s in opt.state.values())
    assert torch.is_tensor(step) and step.dtype == torch.float32 and float(step) == 3


# --- the recipe's plumbing on the CPU -----------------------------------------------------
class _Replay:
    """A captured step that runs its body again on replay and writes its outputs back into
    the tensors the capture returned (as a CUDA graph writes into its static outputs)."""

    def __init__(self, single, body, out):
        self.single, self.body, self.out = single, body, out

    def replay(self):
        self.single.optimizer.zero_grad(set_to_none=True)  # a graph's backward overwrites
        self.out.copy_(self.body())
        if self.single.carries:
            graphs._copy_tree(self.single.carried_out, self.single.model.state)


class CPUGraphed(graphs.GraphedSingle):
    """``GraphedSingle`` with the CUDA capture replaced: capturing runs the body once and
    undoes it (parameters, optimizer state, RNG), as a capture leaves everything as it was."""

    def _refusal(self):
        return None

    def _side_stream(self):
        return contextlib.nullcontext()

    def _record(self, body):
        params = [p.detach().clone() for p in self.model.parameters()]
        state = copy.deepcopy(self.optimizer.state_dict()["state"])
        rng = torch.get_rng_state()
        out = body()
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params, strict=True):
                p.copy_(saved)
            for s, saved in zip(self.optimizer.state.values(), state.values(), strict=True):
                for key, value in s.items():
                    value.copy_(saved[key])
        torch.set_rng_state(rng)
        return _Replay(self, body, out), out


def _problem(name, folder, device="cpu"):
    source = PROBLEMS[name].standin(Path(folder), 8)
    return load(name, source=source, device=device, data_root=str(folder), mirror=str(folder),
                batch_size=4, lr_milestones=(MILESTONE,), lr_gamma=0.1)  # fmt: skip


def _run(problem, cls, steps=STEPS, restore_at=None, method=MSVAG):
    """Losses and final parameters of ``steps`` steps; P4's batch 7 starts an epoch."""
    model = problem.build_model(0)
    opt = method(model.parameters(), lr=0.1, capturable=True)
    single = cls(problem, model, opt, problem.lr_scheduler(opt), 0)
    single.start()
    batches, alive, losses = problem.train_batches(0), torch.ones(1, dtype=torch.bool), []
    for step in range(steps):
        if step == restore_at:
            single.restore([copy.deepcopy(single.capture(0))])
        batch = next(batches)
        batch = batch._replace(epoch_start=batch.epoch_start or step == 7)
        losses.append(single.losses([batch], alive.to(single.device)).item())
        single.step()
    return losses, [p.detach().cpu() for p in model.parameters()], single


@pytest.mark.parametrize("name", ["fmnist_2c2d", "tolstoi_char_rnn"])
def test_the_replayed_step_is_the_eager_step(name, tmp_path):
    problem = _problem(name, tmp_path)
    eager_losses, eager_params, _ = _run(problem, engine.Single)
    losses, params, single = _run(problem, CPUGraphed)
    assert losses == pytest.approx(eager_losses, rel=1e-6)
    for p, q in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    # captured after the warm-up, again when the milestone changed the step size
    assert single.captures == 2 and single.captured_lrs == pytest.approx((0.01,))


def test_a_restore_captures_again(tmp_path):
    problem = _problem("fmnist_2c2d", tmp_path)
    _, eager_params, _ = _run(problem, engine.Single)
    _, params, single = _run(problem, CPUGraphed, restore_at=5)
    assert single.captures == 3  # warm-up, restore (step 5), milestone (step 6)
    # its checkpoint is the eager run's; the live optimizer stays capturable
    assert single.capture(0)["optimizer"]["param_groups"][0]["capturable"] is False
    assert single.optimizer.param_groups[0]["capturable"] is True
    for p, q in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


class _ReplayGroup:
    def __init__(self, stacked, body, out):
        self.stacked, self.body, self.out = stacked, body, out

    def replay(self):
        self.stacked.optimizer.zero_grad(set_to_none=True)
        self.out.copy_(self.body())


class CPUGraphedStacked(graphs.GraphedStacked):
    """``GraphedStacked`` with the CUDA capture replaced, as ``CPUGraphed``."""

    def _refusal(self):
        return None

    def _side_stream(self):
        return contextlib.nullcontext()

    def _record(self, body):
        tensors = [*self.params.values(), *self.buffers.values()]
        saved = [t.detach().clone() for t in tensors]
        state = copy.deepcopy(self.optimizer.state_dict()["state"])
        out = body()
        with torch.no_grad():
            for t, old in zip(tensors, saved, strict=True):
                t.copy_(old)
            for s, old in zip(self.optimizer.state.values(), state.values(), strict=True):
                for key, value in s.items():
                    value.copy_(old[key])
        return _ReplayGroup(self, body, out), out


LRS, SEEDS, FREEZE = [0.1, 0.03, 0.3], [0, 1, 2], (2, 4)  # member 2 diverges at step 4


def _run_group(problem, cls, steps=STEPS, restore_at=None):
    """Losses (step by step, member by member) and final stacked parameters; member 2
    frozen from step 4 on."""
    models = [problem.build_model(s) for s in SEEDS]

    def build(params, lr):
        return MSVAG(params, lr=lr, capturable=True)

    stacked = cls(problem, models, build, LRS, SEEDS)
    stacked.start()
    iters = [problem.train_batches(s) for s in SEEDS]
    alive, losses = torch.ones(len(SEEDS), dtype=torch.bool), []
    for step in range(steps):
        if step == restore_at:
            stacked.restore([copy.deepcopy(stacked.capture(k)) for k in range(len(SEEDS))])
        if step == FREEZE[1]:
            stacked.freeze(FREEZE[0])
            alive[FREEZE[0]] = False
        losses += stacked.losses([next(it) for it in iters], alive).tolist()
        stacked.step()
    return losses, {n: p.detach().clone() for n, p in stacked.params.items()}, stacked


@pytest.mark.parametrize("restore_at", [None, 5])
def test_a_replayed_group_step_is_the_eager_group_step(tmp_path, restore_at):
    problem = _problem("fmnist_2c2d", tmp_path)
    eager_losses, eager_params, _ = _run_group(problem, engine.Stacked)
    losses, params, stacked = _run_group(problem, CPUGraphedStacked, restore_at=restore_at)
    assert losses == pytest.approx(eager_losses, rel=1e-6)
    for n, p in params.items():
        torch.testing.assert_close(p, eager_params[n], rtol=1e-5, atol=1e-7)
    held = params[stacked.names[0]][FREEZE[0]]
    assert torch.equal(held, stacked.frozen[FREEZE[0]][0])  # the diverged member stayed put
    # warm-up, (the restore,) the milestone
    assert stacked.captures == (2 if restore_at is None else 3)
    assert stacked.captured_lrs == pytest.approx((0.01,))
    assert stacked.capture(1)["optimizer"]["param_groups"][0]["capturable"] is False


# --- on a GPU ---------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["fmnist_2c2d", "tolstoi_char_rnn"])
def test_a_graphed_run_matches_the_eager_run_on_cuda(name, tmp_path):
    from dissecting_adam.runner import backend

    backend.configure(device="cuda", precision="fp32", cudnn_benchmark=False)
    problem = _problem(name, tmp_path, device="cuda")
    eager_losses, eager_params, _ = _run(problem, engine.Single, steps=20)
    losses, params, single = _run(problem, graphs.GraphedSingle, steps=20)
    # rounding, and for P4 dropout masks from the graph's Philox offsets: loose for P4
    tol = 1e-4 if name == "fmnist_2c2d" else 0.5
    assert losses[: graphs.WARMUP] == pytest.approx(eager_losses[: graphs.WARMUP], rel=1e-5)
    assert losses == pytest.approx(eager_losses, rel=tol)
    if name == "fmnist_2c2d":
        for p, q in zip(params, eager_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
    assert single.captures == 2 and single.captured_lrs == pytest.approx((0.01,))


@pytest.mark.cuda
def test_a_graphed_group_matches_the_eager_group_on_cuda(tmp_path):
    from dissecting_adam.runner import backend

    backend.configure(device="cuda", precision="fp32", cudnn_benchmark=False)
    problem = _problem("fmnist_2c2d", tmp_path, device="cuda")
    eager_losses, eager_params, _ = _run_group(problem, engine.Stacked, steps=20)
    losses, params, stacked = _run_group(problem, graphs.GraphedStacked, steps=20)
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    for n, p in params.items():
        torch.testing.assert_close(p, eager_params[n], rtol=1e-3, atol=1e-5)
    assert stacked.captures == 2


@pytest.mark.cuda
def test_a_restore_captures_again_on_cuda(tmp_path):
    problem = _problem("fmnist_2c2d", tmp_path, device="cuda")
    _, eager_params, _ = _run(problem, engine.Single)
    _, params, single = _run(problem, graphs.GraphedSingle, restore_at=5)
    assert single.captures == 3
    for p, q in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
