"""Time one optimizer step on WRN-40-4's parameter shapes, against torch.optim.Adam.

Every optimizer is stepped in turn, round after round (interleaved), so that
drifts in machine load hit all of them alike; the table gives the median step
time and its ratio to fused and to foreach Adam measured in the same run, and
for each fused path its ratio to the same method's foreach path. The header
names the CPU, the SIMD extensions it has and what the C kernel was built for.
The one-time cost of the fused path (building the C kernel on the CPU,
compiling with torch.compile elsewhere) is measured separately from a cold cache.

    python scripts/bench_optim.py                     # CPU, and CUDA when present
    python scripts/bench_optim.py --device cpu --rounds 50 --json results/bench/optim.json
    python scripts/bench_optim.py --device cpu --march native --march x86-64-v3

``--march`` (repeatable) builds the C kernel for each given ``-march`` and times
every fused CPU path once per build in the same interleaved run, e.g. the AVX2
code (x86-64-v3) beside the AVX-512 code (native) on an AVX-512 machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dissecting_adam.optim import MSGD, MSSD, MSSDVA, MSVAG, SVAG, MSSDErf, _native
from dissecting_adam.optim.reference import ReferenceOptimizer


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


def candidates(builds: list[str | None]) -> dict[str, tuple[callable, str | None]]:
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def bench(device: str, rounds: int, reference_rounds: int, builds: list[str | None]) -> dict:
    shapes = wrn_param_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    costs = one_time_costs(device, shapes)
    if device != "cpu":
        builds = [None]  # the C kernel (and -march) is for the CPU only
    libs = load_kernels(builds) if device == "cpu" else {}
    kernel = {}
    for build, lib in libs.items():
        _native._lib = lib
        kernel[build or "default"] = _native.build_info()
    cands = candidates(builds)
    opts = {name: (make(f, shapes, device), libs.get(build)) for name, (f, build) in cands.items()}

    def step(opt, lib) -> None:
        if lib is not None:  # this fused entry's kernel build
            _native._lib = lib
        opt.step()

    for opt, lib in opts.values():  # warm-up: state allocation, kernel build or compile
        step(opt, lib)
    times: dict[str, list[float]] = {name: [] for name in opts}
    for r in range(rounds):
        for name, (opt, lib) in opts.items():
            if "reference" in name and r >= reference_rounds:
                continue
            sync(device)
            start = time.perf_counter()
            step(opt, lib)
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
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
        "rounds": rounds,
        "one_time_seconds": costs,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "iqr_ms": {
            k: (statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0]) * 1e3
            if len(t) >= 4
            else float("nan")
            for k, t in times.items()
        },
    }


def print_table(res: dict) -> None:
    med = res["median_ms"]
    fused, foreach = med["Adam fused"], med["Adam foreach"]
    print(f"\n{res['device']}: {res['device_name']}")
    if res["device"] == "cpu":
        print(f"CPU SIMD: {res['cpu_simd']}")
        for build, info in res["kernel"].items():
            print(f"C kernel ({build}): {info}")
    print(
        f"torch {res['torch']}, {res['threads']} threads: {res['tensors']} tensors, "
        f"{res['values']:,} values, {res['rounds']} interleaved rounds"
    )
    width = max(18, *map(len, med))
    head = ("optimizer", "median ms", "IQR ms", "/ Adam fused", "/ Adam foreach", "/ own foreach")
    print(
        f"{head[0]:<{width}} {head[1]:>10} {head[2]:>8} {head[3]:>13} {head[4]:>15} {head[5]:>14}"
    )
    for name, ms in med.items():
        own = med.get(name.split(" fused")[0] + " foreach") if " fused" in name else None
        own_txt = f"{ms / own:>14.2f}" if own and not name.startswith("Adam") else ""
        print(
            f"{name:<{width}} {ms:>10.2f} {res['iqr_ms'][name]:>8.2f} {ms / fused:>13.2f} "
            f"{ms / foreach:>15.2f} {own_txt}".rstrip()
        )
    for name, sec in res["one_time_seconds"].items():
        print(f"one-time: {name}: {sec:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", action="append", help="cpu, cuda (default: cpu and cuda if present)"
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--reference-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--march",
        action="append",
        help="build the C kernel for this -march (repeatable: one fused entry per build; "
        "default: $DISSECTING_ADAM_MARCH or native)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for device in devices:
        res = bench(device, args.rounds, args.reference_rounds, args.march or [None])
        print_table(res)
        results.append(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
