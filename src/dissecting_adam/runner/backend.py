"""The numerics and speed settings of a run: its precision (fp32, TF32, bf16 autocast),
cuDNN autotuning, deterministic algorithms, and a compiled model.

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

import contextlib
import os

import torch

#: cuBLAS's documented setting for deterministic results (a few MiB of workspace).
CUBLAS_DETERMINISTIC = ":4096:8"

#: A run's precision: ``fp32`` (full float32), ``tf32`` (float32 with TF32 matmuls and
#: convolutions on CUDA; plain fp32 on the CPU) or ``bf16`` (forward and loss under bf16
#: autocast; parameters, gradients and optimizer state float32). The paper's: fp32.
PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "tf32"


def autocast(precision: str, device_type: str):
    """The context a forward pass and its loss run in: bf16 autocast for ``bf16`` (the
    backward pass runs outside it, in the dtypes the forward chose), else nothing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def configure(
    *,
    device: str,
    precision: str = DEFAULT_PRECISION,
    cudnn_benchmark: bool = True,
    deterministic: bool = False,
    flush_denormal: bool = False,
    allow_tf32: bool | None = None,
) -> dict:
    """Set torch's backend flags for a run on ``device``; return the settings in effect.

    ``precision`` fp32 turns TF32 off; tf32 and bf16 turn it on (bf16: for the float32 ops
    autocast leaves). ``allow_tf32=False`` (deprecated) is ``precision="fp32"``.
    ``cudnn_benchmark`` is in effect on CUDA only and never with ``deterministic``
    (autotuning may pick non-deterministic algorithms).

    ``flush_denormal``: subnormal floats (below 1.2e-38) read and written as zero by the
    CPU (FTZ/DAZ). A saturated LSTM's gradients fill with subnormals, and x86 CPUs compute
    on them about 20 times slower (M-SSD on P4 at lr 0.03: 1.7 s a step instead of 86 ms).
    It changes results, not only speed: a sign method takes a whole step on a subnormal
    gradient and none on a flushed one; hence it is part of the run's identity.
    """
    cuda = str(device).startswith("cuda")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if allow_tf32 is False:
        precision = "fp32"
    # TF32 only exists on CUDA; on the CPU the flags are off whatever the run asks.
    tf32 = cuda and precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cuda and cudnn_benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    # warn_only: an op without a deterministic kernel warns (named in the log) rather than
    # ending a run that may have trained for hours.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    flushed = torch.set_flush_denormal(flush_denormal) and flush_denormal
    return {
        "precision": precision,
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
