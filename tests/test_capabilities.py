"""Capabilities are declared once, on the class, and read through one function; the problem
base class declares only what every problem has (issue: maintainability)."""

from __future__ import annotations

import pytest
import torch

from dissecting_adam import methods, problems
from dissecting_adam.methods import Capabilities, capabilities
from dissecting_adam.optim import MSGD, MSVAGMB
from dissecting_adam.problems.base import Problem
from dissecting_adam.runner.data import synthetic_sources


class _GlobalNorm(torch.optim.SGD):
    seed_parallel = False  # e.g. a step scaled by the norm over all parameters


@pytest.mark.parametrize(
    "cls, expected",
    [
        (MSGD, Capabilities(per_example=False, seed_parallel=True)),
        (torch.optim.Adam, Capabilities(per_example=False, seed_parallel=True)),
        (MSVAGMB, Capabilities(per_example=True, seed_parallel=False)),
        (_GlobalNorm, Capabilities(per_example=False, seed_parallel=False)),
    ],
)
def test_capabilities_come_from_the_class(cls, expected):
    assert capabilities(cls) == expected
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert capabilities(cls(params, lr=0.1)) == expected  # an instance reads the same


def test_the_registry_reads_capabilities_from_the_classes():
    assert {m.name for m in methods.METHODS.values() if m.per_example} == {"msvag_mb", "svag_mb"}
    assert {m.name for m in methods.METHODS.values() if not m.seed_parallel} == {
        "msvag_mb",
        "svag_mb",
    }


def test_the_base_problem_has_no_hooks_of_one_problem():
    assert not hasattr(Problem, "before_batch") and not hasattr(Problem, "evaluation_context")


def test_every_problem_writes_its_own_standin(tmp_path):
    sources = synthetic_sources(tmp_path)
    assert set(sources) == set(problems.PROBLEMS)
    for name, source in sources.items():
        problem = problems.load(name, source=source, data_root=str(tmp_path), mirror=str(tmp_path))
        assert problem.data_fingerprint() == problem._data_fingerprint is not None


def test_a_problem_without_a_standin_says_how_to_add_one(tmp_path):
    class NoStandin(problems.PROBLEMS["fmnist_2c2d"]):
        name = "no_standin"

        @classmethod
        def standin(cls, folder):
            return Problem.standin.__func__(cls, folder)

    with pytest.raises(NotImplementedError, match=r"define NoStandin.standin\(folder\)"):
        NoStandin.standin(tmp_path)
