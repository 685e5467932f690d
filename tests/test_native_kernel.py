"""The CPU kernel of ``fused=True`` (optim/kernels/moments.c): vectorisation and builds.

The kernel is only as fast as torch's fused Adam where its inner loops are
vectorised. With AVX-512 the compiler can mask its way around a branch in a
loop; with AVX2 (x86-64-v3, what ``-march=native`` gives on many AMD EPYC and
older Intel CPUs) a loop with a branch is not vectorised at all, and the fused
step was up to 7x slower. So every loop marked ``/* hot: ... */`` in the C file
must be reported vectorised by gcc for both x86-64-v3 and x86-64-v4, with the
flags ``_native`` builds with, and the AVX2 build must compute what the default
build computes.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import torch

from dissecting_adam.optim import _engine, _native

KERNEL = Path(str(resources.files("dissecting_adam.optim").joinpath("kernels/moments.c")))
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
REPORT_LINE = re.compile(
    r"^(?P<file>.*?):(?P<line>\d+):\d+: (?P<kind>optimized|missed): (?P<msg>.*)$"
)


def _gcc() -> str | None:
    """$CC (or cc) if it is gcc, else gcc; None if there is no gcc."""
    for cc in (os.environ.get("CC", "cc"), "gcc"):
        path = shutil.which(cc)
        if path is None:
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        if "Free Software Foundation" in out and "clang" not in out.lower():
            return path
    return None


def hot_loops(source: str) -> dict[str, tuple[int, int]]:
    """Name -> (first, last) line (1-based) of each loop marked ``/* hot: name */``.

    The marker is on the line before the ``for``; the loop ends before the next
    ``return;`` (each hot loop is the last statement of its case).
    """
    lines = source.splitlines()
    loops = {}
    for i, line in enumerate(lines):
        mark = re.search(r"/\* hot: (.+?) \*/", line)
        if mark is None:
            continue
        assert lines[i + 1].lstrip().startswith("for ("), f"line {i + 2}: no loop after {line!r}"
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "return;")
        loops[mark.group(1)] = (i + 2, end)
    return loops


def test_hot_loops_are_marked():
    source = KERNEL.read_text()
    loops = hot_loops(source)
    assert len(loops) == 8, loops  # M-SGD and M-SSD with and without m, four with v
    assert source.count('#include "moments.c"') == 3  # float32, float64, bfloat16


@pytest.mark.skipif(not X86_64, reason="the vectorisation check is for x86-64 (AVX2, AVX-512)")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64-v4"])
def test_every_hot_loop_vectorises(march, tmp_path):
    """gcc's vectoriser report: each hot loop vectorised, with 32-byte vectors or wider."""
    cc = _gcc()
    if cc is None:
        pytest.skip("needs gcc (its -fopt-info report); CC is not gcc and there is no gcc")
    report = tmp_path / "vec.txt"
    cmd = [
        cc, *_native._FLAGS, f"-march={march}", "-DDA_USE_MVEC", "-c", str(KERNEL),
        "-o", str(tmp_path / "moments.o"), f"-fopt-info-vec-all={report}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "march" in proc.stderr:
        pytest.skip(f"this gcc does not know -march={march} (gcc >= 11 does)")
    assert proc.returncode == 0, proc.stderr

    source = KERNEL.read_text()
    instances = source.count('#include "moments.c"')
    entries = []
    for line in report.read_text().splitlines():
        m = REPORT_LINE.match(line)
        if m and Path(m["file"]).name == KERNEL.name:
            entries.append((int(m["line"]), m["kind"], m["msg"]))
    problems = []
    for name, (first, last) in hot_loops(source).items():
        widths = [
            int(w.group(1))
            for ln, kind, msg in entries
            if ln == first and (w := re.search(r"loop vectorized using (\d+) byte vectors", msg))
        ]
        missed = [f"line {ln}: {msg}" for ln, kind, msg in entries
                  if kind == "missed" and first <= ln <= last]  # fmt: skip
        # One main loop per dtype with AVX's 32 bytes or more (the rest are epilogues).
        if sum(w >= 32 for w in widths) < instances or missed:
            problems.append(f"{name} (lines {first}-{last}): vectorised {widths}; {missed}")
    assert not problems, f"-march={march}:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- AVX2 build


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return set(next((ln for ln in fh if ln.startswith("flags")), "").split())
    except OSError:
        return set()


def _data(dtype: torch.dtype, n: int, gen: torch.Generator) -> torch.Tensor:
    """Values of magnitude 0 and 1e-30 .. 1e30 (float32's range), both signs."""
    mags = torch.tensor([0.0, 1e-30, 1e-20, 1e-8, 1e-3, 1.0, 3.0, 1e4, 1e15, 1e30])
    x = mags.double()[torch.randint(0, len(mags), (n,), generator=gen)]
    return (x * torch.randn(n, generator=gen, dtype=torch.float64)).to(dtype)


def _run(method: str, dtype: torch.dtype, beta: float, steps: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [_data(dtype, n, gen) for n in (20001, 37)]  # two chunks, vector tails
    m = [torch.zeros_like(p) for p in params] if beta > 0 else None
    v = [torch.zeros_like(p) for p in params] if method in _engine.USES_V else None
    for t in range(steps):
        grads = [_data(dtype, p.numel(), gen) for p in params]
        _engine.update(method, params, grads, m, v, [t, t], lr=0.1, beta=beta, fused=True)
    return params + (m or []) + (v or [])


@pytest.mark.skipif(
    not X86_64 or not {"avx2", "fma", "bmi2"} <= _cpu_flags(), reason="needs an x86-64-v3 CPU"
)
def test_avx2_build_computes_what_the_default_build_does(monkeypatch, tmp_path):
    """The x86-64-v3 kernel (DISSECTING_ADAM_MARCH) against the default (-march=native) one.

    Element-wise IEEE arithmetic without contraction gives the same bits whatever the
    vector width; only erf may differ in the last bit (libmvec's AVX2 and AVX-512 erf).
    """
    monkeypatch.setenv("DISSECTING_ADAM_CACHE", str(tmp_path))
    libs = {}
    for march in (None, "x86-64-v3"):
        if march is None:
            monkeypatch.delenv("DISSECTING_ADAM_MARCH", raising=False)
        else:
            monkeypatch.setenv("DISSECTING_ADAM_MARCH", march)
        monkeypatch.setattr(_native, "_lib", None)
        libs[march] = _native.load()
        info = _native.build_info()
        assert f"march={march or 'native'}" in info, info
    assert "simd=avx2" in _native.build_info()
    assert len(list((tmp_path / "kernels").glob("moments-*.so"))) == 2  # -march is in the key
    for method in _engine.METHODS:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for beta in (0.9, 0.0) if method in ("msgd", "mssd") else (0.9,):
                out = {}
                for march, lib in libs.items():
                    monkeypatch.setattr(_native, "_lib", lib)
                    out[march] = _run(method, dtype, beta)
                for a, b in zip(out[None], out["x86-64-v3"], strict=True):
                    if method == "mssd_erf":
                        torch.testing.assert_close(a, b, equal_nan=True)
                    else:
                        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (
                            method, dtype, beta,
                        )  # fmt: skip
