"""Shared test settings: deterministic, small and on the CPU unless marked ``cuda``."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def once_per_session(tmp_path_factory, name: str, compute):
    """``compute()`` (JSON-ready) once per test session: pytest-xdist's processes share it
    through a file in the session's temporary folder, the first computing it under a lock
    and the others reading it (an expensive module fixture otherwise runs in each)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return compute()
    from filelock import FileLock  # a dependency of torch

    shared = tmp_path_factory.getbasetemp().parent / f"{name}.json"  # this session's
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            return json.loads(shared.read_text())
        out = compute()
        shared.write_text(json.dumps(out))
        return out


def interpreted(tmp_path_factory, name: str, script: str, arg_sets=((),)) -> dict:
    """The JSON that ``script`` prints run under Triton's CPU interpreter (one child python
    per entry of ``arg_sets``, side by side, their dicts merged), once per test session;
    the test is skipped without triton. ``TRITON_INTERPRET=1`` must be set before triton is
    first imported, hence the children."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")

    def compute() -> dict:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        children = [
            subprocess.Popen([sys.executable, script, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for args in arg_sets
        ]  # fmt: skip
        out = {}
        for child in children:
            stdout, stderr = child.communicate(timeout=600)
            assert child.returncode == 0, stderr[-3000:]
            out.update(json.loads(stdout.strip().splitlines()[-1]))
        return out

    return once_per_session(tmp_path_factory, name, compute)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One CPU thread: the runner tests' runs are tiny, and two threads on a shared 2-core
    machine spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def interrupted_at_checkpoint(n: int, error: type[BaseException] = KeyboardInterrupt):
    """Within: the ``n``-th checkpoint a run saves is written, then ``error`` is raised (a
    process stopped right after a checkpoint)."""
    from dissecting_adam.runner import checkpoint

    real, calls = checkpoint.save, []

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(kwargs["step"])
        if len(calls) == n:
            raise error

    checkpoint.save = save_then_stop
    try:
        yield calls
    finally:
        checkpoint.save = real


#: A run of a few steps on generated data, without its step budget (the fault tests' runs).
TINY_RUN = ["profile=smoke", "data.variant=synthetic", "problem.batch_size=8",
            "problem.eval_batch_size=16", "train.progress=off", "train.eval_every=2",
            "train.log_every=1", "train.checkpoint_every=2"]  # fmt: skip


def tiny_spec(root, *overrides):
    """The RunSpec of a ``TINY_RUN`` into ``root`` with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from dissecting_adam.runner.plan import override_value, plan

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    root = f"results_root={override_value(str(root))}"
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return plan(compose("train", overrides=[*TINY_RUN, root, *overrides]))
