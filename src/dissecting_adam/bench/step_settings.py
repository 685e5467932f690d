"""One training step (loss, backward, M-SVAG step) under the settings that can speed it up,
with its TFLOP/s against a matmul peak measured in the same run.

``SETTINGS`` build on each other as a run would turn them on: ``eager`` (cuDNN autotuning
off, float32 with TF32 where the session allows it), ``cudnn_benchmark``, ``channels_last``
(model and images in NHWC; a no-op without 4-D inputs, P4), ``channels_last+bf16``
(``torch.autocast`` to bfloat16 around the loss), ``fused_bn_relu`` and
``fused_bn_relu+bf16`` (those two with each batch norm and its ReLU as Triton kernels,
``problems/models/bn_relu.py``: WRN-40-4 only, on CUDA) and ``compile`` (``runner.backend
.compile_model``, cuDNN autotuning on). Steps are timed in blocks without a sync inside, as
the runner trains, after a warm-up; the result is the median block's time per step.

The FLOPs of a step are counted once per problem (``torch.utils.flop_counter``: the matmuls
and convolutions of the forward and backward pass) on a CPU copy of the model for a slice of
the batch, scaled to the whole batch (on the CPU without oneDNN an LSTM is counted as its
matmuls, where cuDNN or oneDNN would run one opaque kernel). ``gemm_peak`` times a square
matmul of each precision.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..optim import MSVAG
from ..runner import backend
from ..runner.spec import TrainSettings
from .timing import NEVER, Deadline, median, peak_memory_mib, reset_peak_memory, sync, timed


@dataclass(frozen=True)
class Setting:
    cudnn_benchmark: bool = False
    channels_last: bool = False
    bf16: bool = False
    compile: str | None = None
    fused_bn_relu: bool = False

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32/tf32"


SETTINGS = {
    "eager": Setting(),
    "cudnn_benchmark": Setting(cudnn_benchmark=True),
    "channels_last": Setting(cudnn_benchmark=True, channels_last=True),
    "channels_last+bf16": Setting(cudnn_benchmark=True, channels_last=True, bf16=True),
    "fused_bn_relu": Setting(cudnn_benchmark=True, channels_last=True, fused_bn_relu=True),
    "fused_bn_relu+bf16": Setting(
        cudnn_benchmark=True, channels_last=True, bf16=True, fused_bn_relu=True
    ),  # fmt: skip
    "compile": Setting(cudnn_benchmark=True, compile="default"),
}
EAGER = tuple(name for name, s in SETTINGS.items() if s.compile is None)


def applies(problem, setting: Setting) -> bool:
    """Whether ``setting`` is one of ``problem``'s (fused batch norm: WRN-40-4's only)."""
    return not setting.fused_bn_relu or hasattr(problem.config, "fused_bn_relu")


def unsupported(setting: Setting, device: str) -> str | None:
    """Why ``setting`` cannot be timed on ``device`` (None: it can)."""
    if not setting.fused_bn_relu:
        return None
    from ..problems.models.bn_relu import kernels_available

    return kernels_available(device)


def build_model(problem, setting: Setting):
    """The problem's model for seed 0, its batch norms fused with their ReLUs if asked."""
    if setting.fused_bn_relu:
        problem = copy.copy(problem)  # the same data, another model
        problem.config = dataclasses.replace(problem.config, fused_bn_relu=True)
    return problem.build_model(0)


def gemm_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (float32: TF32 as the session allows), best
    of ``repeats`` after a warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b, device)[1] for _ in range(repeats))
    return 2.0 * n**3 / best


def step_flops(problem, batch, examples: int = 2) -> float:
    """FLOPs of one forward and backward pass of ``problem``'s training loss on ``batch``:
    counted on a CPU copy of the model for ``examples`` of it, scaled to the whole batch."""
    n = min(examples, batch.inputs.shape[0])
    model = problem.build_model(0).to("cpu")
    part = batch._replace(inputs=batch.inputs[:n].cpu(), targets=batch.targets[:n].cpu(),
                          epoch_start=True)  # fmt: skip
    # oneDNN would run the LSTM as one opaque kernel too; without it the LSTM is matmuls.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 note, on entry and exit
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
            problem.training_loss(model, part).backward()
    return fc.get_total_flops() * batch.inputs.shape[0] / n


@contextlib.contextmanager
def applied(setting: Setting) -> Iterator[None]:
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = setting.cudnn_benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def time_steps(problem, device: str, setting: Setting, steps: int, warmup: int, *,
               block: int = 5, deadline: Deadline = NEVER) -> dict:  # fmt: skip
    """``step`` (median seconds per step over blocks of ``block`` steps), ``first_step`` (s;
    with a compile, the compile), ``first_loss`` (same weights and batch in every setting),
    ``compile_s`` (compiled only), ``measured`` (steps timed) and ``peak_memory_mib``."""
    torch.manual_seed(0)
    reset_peak_memory(device)
    model = build_model(problem, setting)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if setting.compile is not None:
        torch.compiler.reset()  # a cold compile (inductor's disk cache may still be warm)
        backend.compile_model(model, setting.compile)
    opt = MSVAG(model.parameters(), lr=1e-3)
    batches = problem.train_batches(0)
    kind = torch.device(device).type

    def step():
        backend.mark_step(setting.compile, str(device))
        batch = next(batches)
        if setting.channels_last and batch.inputs.dim() == 4:
            nhwc = batch.inputs.contiguous(memory_format=torch.channels_last)
            batch = batch._replace(inputs=nhwc)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=setting.bf16):
            loss = problem.training_loss(model, batch)
        loss.backward()
        opt.step()
        return loss

    with applied(setting):
        loss, first = timed(step, device)
        for _ in range(warmup - 1):
            step()
        per_step, done = [], 0
        while done < steps and not (done > 0 and deadline.expired()):
            n = min(block, steps - done)
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            per_step.append((time.perf_counter() - start) / n)
            done += n
    out = {"step": median(per_step), "first_step": first, "first_loss": loss.item(),
           "measured": done, "peak_memory_mib": peak_memory_mib(device)}  # fmt: skip
    if setting.compile is not None:
        out["compile_s"] = max(first - out["step"], 0.0)
    return out


def cuda_graph_support(device: str) -> str | None:
    """None when the runner can capture a whole training step as one CUDA graph
    (``TrainSettings.cuda_graph``), else why not."""
    if torch.device(device).type != "cuda":
        return "whole-step CUDA graphs need a CUDA device"
    if "cuda_graph" not in {f.name for f in dataclasses.fields(TrainSettings)}:
        return "the runner of this build offers no whole-step CUDA graph (TrainSettings.cuda_graph)"
    return None


def runner_step_seconds(problem, device: str, steps: int, folder, **settings) -> float:
    """Seconds per step of ``runner.loop.train_single`` (evaluation off, no checkpoints) with
    extra ``TrainSettings`` (e.g. ``cuda_graph=True``); the first step (a capture) included."""
    from ..runner import loop
    from ..runner.store import RunDir
    from .timing import evaluation_off

    model = problem.build_model(0)
    opt = MSVAG(model.parameters(), lr=1e-3)
    train = TrainSettings(num_steps=steps, eval_every=steps, checkpoint_every=None,
                          progress="off", **settings)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    with evaluation_off():
        _, seconds = timed(lambda: loop.train_single(problem, model, opt,
                                                     problem.lr_scheduler(opt), train,
                                                     RunDir(folder)), device)  # fmt: skip
    return seconds / steps
