"""Time one optimizer step on WRN-40-4's parameter shapes, against torch.optim.Adam.

Every optimizer is stepped in turn, round after round (interleaved), so that
drifts in machine load hit all of them alike; the table gives the median step
time and its ratio to fused and to foreach Adam measured in the same run. The
one-time cost of the fused path (building the C kernel on the CPU, compiling
with torch.compile elsewhere) is measured separately from a cold cache.

    python scripts/bench_optim.py                     # CPU, and CUDA when present
    python scripts/bench_optim.py --device cpu --rounds 50 --json results/bench/optim.json
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


def candidates() -> dict[str, callable]:
    fused = {"fused": True}
    return {
        "Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "Adam fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "M-SVAG foreach": lambda p: MSVAG(p, lr=1e-3),
        "M-SVAG fused": lambda p: MSVAG(p, lr=1e-3, **fused),
        "SVAG foreach": lambda p: SVAG(p, lr=1e-3),
        "SVAG fused": lambda p: SVAG(p, lr=1e-3, **fused),
        "M-SSD foreach": lambda p: MSSD(p, lr=1e-3),
        "M-SSD fused": lambda p: MSSD(p, lr=1e-3, **fused),
        "M-SSD-VA foreach": lambda p: MSSDVA(p, lr=1e-3),
        "M-SSD-VA fused": lambda p: MSSDVA(p, lr=1e-3, **fused),
        "M-SSD-erf foreach": lambda p: MSSDErf(p, lr=1e-3),
        "M-SSD-erf fused": lambda p: MSSDErf(p, lr=1e-3, **fused),
        "M-SGD foreach": lambda p: MSGD(p, lr=1e-3),
        "M-SGD fused": lambda p: MSGD(p, lr=1e-3, **fused),
        "M-SVAG reference": lambda p: ReferenceOptimizer(p, "msvag", lr=1e-3),
    }


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


def bench(device: str, rounds: int, reference_rounds: int) -> dict:
    shapes = wrn_param_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    costs = one_time_costs(device, shapes)
    opts = {name: make(f, shapes, device) for name, f in candidates().items()}
    for opt in opts.values():  # warm-up: state allocation, kernel build or compile
        opt.step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for r in range(rounds):
        for name, opt in opts.items():
            if "reference" in name and r >= reference_rounds:
                continue
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
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
    print(
        f"\n{res['device']} ({res['device_name']}, {res['threads']} threads, "
        f"torch {res['torch']}): "
        f"{res['tensors']} tensors, {res['values']:,} values, {res['rounds']} interleaved rounds"
    )
    head = ("optimizer", "median ms", "IQR ms", "/ Adam fused", "/ Adam foreach")
    print(f"{head[0]:<18} {head[1]:>10} {head[2]:>8} {head[3]:>13} {head[4]:>15}")
    for name, ms in med.items():
        print(
            f"{name:<18} {ms:>10.2f} {res['iqr_ms'][name]:>8.2f} {ms / fused:>13.2f} "
            f"{ms / foreach:>15.2f}"
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
    args = parser.parse_args()
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for device in devices:
        res = bench(device, args.rounds, args.reference_rounds)
        print_table(res)
        results.append(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
