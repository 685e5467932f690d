"""Section 3 of the GPU check: one training step of every problem under each setting of
``step_settings.SETTINGS`` (the WRN-40-4 table first), each with its TFLOP/s against the
matmul peaks measured here; WRN-40-4's batch norm + ReLU layer eager against its fused
kernels (CUDA); whole-step CUDA graphs of P1 and P4 (and of a P1 group) where
the runner offers them; and the compiled steps last, each under its own time cap (a compile
slower than its cap is a row that says so).

Leaves in ``ctx.shared``: ``problems``, ``data`` (real or generated), ``step`` (eager step
times, for the projection and the recommendations), ``compiled`` (per problem and mode,
with the first loss against eager) and ``settings`` (seconds per step per setting).
"""

from __future__ import annotations

import torch

from ..protocol.batching import AUTO_MEMBERS
from .bn_layer import BYTES_PASSES, SHAPE, time_bn_relu
from .config import CheckConfig
from .data import load_for_timing
from .recommend import loss_difference
from .sections import CapReached, Context, cap
from .seed_parallel import together
from .step_settings import (
    EAGER,
    SETTINGS,
    applies,
    cuda_graph_support,
    gemm_peak,
    runner_step_seconds,
    step_flops,
    time_steps,
    unsupported,
)
from .timing import evaluation_off

#: P3 first: the WRN-40-4 table is the one the settings matter most for.
ORDER = ("cifar100_wrn404", "fmnist_2c2d", "cifar10_3c3d", "tolstoi_char_rnn")
#: Shares of the compile time left, by problem (WRN-40-4 compiles slowest, so it is last).
COMPILE_WEIGHT = {"fmnist_2c2d": 1.0, "cifar10_3c3d": 1.0, "tolstoi_char_rnn": 1.5,
                  "cifar100_wrn404": 3.0}  # fmt: skip
GRAPH_PROBLEMS = ("fmnist_2c2d", "tolstoi_char_rnn")


def steps_section(cfg: CheckConfig, ctx: Context) -> None:
    s, device = cfg.sizes, cfg.device
    peaks = {"fp32/tf32": gemm_peak(device, torch.float32, s.gemm_n),
             "bf16": gemm_peak(device, torch.bfloat16, s.gemm_n)}  # fmt: skip
    ctx.table(f"Matmul peak measured here ({s.gemm_n} x {s.gemm_n}, best of 5)",
              [{"precision": p, "tflop_per_s": f / 1e12} for p, f in peaks.items()])  # fmt: skip
    rows: list[dict] = []
    ctx.table("One training step (loss, backward, M-SVAG step) per setting, median of blocks "
              "of steps after warm-up; TFLOP/s = FLOPs counted once per problem "
              "(torch.utils.flop_counter) / step time; vs_peak: over the matmul peak of the "
              "row's precision", rows)  # fmt: skip
    problems = ctx.shared.setdefault("problems", {})
    eager, labels = ctx.shared.setdefault("step", {}), ctx.shared.setdefault("data", {})
    compiled = ctx.shared.setdefault("compiled", {})
    by_setting = ctx.shared.setdefault("settings", {})
    ctx.data.update(peaks=peaks, rows=rows)
    flops: dict[str, float] = {}

    def add(name: str, setting: str, t: dict | None, status: str = "ok") -> dict:
        problem, prec = problems[name], SETTINGS[setting].precision
        step = t and t["step"]
        rate = flops[name] / step if step else None
        row = {"problem": name, "batch": problem.batch_size, "setting": setting,
               "precision": prec, "status": status, "step_ms": step and step * 1e3,
               "gflop_per_step": flops[name] / 1e9, "tflop_per_s": rate and rate / 1e12,
               "vs_peak": rate and rate / peaks[prec],
               "first_step_ms": t and t["first_step"] * 1e3,
               "peak_memory_mib": t and t["peak_memory_mib"], "data": labels[name]}  # fmt: skip
        rows.append(row)
        return row

    for name in ORDER:
        if ctx.out_of_time():
            return
        overrides = {"batch_size": s.batch[name]} if name in s.batch else {}
        try:
            problem, data, why = load_for_timing(
                name, device, cfg.out / "scratch", data_root=cfg.data_root,
                mirror=cfg.mirror, kind=s.stand_in, real=not cfg.tiny, overrides=overrides,
            )  # fmt: skip
            flops[name] = step_flops(problem, next(problem.train_batches(0)))
        except Exception as err:  # one problem's failure leaves the others timed
            rows.append({"problem": name, "status": _error(err)})
            continue
        if why and not cfg.tiny:
            ctx.note(f"{name}: {why}")
        problems[name], labels[name] = problem, data
        for setting in EAGER:
            if ctx.out_of_time():
                return
            if not applies(problem, SETTINGS[setting]):
                continue
            why = unsupported(SETTINGS[setting], device)
            if why is not None:
                add(name, setting, None, f"skipped: {why}")
                continue
            try:
                t = time_steps(problem, device, SETTINGS[setting], s.steps, s.warmup,
                               deadline=ctx.deadline)  # fmt: skip
            except Exception as err:  # a setting's failure is its row; "eager" is the baseline
                if setting == EAGER[0]:
                    raise
                add(name, setting, None, _error(err))
                continue
            by_setting.setdefault(name, {})[setting] = t["step"]
            eager.setdefault(name, t)  # the first, "eager", is the projection's baseline
            row = add(name, setting, t)
            if setting != EAGER[0]:  # the same weights and batch: the first loss agrees
                row["loss_rel_diff"] = loss_difference(eager[name], t)
    _bn_layer(cfg, ctx)
    _graphs(cfg, ctx, problems)
    _compiled(cfg, ctx, problems, eager, compiled, by_setting, add)


def _bn_layer(cfg: CheckConfig, ctx: Context) -> None:
    """WRN-40-4's batch norm + ReLU layer alone, eager against the fused Triton kernels."""
    from ..problems.models.bn_relu import kernels_available

    rows: list[dict] = []
    shape = "x".join(map(str, SHAPE))
    title = (f"Batch norm + ReLU, one layer forward and backward at {shape} "
             "(`problem.fused_bn_relu`), eager against the fused Triton kernels; the fused "
             f"layer's {BYTES_PASSES} activation passes per second against a copy's")  # fmt: skip
    ctx.table(title, rows)
    why = kernels_available(cfg.device)
    if why is not None or ctx.out_of_time():
        ctx.note(f"batch norm + ReLU layer skipped: {why or 'out of time'}")
        return
    try:
        rows.extend(time_bn_relu(cfg.device))
    except Exception as err:  # the kernels' failure is a row, the check goes on
        rows.append({"status": _error(err)})


def _graphs(cfg: CheckConfig, ctx: Context, problems: dict) -> None:
    why = cuda_graph_support(cfg.device)
    rows: list[dict] = []
    ctx.table("Whole-step CUDA graph (`TrainSettings.cuda_graph`) against the same runner "
              "loop without it, P1 and P4, ms per step (the capture included)", rows)  # fmt: skip
    if why:
        ctx.note(f"whole-step CUDA graphs skipped: {why}")
        return
    for name in (n for n in GRAPH_PROBLEMS if n in problems):
        if ctx.out_of_time():
            return
        folder = cfg.out / "scratch" / f"graph-{name}"
        plain = runner_step_seconds(problems[name], cfg.device, cfg.sizes.runner_steps,
                                    folder / "plain")  # fmt: skip
        graph = runner_step_seconds(problems[name], cfg.device, cfg.sizes.runner_steps,
                                    folder / "graph", cuda_graph=True)  # fmt: skip
        rows.append({"problem": name, "runner_ms": plain * 1e3, "graph_ms": graph * 1e3,
                     "speed_up": plain / graph})  # fmt: skip
    _graphed_group(cfg, ctx, problems)


def _graphed_group(cfg: CheckConfig, ctx: Context, problems: dict) -> None:
    """P1: a group of K graphed against the same group eager, ms per member-step."""
    # The driver's group size on CUDA, unless the check's sizes set one.
    name, k, steps = "fmnist_2c2d", cfg.sizes.group_members or AUTO_MEMBERS, cfg.sizes.runner_steps
    if name not in problems or ctx.out_of_time():
        return
    rows: list[dict] = []
    ctx.table(f"Whole-step CUDA graph of a group (`GraphedStacked`), {name}, K = {k}, "
              "against the same group eager, ms per member-step (the capture included)",
              rows)  # fmt: skip
    folder, seeds = cfg.out / "scratch" / f"graph-group-{name}", list(range(k))
    with evaluation_off():
        plain = together(problems[name], seeds, steps, folder / "plain", cfg.device)
        graph = together(problems[name], seeds, steps, folder / "graph", cfg.device,
                         cuda_graph=True)  # fmt: skip
    per = 1e3 / (k * steps)
    rows.append({"problem": name, "K": k, "group_ms": plain * per, "graph_ms": graph * per,
                 "speed_up": plain / graph})  # fmt: skip


def _compiled(cfg, ctx, problems, eager, compiled, by_setting, add) -> None:
    todo = [n for n in cfg.sizes.compile_problems if n in problems]
    for i, name in enumerate(todo):
        if ctx.out_of_time():
            return
        left = [COMPILE_WEIGHT.get(n, 1.0) for n in todo[i:]]
        cap_s = max(ctx.left() * left[0] / sum(left), 1.0)
        for mode in cfg.compile_modes:
            setting = SETTINGS["compile"]
            if mode != setting.compile:
                setting = type(setting)(cudnn_benchmark=True, compile=mode)
            try:
                with cap(cap_s):
                    t = time_steps(problems[name], cfg.device, setting, cfg.sizes.steps,
                                   cfg.sizes.warmup, deadline=ctx.deadline)  # fmt: skip
            except CapReached:
                torch.compiler.reset()
                add(name, "compile", None, f"{mode}: compile not finished within its "
                                          f"{cap_s:.0f} s cap")  # fmt: skip
                continue
            except Exception as err:
                add(name, "compile", None, f"{mode}: {_error(err)}")
                continue
            t["loss_rel_diff"] = loss_difference(eager[name], t)
            compiled.setdefault(name, {})[mode] = t
            by_setting[name][f"compile ({mode})"] = t["step"]
            row = add(name, "compile", t, f"{mode}: ok")
            row.update(compile_s=t["compile_s"], speed_up=eager[name]["step"] / t["step"],
                       loss_rel_diff=t["loss_rel_diff"])  # fmt: skip


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"
