"""Build a run's problem from its RunSpec: the real data set, or generated stand-ins.

``data_variant="synthetic"`` writes small files in the real on-disk formats to a temp
folder and runs them through the real loading code (tests and smoke checks: no download,
no real data). Results of such runs are labelled as such wherever they are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..problems import PROBLEMS, Problem, load
from .spec import RunSpec


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def synthetic_sources(folder: Path, min_train: int = 1) -> dict:
    """Generated stand-ins for the registered data sets (tests and smoke checks only): each
    problem writes its own (``Problem.standin``), with at least ``min_train`` training
    examples."""
    return {name: cls.standin(folder, min_train) for name, cls in PROBLEMS.items()}


@contextlib.contextmanager
def problem_for(spec: RunSpec, device: str | None = None) -> Iterator[Problem]:
    """The run's problem on ``device`` (default: the spec's, resolved); data not loaded yet.

    For ``data_variant="synthetic"`` the generated files live as long as the context.
    """
    config = dataclasses.replace(spec.problem_config, device=device or resolve_device(spec.device))
    fields = dataclasses.asdict(config)
    if spec.data_variant != "synthetic":
        yield load(spec.problem, **fields)
        return
    with tempfile.TemporaryDirectory(prefix="synthetic-") as folder:
        # A batch of the run's size fits (P2's paper batch of 128 in gpu-check's packing).
        source = PROBLEMS[spec.problem].standin(Path(folder), config.batch_size)
        yield load(spec.problem, source=source, **{**fields, "data_root": folder, "mirror": folder})
