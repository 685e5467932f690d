"""Build, cache and call the single-pass CPU kernel in ``kernels/moments.c``.

The kernel is plain C (no torch headers), compiled on first use with the
system C compiler and cached on disk, so its one-time cost is about a second
rather than the minute or more that ``torch.compile`` needs for a list of
parameter tensors. ``torch.compile``'s CPU backend needs the same compiler.

Environment:
    CC                      the C compiler (default ``cc``).
    DISSECTING_ADAM_CACHE   cache directory (default ``~/.cache/dissecting_adam``).
    DISSECTING_ADAM_MARCH   the ``-march`` to build for (default ``native``), e.g.
                            ``x86-64-v3`` to time the AVX2 code on an AVX-512 machine
                            (``scripts/bench_optim.py``); it is part of the cache key.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import torch

METHOD_CODES = {"msgd": 0, "mssd": 1, "msvag": 2, "svag": 3, "mssd_va": 4, "mssd_erf": 5}
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
#: Seconds spent building (0.0 when the cached library was loaded) and loading.
build_seconds: float | None = None


class NativeKernelError(RuntimeError):
    """The CPU kernel for ``fused=True`` could not be built or loaded."""


def _source() -> str:
    return resources.files("dissecting_adam.optim").joinpath("kernels/moments.c").read_text()


def _cpu_signature() -> str:
    # -march=native code must not be reused on another CPU model (a cache on a
    # shared file system, a cluster with mixed nodes), so the CPU is in the key.
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    flags += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return platform.machine() + flags


def _cache_dir() -> Path:
    root = os.environ.get("DISSECTING_ADAM_CACHE") or Path.home() / ".cache" / "dissecting_adam"
    return Path(root) / "kernels"


#: -fno-math-errno lets sqrt compile to one (vectorised) instruction; results are unchanged.
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno"]


def march() -> str:
    """The ``-march`` the kernel is built for: ``$DISSECTING_ADAM_MARCH`` or ``native``."""
    return os.environ.get("DISSECTING_ADAM_MARCH") or "native"


def _compile(src: Path, out: Path, cc: str) -> None:
    base = [cc, *_FLAGS]
    arch = [f"-march={march()}", f'-DDA_MARCH="{march()}"']
    # Best first: this CPU's instructions and glibc's vector erf (libmvec), then without
    # libmvec (musl, macOS, old glibc), then portable code.
    attempts = [
        (base + arch + ["-DDA_USE_MVEC"], ["-lmvec", "-lm"]),
        (base + arch, ["-lm"]),
        (base, ["-lm"]),
    ]
    errors = []
    for args, libs in attempts:
        proc = subprocess.run(
            [*args, str(src), "-o", str(out), *libs], capture_output=True, text=True
        )
        if proc.returncode == 0:
            return
        errors.append(f"$ {' '.join(args)} ...\n{proc.stderr.strip()}")
    raise NativeKernelError(
        "could not compile the fused CPU kernel for dissecting_adam.optim:\n"
        + "\n".join(errors)
        + "\nInstall a C compiler with OpenMP (e.g. `apt-get install gcc`), point CC at one, "
        "or use the default multi-tensor path (fused=None)."
    )


def load() -> ctypes.CDLL:
    """Return the kernel library, compiling it into the cache on first use."""
    global _lib, build_seconds
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        start = time.perf_counter()
        cc = os.environ.get("CC", "cc")
        if shutil.which(cc) is None:
            raise NativeKernelError(
                f"fused=True on the CPU compiles a small C kernel, but the compiler {cc!r} was not "
                "found. Install gcc or clang (or set CC), or use fused=None (multi-tensor path)."
            )
        source = _source()
        parts = [source, cc, *_FLAGS, march(), _cpu_signature()]
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        cache = _cache_dir()
        target = cache / f"moments-{key}.so"
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            # Build in a private directory and rename: concurrent processes (a
            # joblib sweep) never load a half-written library.
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "moments.c"
                src.write_text(source)
                out = Path(tmp) / target.name
                _compile(src, out, cc)
                os.replace(out, target)
        lib = ctypes.CDLL(str(target))
        fn = lib.moments_step
        ptr, dbl = ctypes.c_void_p, ctypes.c_double
        # Arrays travel as addresses of array.array buffers (cheaper to fill than ctypes arrays).
        fn.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_int64, ptr, ptr, ptr, ptr, ptr,
            dbl, dbl, dbl, dbl, ctypes.c_int,
        ]  # fmt: skip
        fn.restype = ctypes.c_int
        lib.moments_build_info.argtypes = []
        lib.moments_build_info.restype = ctypes.c_char_p
        build_seconds = time.perf_counter() - start
        _lib = lib
        return lib


def build_info() -> str:
    """What the loaded kernel was compiled for, e.g. ``simd=avx2 erf=libmvec march=native``.

    ``simd`` is the widest x86 vector extension (or ``neon``) the compiler was allowed to
    use; ``erf=scalar`` and a missing ``march`` mean that a fallback build was used.
    """
    return load().moments_build_info().decode()


_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel


def _addresses(tensors: list[torch.Tensor] | None) -> array.array | None:
    return None if tensors is None else array.array("Q", map(_data_ptr, tensors))


def _address(buf: array.array | None) -> int | None:
    return None if buf is None else buf.buffer_info()[0]


def moments_step(
    method: str,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    m: list[torch.Tensor] | None,
    v: list[torch.Tensor] | None,
    lr_eff: float,
    c: float,
    lam: float,
    beta: float,
) -> None:
    """Run the kernel on contiguous CPU tensors of one dtype that share the step t."""
    n = len(params)
    if n == 0:
        return
    dtype = params[0].dtype
    code = DTYPE_CODES.get(dtype)
    if code is None:
        raise TypeError(f"fused=True supports float32, float64 and bfloat16, not {dtype}")
    lib = load()
    # Keep the buffers referenced until the call returns.
    bufs = [_addresses(x) for x in (params, grads, m, v)]
    numel = array.array("q", map(_numel, params))
    rc = lib.moments_step(
        METHOD_CODES[method], code, n, *map(_address, bufs), numel.buffer_info()[0],
        float(lr_eff), float(c), float(lam), float(beta), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise NativeKernelError(f"fused CPU kernel failed with code {rc}")
