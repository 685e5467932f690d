"""One optimizer step on WRN-40-4's parameter shapes, against ``torch.optim.Adam``.

Every optimizer is stepped in turn, round after round (interleaved), so that drifts in
machine load hit all of them alike; ``bench`` returns the median step time of each, and
``ratios`` its ratio to fused and to foreach Adam measured in the same run and, for each
fused path, to the same method's foreach path. The one-time cost of the fused path
(building the C kernel on the CPU, compiling with torch.compile elsewhere) is measured
from a cold cache, and the first step of every optimizer (state allocation, and the
compile of a fused path) is kept beside the steady-state times.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import torch

from ..optim import MSGD, MSSD, MSSDVA, MSVAG, SVAG, MSSDErf, _native
from ..optim.reference import ReferenceOptimizer
from ..runner.environment import cpu_model
from .timing import NEVER, Deadline, iqr, median, sync


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


def candidates(builds: list[str | None]) -> dict[str, tuple[Callable, str | None]]:
    """Name -> (factory, kernel build or None). One fused entry per method and build."""
    out = {
        "Adam foreach": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), None),
        "Adam fused": (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), None),
    }
    for name, cls in METHODS.items():
        out[f"{name} foreach"] = (lambda p, cls=cls: cls(p, lr=1e-3), None)
        for build in builds:
            label = f"{name} fused" + (f" [{build}]" if len(builds) > 1 else "")
            out[label] = (lambda p, cls=cls: cls(p, lr=1e-3, fused=True), build)
    out["M-SVAG reference"] = (lambda p: ReferenceOptimizer(p, "msvag", lr=1e-3), None)
    return out


def cpu_simd() -> str:
    """The vector extensions of this CPU that matter for the kernel (x86: AVX-512F, AVX2)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith(("flags", "Features"))), "").split()
    except OSError:
        flags = []
    have = [f for f in ("avx512f", "avx2", "fma", "sse2", "asimd", "sve") if f in flags]
    return " ".join(have) or "unknown"


def load_kernels(builds: list[str | None]) -> dict[str | None, object]:
    """Build (or load from the cache) the C kernel once per -march; None: the default."""
    libs = {}
    prev = os.environ.get("DISSECTING_ADAM_MARCH")
    try:
        for build in builds:
            if build is None:
                os.environ.pop("DISSECTING_ADAM_MARCH", None)
                if prev is not None:
                    os.environ["DISSECTING_ADAM_MARCH"] = prev
            else:
                os.environ["DISSECTING_ADAM_MARCH"] = build
            _native._lib = None
            libs[build] = _native.load()
    finally:
        os.environ.pop("DISSECTING_ADAM_MARCH", None)
        if prev is not None:
            os.environ["DISSECTING_ADAM_MARCH"] = prev
    return libs


def make(factory, shapes, device):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return factory(params)


def one_time_costs(device: str, shapes) -> dict[str, float]:
    """Seconds of the fused path's first step (kernel build or compile) from a cold cache."""
    costs = {}
    if device == "cpu":
        old, _native._lib = _native._lib, None
        with tempfile.TemporaryDirectory() as tmp:
            prev = os.environ.get("DISSECTING_ADAM_CACHE")
            os.environ["DISSECTING_ADAM_CACHE"] = tmp
            try:
                _native.load()
                costs["C kernel build (cold cache)"] = _native.build_seconds
                _native._lib = None
                _native.load()
                costs["C kernel load (warm cache)"] = _native.build_seconds
            finally:
                if prev is None:
                    os.environ.pop("DISSECTING_ADAM_CACHE")
                else:
                    os.environ["DISSECTING_ADAM_CACHE"] = prev
        _native._lib = old
    else:
        for name, cls in (("M-SVAG", MSVAG), ("M-SSD", MSSD)):
            opt = make(lambda p, cls=cls: cls(p, lr=1e-3, fused=True), shapes, device)
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            costs[f"{name} torch.compile, first step"] = time.perf_counter() - start
    return costs


def bench(device: str, rounds: int, reference_rounds: int, builds: list[str | None],
          shapes=None, deadline: Deadline = NEVER) -> dict:  # fmt: skip
    """Median step times (ms) of every candidate over ``rounds`` interleaved rounds (fewer
    when ``deadline`` passes first: ``rounds`` says how many ran; candidates not warmed up
    by then are left out and listed in ``left_out``). ``shapes``: WRN-40-4's by default."""
    shapes = shapes or wrn_param_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    costs = one_time_costs(device, shapes)
    if device != "cpu":
        builds = [None]  # the C kernel (and -march) is for the CPU only
    libs = load_kernels(builds) if device == "cpu" else {}
    kernel = {}
    for build, lib in libs.items():
        _native._lib = lib
        kernel[build or "default"] = _native.build_info()
    opts, first, left_out = {}, {}, []

    def step(opt, lib) -> None:
        if lib is not None:  # this fused entry's kernel build
            _native._lib = lib
        opt.step()

    for name, (factory, build) in candidates(builds).items():
        if deadline.expired():
            left_out.append(name)
            continue
        opt, lib = make(factory, shapes, device), libs.get(build)
        sync(device)
        start = time.perf_counter()
        step(opt, lib)  # warm-up: state allocation, kernel build or compile
        sync(device)
        first[name] = time.perf_counter() - start
        opts[name] = (opt, lib)
    times: dict[str, list[float]] = {name: [] for name in opts}
    done = 0
    while done < rounds and not (done > 0 and deadline.expired()):
        for name, (opt, lib) in opts.items():
            if "reference" in name and done >= reference_rounds:
                continue
            sync(device)
            start = time.perf_counter()
            step(opt, lib)
            sync(device)
            times[name].append(time.perf_counter() - start)
        done += 1
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_simd": cpu_simd(),
        "kernel": kernel,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tensors": len(shapes),
        "values": numel,
        "rounds": done,
        "one_time_seconds": costs,
        "first_step_ms": {k: v * 1e3 for k, v in first.items()},
        "median_ms": {k: median(t) * 1e3 for k, t in times.items() if t},
        "iqr_ms": {k: iqr(t) * 1e3 for k, t in times.items() if t},
        "left_out": left_out,
    }


def ratios(res: dict) -> list[dict]:
    """One row per optimizer: median and IQR (ms), the ratios to fused and foreach Adam, and
    a fused path's ratio to its own method's foreach path (None where not measured)."""
    med = res["median_ms"]
    fused, foreach = med.get("Adam fused"), med.get("Adam foreach")
    rows = []
    for name, ms in med.items():
        own = med.get(name.split(" fused")[0] + " foreach") if " fused" in name else None
        rows.append({
            "optimizer": name,
            "median_ms": ms,
            "iqr_ms": res["iqr_ms"][name],
            "vs_adam_fused": ms / fused if fused else None,
            "vs_adam_foreach": ms / foreach if foreach else None,
            "vs_own_foreach": ms / own if own and not name.startswith("Adam") else None,
            "first_step_ms": res.get("first_step_ms", {}).get(name),
        })  # fmt: skip
    return rows


def format_table(res: dict) -> str:
    """The table ``scripts/bench_optim.py`` prints."""
    lines = [f"\n{res['device']}: {res['device_name']}"]
    if res["device"] == "cpu":
        lines.append(f"CPU SIMD: {res['cpu_simd']}")
        for build, info in res["kernel"].items():
            lines.append(f"C kernel ({build}): {info}")
    lines.append(
        f"torch {res['torch']}, {res['threads']} threads: {res['tensors']} tensors, "
        f"{res['values']:,} values, {res['rounds']} interleaved rounds"
    )
    width = max(18, *map(len, res["median_ms"]))
    head = ("optimizer", "median ms", "IQR ms", "/ Adam fused", "/ Adam foreach", "/ own foreach")
    lines.append(
        f"{head[0]:<{width}} {head[1]:>10} {head[2]:>8} {head[3]:>13} {head[4]:>15} {head[5]:>14}"
    )
    for row in ratios(res):
        own = row["vs_own_foreach"]
        own_txt = f"{own:>14.2f}" if own is not None else ""
        lines.append(
            f"{row['optimizer']:<{width}} {row['median_ms']:>10.2f} {row['iqr_ms']:>8.2f} "
            f"{_ratio(row['vs_adam_fused']):>13} {_ratio(row['vs_adam_foreach']):>15} "
            f"{own_txt}".rstrip()
        )
    for name, sec in res["one_time_seconds"].items():
        lines.append(f"one-time: {name}: {sec:.2f} s")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
