"""How the driver batches runs: which runs train together as one group, and how many.

A group is up to ``members`` runs that differ only in seed and step size (the runner's
``session.check_group``), trained as one batched computation (``runner.engine.Stacked``).
``tasks`` cuts a launcher's batch into such groups: everything but the seed and the step size
is the key, so a pair's replicates form a group and so do the step sizes of one search
round (the probes of a round together, the whole search runs together). Methods that need
per-example gradients (``msvag_mb``, ``svag_mb``) cannot be stacked and stay single runs.

``resolve`` turns the setting (``parallel_seeds``: ``auto`` or a number) into a
``Batching`` for the device the runs use, with the reason the plan prints:

- ``auto`` on CUDA: groups of up to ``AUTO_MEMBERS`` (10: the paper's replicates of a pair
  in one group; one small network leaves a large GPU mostly idle, so K of them cost little
  more than one), and ``launcher=packed`` (runs of different pairs side by side);
- ``auto`` on the CPU: single runs in this process, as before. Groups were measured at
  0.55-0.93x the speed of single runs there (docs/runner.md, "Seed-parallel training"): one
  run already keeps a core busy, and vmapped convolutions are slower on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..runner.plan import can_run
from ..runner.spec import ConfigError, RunSpec

#: Members of a group with ``parallel_seeds=auto`` on CUDA: a pair's ten replicate seeds.
AUTO_MEMBERS = 10
#: Why ``auto`` trains single runs on the CPU (measured; docs/runner.md).
CPU_REASON = "auto: CPU, where groups measured 0.55-0.93x the speed of single runs"


def cuda_available() -> bool:
    """Whether this machine can run on CUDA (a function, so that tests can pretend)."""
    return torch.cuda.is_available()


@dataclass(frozen=True)
class Batching:
    """The batching in effect: group size and launcher, each with why (for the plan)."""

    members: int = 1
    members_why: str = "parallel_seeds=1"
    launcher: str = "basic"
    launcher_why: str = "launcher=basic"
    jobs: str = ""  # launcher=packed: runs at once per device, as text

    def line(self) -> str:
        if self.members > 1:
            runs = (f"groups of up to {self.members} members ({self.members_why}: a search "
                    "round's step sizes and a pair's replicates train together)")  # fmt: skip
        else:
            runs = f"single runs ({self.members_why})"
        where = f"launcher {self.launcher} ({self.launcher_why})"
        if self.jobs:
            where += f", jobs_per_device {self.jobs}"
        return f"Batching: {runs}; {where}."


def on_cuda(devices: Sequence[str]) -> bool | None:
    """Whether runs on ``devices`` use CUDA; None when that is not known here (``auto`` on
    another machine is decided there)."""
    if any(str(d).startswith("cuda") for d in devices):
        return True
    if any(str(d) == "auto" for d in devices):
        return cuda_available()
    return False


def members_of(setting, devices: Sequence[str], remote: bool = False) -> tuple[int, str]:
    """``parallel_seeds`` (``auto`` or an integer >= 1) as a group size and its reason."""
    if setting == "auto":
        if remote and not any(str(d).startswith("cuda") for d in devices):
            return 1, ("auto: the cluster nodes' device is not known here; set device=cuda "
                       f"or parallel_seeds={AUTO_MEMBERS} for GPU nodes")  # fmt: skip
        if on_cuda(devices):
            return AUTO_MEMBERS, "auto: CUDA"
        return 1, CPU_REASON
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(
            f"parallel_seeds={setting} must be an integer >= 1 or auto; e.g. parallel_seeds=auto "
            f"(groups of {AUTO_MEMBERS} on CUDA, single runs on a CPU)"
        )
    return setting, f"parallel_seeds={setting}"


def launcher_of(setting: str, devices: Sequence[str]) -> tuple[str, str]:
    """``launcher=auto``: packed on CUDA (several groups on the device at once, worker
    processes kept for the whole reproduction), basic (this process) on the CPU."""
    if setting != "auto":
        return setting, f"launcher={setting}"
    if on_cuda(devices):
        return "packed", "auto: CUDA"
    return "basic", "auto: CPU"


def jobs_text(jobs: int | Mapping[str, int], problems: Sequence[str]) -> str:
    """``jobs_per_device`` for the plan, per problem of the reproduction (as given: the
    launcher checks the values)."""
    if isinstance(jobs, Mapping):
        return ", ".join(f"{p} {jobs.get(p, 1)}" for p in problems)
    return str(jobs)


def group_key(spec: RunSpec) -> str:
    """Everything but the seed and the step size: runs with the same key may train as one
    group (stricter than ``session.check_group``, which compares identities: the members
    also share their device, results root, logger and the other settings of a session)."""
    return json.dumps(spec.derive(seed=0, lr=1.0).to_dict(), sort_keys=True)


def by_key(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """The runs that can train as one group (the same ``group_key``), in first-seen order."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(group_key(spec), []).append(spec)
    return list(groups.values())


def tasks(specs: Sequence[RunSpec], members: int) -> list[tuple[list[RunSpec], int]]:
    """Units of work, in the batch's order: ``(runs, k)``, a group of up to ``members`` runs
    (k = members) where the problem and method allow it, else one run (k = 1)."""
    out = []
    for group in by_key(specs):
        k = members
        if k > 1 and len(group) > 1 and can_run(group[0], k):
            out += [(group[i : i + k], k) for i in range(0, len(group), k)]
        else:
            out += [([spec], 1) for spec in group]
    return out
