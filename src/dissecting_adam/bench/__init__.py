"""Measurements of speed: the cores of ``scripts/bench_*.py`` and ``scripts/gpu_check.py``.

Each measuring module times one thing and returns plain numbers; the scripts print them.
Above the protocol in the arrows (scripts -> bench -> protocol -> runner -> optim/problems):

- ``timing``: device sync, timed calls, medians, deadlines, evaluation switched off;
- ``data``: a problem on its real data, or on generated stand-ins of the same shapes;
- ``optim_step``: one optimizer step on WRN-40-4's parameter shapes (single-tensor,
  foreach, fused, then torch.compile under a cap) against fused Adam and a copy's
  bandwidth; ``cpu_kernel``: the C kernel's builds and build time on the CPU;
- ``step_settings``: one training step per setting (cuDNN autotuning, channels_last, bf16
  autocast, compiled), its FLOPs counted once, and the matmul peaks;
- ``problem_step``: one training step split into input / forward+backward / optimizer,
  eager or compiled, with the compile time and the peak device memory;
- ``minibatch``: a step of M-SVAG-mb (per-example variances) against M-SVAG;
- ``runner_overhead``: ``runner.loop.train`` against a bare loop of the same steps;
- ``seed_parallel``: a group of K runs (the runner's stacked engine) against single runs:
  the per member-step cost the driver's batching rests on, on all four problems;
- ``packing``: runs per hour with several tasks at once on one device (workers started
  first, as the driver keeps them), single runs or groups, at steady state and over the
  wall time;
- ``process``: a command run until a deadline, then stopped with SIGTERM.

The GPU check (``scripts/gpu_check.py``): ``check`` runs its eight sections
(``check_measure``: 1, 2, 4, ``check_steps``: 3, ``check_runs``: 5-7, ``check_protocol``:
8, the whole P1 protocol) with ``sections`` (a share of the budget each, failures and
overruns recorded, ``cap`` for one measurement inside a section), ``config``
says how much each measures (full or tiny), ``recommend`` draws the recommendations and
``report`` writes report.json and report.md.
"""
