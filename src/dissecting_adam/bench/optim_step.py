"""One optimizer step on WRN-40-4's parameter shapes, against ``torch.optim.Adam(fused=True)``.

The eager paths are timed first: every method's single-tensor loop (``foreach=False``), its
multi-tensor path and its fused path (on CUDA ``fused_backend="triton"``, on the CPU the C
kernel), beside torch's foreach and fused Adam. They are stepped in turn, round after round
(interleaved), so that drifts in machine load hit all of them alike; ``bench`` returns the
median step time of each and its first step (state allocation, a kernel build or JIT).
A path this build does not offer (the optimizer refuses ``fused_backend``) is listed in
``unavailable`` with the reason, never timed as something else.

The torch.compile path comes last (``compiled_steps``), under a time cap: its first step
compiles, and a compile slower than the cap is reported as such (``CapReached``) while the
eager rows already stand. Each row also gives the bytes it moves per step (parameters and
state read and written, the gradient read) per second, against a copy of a large buffer
timed in the same run (``copy_bandwidth``): an element-wise update cannot beat a copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..optim import MSGD, MSSD, MSSDVA, MSVAG, SVAG, MSSDErf
from ..optim.reference import ReferenceOptimizer
from ..runner.environment import cpu_model
from . import cpu_kernel
from .sections import CapReached, cap
from .timing import NEVER, Deadline, iqr, median, sync

NOT_AVAILABLE = "not available in this build"


def wrn_param_shapes(depth: int = 40, k: int = 4, classes: int = 100) -> list[tuple[int, ...]]:
    """Parameter shapes of WRN-depth-k (pre-activation, 1x1 conv shortcuts, no conv bias)."""
    n = (depth - 4) // 6
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3)]
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        for unit in range(n):
            shapes += [(c_in,), (c_in,), (width, c_in, 3, 3), (width,), (width,)]
            shapes += [(width, width, 3, 3)]
            if unit == 0:
                shapes.append((width, c_in, 1, 1))
            c_in = width
    return shapes + [(c_in,), (c_in,), (classes, c_in), (classes,)]


METHODS = {"M-SVAG": MSVAG, "SVAG": SVAG, "M-SSD": MSSD, "M-SSD-VA": MSSDVA,
           "M-SSD-erf": MSSDErf, "M-SGD": MSGD}  # fmt: skip


def fused_backend(device: str) -> str | None:
    """The fused backend timed with the eager paths: Triton on CUDA, the C kernel (the
    default, no keyword) on the CPU."""
    return "triton" if torch.device(device).type == "cuda" else None


def candidates(device: str, builds=(None,)) -> dict[str, tuple[Callable, str | None]]:
    """Name -> (factory(params), C kernel build or None), in timing order: Adam first, then
    every method's paths (on the CPU one fused entry per ``-march`` build)."""
    backend = fused_backend(device)
    fused_kw = {"fused": True} | ({"fused_backend": backend} if backend else {})
    builds = list(builds) if backend is None else [None]
    out = {
        "Adam foreach": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), None),
        "Adam fused": (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), None),
    }
    for name, cls in METHODS.items():
        out[f"{name} single-tensor"] = (lambda p, cls=cls: cls(p, lr=1e-3, foreach=False), None)
        out[f"{name} foreach"] = (lambda p, cls=cls: cls(p, lr=1e-3, foreach=True), None)
        for build in builds:
            label = f"{name} fused [{backend or 'C kernel'}" + (f" {build}]" if build else "]")
            out[label] = (lambda p, cls=cls: cls(p, lr=1e-3, **fused_kw), build)
    out["M-SVAG reference"] = (lambda p: ReferenceOptimizer(p, "msvag", lr=1e-3), None)
    return out


def make(factory: Callable, shapes, device: str):
    """The optimizer over random parameters of ``shapes`` with random gradients; raises
    ``LookupError(NOT_AVAILABLE)`` when the optimizer refuses a ``fused_backend`` keyword."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    try:
        return factory(params)
    except TypeError as err:
        if "fused_backend" in str(err):
            raise LookupError(NOT_AVAILABLE) from err
        raise


def moved_bytes(opt) -> int:
    """Bytes an element-wise step moves at least: each parameter and each of its state
    tensors of the same shape read and written, its gradient read."""
    total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            state = [s for s in opt.state.get(p, {}).values()
                     if torch.is_tensor(s) and s.shape == p.shape]  # fmt: skip
            total += p.numel() * p.element_size() * (3 + 2 * len(state))
    return total


def copy_bandwidth(device: str, mib: int, repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` over ``mib`` MiB (read + write), best of
    ``repeats`` after a warm-up."""
    src = torch.ones(mib * 2**18, device=device)  # float32: 4 bytes a value
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def first_step(opt, device: str, lib=None) -> float:
    """Seconds of one step (``lib``: the C kernel build the step calls), device synced."""
    if lib is not None:
        cpu_kernel.use(lib)
    sync(device)
    start = time.perf_counter()
    opt.step()
    sync(device)
    return time.perf_counter() - start


def bench(device: str, rounds: int, reference_rounds: int, shapes=None,
          deadline: Deadline = NEVER, copy_mib: int = 256, builds=(None,)) -> dict:  # fmt: skip
    """Median step times of every eager candidate over ``rounds`` interleaved rounds (fewer,
    but at least one, when ``deadline`` passes first).
    ``builds``: on the CPU, the ``-march`` values of the C kernel (None: the default)."""
    shapes = shapes or wrn_param_shapes()
    cpu = torch.device(device).type == "cpu"
    costs = cpu_kernel.one_time_seconds() if cpu else {}
    libs = cpu_kernel.load_kernels(list(builds)) if cpu else {}
    kernel = {b or "default": cpu_kernel.build_info(lib) for b, lib in libs.items()}
    opts, first, moved, unavailable = {}, {}, {}, {}
    # Every candidate gets its first step (cheap, but for a JIT it is the figure asked
    # for); the deadline stops the rounds, after the first.
    for name, (factory, build) in candidates(device, builds).items():
        try:
            opt, lib = make(factory, shapes, device), libs.get(build)
            first[name] = first_step(opt, device, lib)  # state allocation, build or JIT
        except Exception as err:  # e.g. no Triton: the others are still timed
            unavailable[name] = str(err) if isinstance(err, LookupError) else repr(err)[:200]
            continue
        opts[name], moved[name] = (opt, lib), moved_bytes(opt)
    times: dict[str, list[float]] = {name: [] for name in opts}
    done = 0
    while done < rounds and not (done > 0 and deadline.expired()):
        for name, (opt, lib) in opts.items():
            if "reference" in name and done >= reference_rounds:
                continue
            times[name].append(first_step(opt, device, lib))
        done += 1
    return {
        "device": device,
        "device_name": cpu_model() if cpu else torch.cuda.get_device_name(device),
        "cpu_model": cpu_model(),
        "cpu_simd": cpu_kernel.cpu_simd(),
        "kernel": kernel,
        "one_time_seconds": costs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tensors": len(shapes),
        "values": sum(torch.Size(s).numel() for s in shapes),
        "rounds": done,
        "copy_bytes_per_s": copy_bandwidth(device, copy_mib),
        "first_step_ms": {k: v * 1e3 for k, v in first.items()},
        "median_ms": {k: median(t) * 1e3 for k, t in times.items() if t},
        "iqr_ms": {k: iqr(t) * 1e3 for k, t in times.items() if t},
        "bytes": moved,
        "unavailable": unavailable,
    }


def compiled_steps(device: str, shapes, cap_s: float, steps: int = 20,
                   methods=("M-SVAG",)) -> dict[str, dict]:  # fmt: skip
    """Per method, its torch.compile fused path (``fused_backend="compile"``; on CUDA a
    build without the keyword compiles under plain ``fused=True``): ``first_step_ms`` (the
    compile) and ``median_ms`` of ``steps`` more, or ``status`` saying why not: the cap
    reached (with the seconds it ran) or not available in this build."""
    out = {}
    for name in methods:
        cls = METHODS[name]
        try:
            opt = make(lambda p, cls=cls: cls(p, lr=1e-3, fused=True, fused_backend="compile"),
                       shapes, device)  # fmt: skip
        except LookupError:
            if torch.device(device).type != "cuda":
                out[name] = {"status": NOT_AVAILABLE}
                continue
            opt = make(lambda p, cls=cls: cls(p, lr=1e-3, fused=True), shapes, device)
        start = time.perf_counter()
        try:
            with cap(cap_s):
                first = first_step(opt, device)
                times = []
                for _ in range(steps):
                    times.append(first_step(opt, device))
        except CapReached:
            torch.compiler.reset()
            spent = time.perf_counter() - start
            out[name] = {"status": f"compile not finished within the {cap_s:.0f} s cap "
                                   f"(stopped after {spent:.0f} s)"}  # fmt: skip
            continue
        out[name] = {"status": "ok", "first_step_ms": first * 1e3,
                     "median_ms": median(times) * 1e3, "bytes": moved_bytes(opt)}  # fmt: skip
    return out


def rows(res: dict, compiled: dict | None = None) -> list[dict]:
    """One row per path: median and IQR (ms), the ratio to fused Adam, GB/s moved and that
    over the copy bandwidth, the first step (ms); unavailable and capped paths as rows with
    their status."""
    med, copy = res["median_ms"], res["copy_bytes_per_s"]
    fused = med.get("Adam fused")

    def row(name, ms, moved, first, status="ok", spread=None) -> dict:
        rate = moved / (ms / 1e3) if ms and moved else None
        return {"optimizer": name, "status": status, "median_ms": ms, "iqr_ms": spread,
                "vs_adam_fused": ms / fused if ms and fused else None,
                "gb_per_s": rate / 1e9 if rate else None,
                "vs_copy": rate / copy if rate else None, "first_step_ms": first}  # fmt: skip

    out = [row(n, ms, res["bytes"].get(n), res["first_step_ms"].get(n), spread=res["iqr_ms"][n])
           for n, ms in med.items()]  # fmt: skip
    out += [row(n, None, None, None, status=why) for n, why in res["unavailable"].items()]
    for name, c in (compiled or {}).items():
        label = f"{name} fused [compile]"
        out.append(row(label, c.get("median_ms"), c.get("bytes"), c.get("first_step_ms"),
                       status=c["status"]))  # fmt: skip
    return out


def format_table(res: dict, compiled: dict | None = None) -> str:
    """The table ``scripts/bench_optim.py`` prints."""
    lines = [
        f"\n{res['device']}: {res['device_name']} (CPU: {res['cpu_model']})",
        f"torch {res['torch']}, {res['threads']} threads: {res['tensors']} tensors, "
        f"{res['values']:,} values, {res['rounds']} interleaved rounds; copy bandwidth "
        f"{res['copy_bytes_per_s'] / 1e9:.1f} GB/s",
    ]
    if res["kernel"]:
        lines.append(f"CPU SIMD: {res['cpu_simd']}")
    lines += [f"C kernel ({build}): {info}" for build, info in res["kernel"].items()]
    table = rows(res, compiled)
    width = max(18, *(len(r["optimizer"]) for r in table))
    head = ("optimizer", "median ms", "/ Adam fused", "GB/s", "/ copy", "first ms")
    lines.append(f"{head[0]:<{width}} {head[1]:>10} {head[2]:>12} {head[3]:>7} {head[4]:>7} "
                 f"{head[5]:>9}")  # fmt: skip
    for r in table:
        if r["median_ms"] is None:
            lines.append(f"{r['optimizer']:<{width}} {r['status']}")
            continue
        cells = [_num(r[k], f) for k, f in (("median_ms", 10), ("vs_adam_fused", 12),
                                            ("gb_per_s", 7), ("vs_copy", 7),
                                            ("first_step_ms", 9))]  # fmt: skip
        lines.append(f"{r['optimizer']:<{width}} " + " ".join(cells))
    lines += [f"one-time: {what}: {sec:.2f} s" for what, sec in res["one_time_seconds"].items()]
    return "\n".join(lines)


def _num(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"
