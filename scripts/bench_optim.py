"""Time one optimizer step on WRN-40-4's parameter shapes, against torch.optim.Adam.

Every optimizer path (single-tensor, foreach, fused: Triton on CUDA, the C kernel on the
CPU) is stepped in turn, round after round (interleaved), so that drifts in machine load
hit all of them alike; the table gives the median step time, its ratio to fused Adam
measured in the same run, the bytes it moves per second against a copy's bandwidth
measured here, and its first step. The header names the CPU (and GPU), and what the C
kernel was built for; the C kernel's build from a cold cache is timed separately. The
torch.compile path is timed last under ``--compile-cap-s`` (its first step compiles).

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
from pathlib import Path

import torch

from dissecting_adam.bench.optim_step import bench, compiled_steps, format_table, wrn_param_shapes


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
    parser.add_argument(
        "--compile-cap-s", type=float, default=None,
        help="time the torch.compile path under this cap (default: 120 on CUDA, off on the CPU)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for device in devices:
        res = bench(device, args.rounds, args.reference_rounds, builds=args.march or [None])
        cap_s = args.compile_cap_s or (120.0 if device.startswith("cuda") else None)
        compiled = compiled_steps(device, wrn_param_shapes(), cap_s) if cap_s else {}
        print(format_table(res, compiled))
        results.append({**res, "compiled": compiled})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
