"""One timed run on a GPU machine that measures what the reproduction needs, and reports it.

    python scripts/gpu_check.py                                  # CUDA, 780 s budget
    python scripts/gpu_check.py --budget-s 450 --mirror DIR --out results/gpu_check/h200
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check   # CPU self-check

Eight sections, each with a share of ``--budget-s`` (``dissecting_adam.bench.check``): the
machine and the CUDA-marked tests; one optimizer step on WRN-40-4's shapes (every method's
single-tensor, foreach and fused paths against torch's fused Adam and a copy's bandwidth,
then torch.compile under a cap); one training step per problem and setting (eager, cuDNN
autotuning, channels_last, bf16 autocast, compiled) with TFLOP/s against the matmul peaks
measured here; the runner's overhead; runs per hour with packed tasks and groups (steady
state and wall time); a real P1 run and the start of the P1 reproduction; the paper
protocol projected per precision; the whole P1 paper protocol to its end (Fig. 5's P1
panel, summary, claims). ``report.md`` and ``report.json`` in ``--out`` are rewritten after
every section, so a killed check still leaves a report; rerun and the P1 protocol resumes.
``--tiny``: every section at tiny sizes on generated data (a self-check, not a measurement).

Needs only the checkout on ``PYTHONPATH`` (``src``) and Hydra for composing the protocol:
``PYTHONPATH=<hydra>:$PWD/src python3 scripts/gpu_check.py --mirror DIR --out DIR``.
Exit status: 0, or 1 if a section failed; 2 without a CUDA device (and no ``--device cpu``);
130 when stopped by Ctrl-C or SIGTERM (the report then has the sections that ran).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a self-check")
    parser.add_argument("--budget-s", type=float, help="wall-time budget (780; --tiny: 200)")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    parser.add_argument("--compile-modes", default="default", help="comma-separated modes")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning on")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--mirror", default=None, help="original downloads (default: $DATA_MIRROR)")
    parser.add_argument("--p1-lr", type=float, default=0.1, help="M-SVAG's step size for P1")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        cuda = torch.version.cuda
        build = f"CUDA {cuda} build, no device visible" if cuda else "CPU-only build"
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, {build}); run it on "
              "a GPU machine, or use --device cpu --tiny for the CPU self-check")  # fmt: skip
        return 2

    from dissecting_adam.bench.check import run_check
    from dissecting_adam.bench.config import CheckConfig, paper_reproduction, planner
    from dissecting_adam.bench.sections import FAILED

    # No long download attempts without a network: a missing data set is generated instead.
    for name, value in (("DOWNLOAD_TIMEOUT", "5"), ("DOWNLOAD_ATTEMPTS", "1")):
        os.environ.setdefault(f"DISSECTING_ADAM_{name}", value)
    if args.tiny and args.device == "cpu":  # a self-check: steady on a shared machine
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the runs it starts, too
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # record, write, stop
    out = args.out.resolve()
    cfg = CheckConfig(
        device=args.device, tiny=args.tiny, out=out, root=ROOT,
        budget_s=args.budget_s or (200.0 if args.tiny else 780.0),
        data_root=str(Path(args.data_root).resolve()),
        mirror=str(Path(args.mirror).resolve()) if args.mirror else None,
        compile_modes=tuple(m.strip() for m in args.compile_modes.split(",") if m.strip()),
        cudnn_benchmark=args.cudnn_benchmark, p1_lr=args.p1_lr,
        reproduction=lambda: paper_reproduction(ROOT / "conf", args.device, out / "store"),
        planner=lambda pairs, overrides: planner(ROOT / "conf", pairs, overrides),
    )  # fmt: skip
    try:
        doc = run_check(cfg)
    except KeyboardInterrupt:
        print(f"gpu_check: interrupted; {out / 'report.md'} has the sections that ran")
        return 130
    print(f"gpu_check: wrote {out / 'report.md'} and {out / 'report.json'}")
    return 1 if any(s["status"] == FAILED for s in doc["sections"]) else 0


if __name__ == "__main__":
    sys.exit(main())
