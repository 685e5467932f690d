"""One training step of a problem, split into input pipeline, forward+backward and optimizer.

"input" is drawing one batch (indexing the resident data, augmentation); "fwd+bwd" the
forward and backward pass of the loss that is minimised; "optim" one M-SVAG step. The
device is synchronised around each part, and the medians are taken over the steps after
the warm-up. With ``compile_mode`` the model is compiled first
(``runner.backend.compile_model``, as a run with ``train.compile`` does): the first step
then includes the compilation, and ``compile_s`` is that first step minus a normal one.
"""

from __future__ import annotations

import torch

from ..optim import MSVAG
from ..runner import backend
from .timing import NEVER, Deadline, median, peak_memory_mib, reset_peak_memory, timed

PARTS = ("input", "fwd+bwd", "optim")


def step_times(
    problem,
    device,
    steps: int,
    warmup: int,
    *,
    compile_mode: str | None = None,
    deadline: Deadline = NEVER,
) -> dict:
    """Median seconds of each part (``PARTS``) and their sum ``step``; ``first_step`` and
    ``warmup_s`` (all warm-up steps; recompilations happen there), ``first_loss`` (the
    loss of the first step: the same weights and batch whether compiled or not, so the two
    can be compared), ``compile_s`` (compiled only), ``measured`` (steps timed: fewer than
    ``steps`` when ``deadline`` passed, at least one) and ``peak_memory_mib`` (CUDA; None
    on the CPU; the resident data set included)."""
    torch.manual_seed(0)
    reset_peak_memory(device)
    model = problem.build_model(0)
    if compile_mode is not None:
        backend.compile_model(model, compile_mode)
    opt = MSVAG(model.parameters(), lr=1e-3)
    batches = problem.train_batches(0)
    times = {part: [] for part in PARTS}
    first, warm = None, 0.0
    for i in range(warmup + steps):
        if i > warmup and deadline.expired():
            break
        backend.mark_step(compile_mode, str(device))
        batch, t_in = timed(lambda: next(batches), device)

        def fwd_bwd(batch=batch):
            opt.zero_grad(set_to_none=True)
            loss = problem.training_loss(model, batch)
            loss.backward()
            return loss

        loss, t_model = timed(fwd_bwd, device)
        _, t_opt = timed(opt.step, device)
        if i == 0:
            first = t_in + t_model + t_opt
            first_loss = loss.item()  # same weights and batch eager or compiled: compare
        if i < warmup:
            warm += t_in + t_model + t_opt
        else:
            for part, t in zip(PARTS, (t_in, t_model, t_opt), strict=True):
                times[part].append(t)
    out = {part: median(times[part]) for part in PARTS}
    out["step"] = sum(out[part] for part in PARTS) if times["input"] else None
    out.update(
        first_step=first,
        first_loss=first_loss,
        warmup_s=warm,
        measured=len(times["input"]),
        peak_memory_mib=peak_memory_mib(device),
    )
    if compile_mode is not None and out["step"] is not None:
        out["compile_s"] = max(first - out["step"], 0.0)
    return out
