"""Measurements of speed: the cores of ``scripts/bench_*.py`` and ``scripts/gpu_check.py``.

Each measuring module times one thing and returns plain numbers; the scripts print them.
Above the protocol in the arrows (scripts -> bench -> protocol -> runner -> optim/problems):

- ``timing``: device sync, timed calls, medians, deadlines, evaluation switched off;
- ``data``: a problem on its real data, or on generated stand-ins of the same shapes;
- ``optim_step``: one optimizer step on WRN-40-4's parameter shapes, against Adam;
- ``problem_step``: one training step split into input / forward+backward / optimizer,
  eager or compiled, with the compile time and the peak device memory;
- ``runner_overhead``: ``runner.loop.train`` against a bare loop of the same steps;
- ``seed_parallel``: a group of K runs (the runner's stacked engine) against single runs:
  the per member-step cost the driver's batching rests on, on all four problems;
- ``packing``: runs per hour with several tasks at once on one device (workers started
  first, as the driver keeps them), single runs or groups;
- ``process``: a command run until a deadline, then stopped with SIGTERM.

The GPU check (``scripts/gpu_check.py``): ``check`` runs its eight sections
(``check_measure``: 1-4, ``check_runs``: 5-7, ``check_protocol``: 8, the whole P1 protocol)
with ``sections`` (a share of the budget each, failures and overruns recorded), ``config``
says how much each measures (full or tiny), ``recommend`` draws the recommendations and
``report`` writes report.json and report.md.
"""
