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

from ..problems import Problem, load
from ..problems.datasets import synthetic
from .spec import RunSpec


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def synthetic_sources(folder: Path) -> dict:
    """Generated stand-ins for the four data sets (tests and smoke checks only)."""
    text = "".join(
        f"Line {i}: Well, Prince, so Genoa and Lucca are now family estates.\n" for i in range(80)
    )
    return {
        "fmnist_2c2d": synthetic.write_fashion_mnist(folder, n_train=64, n_test=32),
        "cifar10_3c3d": synthetic.write_cifar(folder, "cifar-10", n_train=64, n_test=32),
        "cifar100_wrn404": synthetic.write_cifar(folder, "cifar-100", n_train=16, n_test=8),
        "tolstoi_char_rnn": synthetic.write_text(folder, text),
    }


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
        source = synthetic_sources(Path(folder))[spec.problem]
        yield load(spec.problem, source=source, **{**fields, "data_root": folder, "mirror": folder})
