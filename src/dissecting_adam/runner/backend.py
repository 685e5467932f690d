"""The numerics and speed settings of a run: TF32, cuDNN autotuning, deterministic
algorithms, and a compiled model.

They are process-wide in torch, so ``configure`` sets every one of them before each
session (a worker that trains several runs one after another never inherits the previous
run's settings) and returns what is in effect, which the run's environment record keeps.

Which combination resumes bit-identically on a GPU: ``deterministic=true`` (and so
``cudnn_benchmark=false``). It makes cuDNN and cuBLAS pick deterministic algorithms
(``torch.use_deterministic_algorithms``; cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG``, set
here when unset, before the first cuBLAS call of the process), so a run stopped and
resumed on the same GPU model and software retraces the steps of one that was not. Without
it, convolution backward passes and embedding gradients on CUDA use atomics whose order
varies, and a resumed run agrees with an unstopped one to float rounding only. On the CPU
every setting here is bit-identical across resumes (tests/test_runner.py).
"""

from __future__ import annotations

import os

import torch

#: cuBLAS's documented setting for deterministic results (a few MiB of workspace).
CUBLAS_DETERMINISTIC = ":4096:8"


def configure(
    *,
    device: str,
    allow_tf32: bool,
    cudnn_benchmark: bool,
    deterministic: bool,
    flush_denormal: bool = False,
) -> dict:
    """Set torch's backend flags for a run on ``device``; return the settings in effect.

    ``flush_denormal``: subnormal floats (below 1.2e-38) read and written as zero by the
    CPU (FTZ/DAZ). A saturated LSTM's gradients fill with subnormals, and x86 CPUs compute
    on them about 20 times slower (M-SSD on P4 at lr 0.03: 1.7 s a step instead of 86 ms).
    It changes results, not only speed: a sign method takes a whole step on a subnormal
    gradient and none on a flushed one; hence it is part of the run's identity.
    """
    cuda = str(device).startswith("cuda")
    if deterministic and cudnn_benchmark:
        raise ValueError("deterministic and cudnn_benchmark cannot both be on")
    # TF32 only exists on CUDA; on the CPU the flags are off whatever the run asks.
    torch.backends.cuda.matmul.allow_tf32 = cuda and allow_tf32
    torch.backends.cudnn.allow_tf32 = cuda and allow_tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.deterministic = deterministic
    if deterministic and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    # warn_only: an op without a deterministic kernel warns (named in the log) rather than
    # ending a run that may have trained for hours.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    flushed = torch.set_flush_denormal(flush_denormal) and flush_denormal
    return {
        "flush_denormal": flushed,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Compile ``model``'s forward (and so its backward) in place with torch.compile.

    In place (``Module.compile``): parameters, buffers and state_dict keys stay those of
    the eager model, so checkpoints of compiled and eager runs are interchangeable and the
    optimizer holds the same tensors. Compilation happens at the first call (the first
    step; evaluation in eval mode compiles once more).

    Random ops (dropout) keep torch's own generator (``fallback_random``): inductor's
    would draw other masks from the same seed, and a compiled run would then differ from
    its eager twin by more than rounding.
    """
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    model.compile(mode=mode)
    return model


def uses_cuda_graphs(mode: str | None, device: str) -> bool:
    """Whether a model compiled in ``mode`` on ``device`` replays CUDA graphs; its training
    loop must then call ``torch.compiler.cudagraph_mark_step_begin()`` before each step,
    so that the graph trees may reuse the last step's tensors."""
    return mode in ("reduce-overhead", "max-autotune") and str(device).startswith("cuda")


def mark_step(mode: str | None, device: str) -> None:
    """Before each training step of a model compiled with CUDA graphs (timing loops; the
    training loop decides once with ``uses_cuda_graphs``)."""
    if uses_cuda_graphs(mode, device):
        torch.compiler.cudagraph_mark_step_begin()
