"""The fused path's C kernel on the CPU, for the optimizer-step benchmark: the CPU's vector
extensions, one kernel build per ``-march`` (timed beside each other), and the one-time
cost of building it from a cold cache."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from ..optim import _native


def cpu_simd() -> str:
    """The vector extensions of this CPU that matter for the kernel (x86: AVX-512F, AVX2)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith(("flags", "Features"))), "").split()
    except OSError:
        flags = []
    have = [f for f in ("avx512f", "avx2", "fma", "sse2", "asimd", "sve") if f in flags]
    return " ".join(have) or "unknown"


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    prev = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if prev is not None:
            os.environ[name] = prev


def load_kernels(builds: list[str | None]) -> dict[str | None, object]:
    """Build (or load from the cache) the C kernel once per -march; None: the default."""
    libs = {}
    for build in builds:
        with _env("DISSECTING_ADAM_MARCH", build or os.environ.get("DISSECTING_ADAM_MARCH")):
            _native._lib = None
            libs[build] = _native.load()
    return libs


def use(lib) -> None:
    """Make ``lib`` (from ``load_kernels``) the kernel the fused path calls."""
    _native._lib = lib


def build_info(lib) -> str:
    use(lib)
    return _native.build_info()


def one_time_seconds() -> dict[str, float]:
    """Seconds to build the kernel from a cold cache, and to load it from a warm one."""
    costs = {}
    old, _native._lib = _native._lib, None
    with tempfile.TemporaryDirectory() as tmp, _env("DISSECTING_ADAM_CACHE", tmp):
        try:
            _native.load()
            costs["C kernel build (cold cache)"] = _native.build_seconds
            _native._lib = None
            _native.load()
            costs["C kernel load (warm cache)"] = _native.build_seconds
        finally:
            _native._lib = old
    return costs
