"""Measurements of speed: the cores of ``scripts/bench_*.py`` and ``scripts/gpu_check.py``.

Each measuring module times one thing and returns plain numbers; the scripts print them.
Above the protocol in the arrows (scripts -> bench -> protocol -> runner -> optim/problems):

- ``timing``: device sync, timed calls, medians, deadlines, evaluation switched off;
- ``data``: a problem on its real data, or on generated stand-ins of the same shapes;
- ``optim_step``: one optimizer step on WRN-40-4's parameter shapes, against Adam;
- ``problem_step``: one training step split into input / forward+backward / optimizer,
  eager or compiled, with the compile time and the peak device memory;
- ``runner_overhead``: ``runner.loop.train`` against a bare loop of the same steps;
- ``seed_parallel``: K seeds as one batched run against single runs;
- ``packing``: runs per hour with several runs at once on one device, and with K seeds;
- ``process``: a command run until a deadline, then stopped with SIGTERM.

The GPU check (``scripts/gpu_check.py``): ``check`` runs its seven sections
(``check_measure``: 1-4, ``check_runs``: 5-7) with ``sections`` (a share of the budget
each, failures and overruns recorded), ``config`` says how much each measures (full or
tiny), ``recommend`` draws the recommendations and ``report`` writes report.json and
report.md.
"""
