"""Every Triton kernel of the project through triton's real compiler, for an H200, on the CPU.

The interpreter (test_triton_kernels.py, test_bn_relu.py) runs a kernel's Python on NumPy
arrays: it checks the maths, but it broadcasts where the compiler does not and lowers
nothing. Here each kernel, in the specialisations a run launches, goes through triton's
frontend, its passes, LLVM and ptxas (shipped with triton) for ``GPUTarget("cuda", 90,
32)`` (sm_90: H100/H200) with no GPU, as the runtime would specialise it: pointers 16-byte
aligned, sizes divisible by 16, a stride of 1 a constant. The memory-bound batch norm
kernels must also read x in 16-byte vectors (``ld.global.v4``), in NCHW and NHWC, and the
optimizers' step its tensors when ``_triton._meta`` finds them aligned: memory-bound
kernels are as fast as their loads.
"""

from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
#: A 16-byte load: four 32-bit values or two 64-bit ones.
VECTOR_LOAD = re.compile(r"ld\.global(?:\.\w+)*\.(?:v4\.\w32|v2\.\w64) ")
VECTOR_STORE = re.compile(r"st\.global(?:\.\w+)*\.(?:v4\.\w32|v2\.\w64) ")


def compile_kernel(fn, const: dict, types: dict | None = None):
    """``fn`` compiled for TARGET: constexprs ``const``; other arguments typed by ``types``,
    else ``*fp32`` for a ``*_ptr`` and ``i32``; pointers and integers divisible by 16."""
    types = types or {}
    signature, attrs = {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if name in const:
            signature[name] = "constexpr"
            continue
        kind = types.get(name, "*fp32" if name.endswith("_ptr") else "i32")
        signature[name] = kind
        if kind.startswith("*") or kind == "i32":
            attrs[(i,)] = [["tt.divisibility", 16]]
    try:
        return triton.compile(ASTSource(fn, signature, const, attrs), target=TARGET)
    except FileNotFoundError as err:  # a triton build without its ptxas
        pytest.skip(f"triton cannot compile for CUDA here: {err}")


# --- batch norm + ReLU ----------------------------------------------------------------
LAYOUTS = {"nchw": "sw", "nhwc": "sc"}  # the stride that is 1 in each layout


def _bn_case(kernel: str, layout: str, dtype: str):
    from dissecting_adam.problems.models import _bn_relu_triton as kern

    block_r, block_c = kern.TILES[layout]
    one = LAYOUTS[layout]
    prefixes = {"_stats_kernel": ("s",), "_forward_kernel": ("x", "y"),
                "_backward_sums_kernel": ("x", "g"),
                "_backward_dx_kernel": ("x", "g", "d")}[kernel]  # fmt: skip
    # The unit stride of every tensor argument (x's sw or sc, y's yw or yc, ...).
    const = {"BLOCK_R": block_r, "BLOCK_C": block_c}
    for prefix in prefixes:
        const[one if prefix == "s" else prefix + one[1]] = 1
    data = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}
    types = {name: f"*{dtype}" for name in data}
    return compile_kernel(getattr(kern, kernel), const, types)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    "kernel", ["_stats_kernel", "_forward_kernel", "_backward_sums_kernel", "_backward_dx_kernel"]
)
def test_batch_norm_tile_kernels_compile_with_vector_loads(kernel, layout, dtype):
    compiled = _bn_case(kernel, layout, dtype)
    ptx = compiled.asm["ptx"]
    assert ".target sm_90" in ptx
    assert VECTOR_LOAD.search(ptx), f"{kernel} ({layout}, {dtype}) loads no 16-byte vectors"


@pytest.mark.parametrize("kernel", ["_finish_stats_kernel", "_finish_grad_kernel"])
def test_batch_norm_finishing_kernels_compile(kernel):
    from dissecting_adam.problems.models import _bn_relu_triton as kern

    floats = {"M", "rows", "last", "eps", "momentum", "unbias"}
    block_p, block_c = kern.FINISH
    fn = getattr(kern, kernel)
    compiled = compile_kernel(fn, {"BLOCK_P": block_p, "BLOCK_C": block_c},
                              {name: "fp32" for name in floats})  # fmt: skip
    assert ".target sm_90" in compiled.asm["ptx"]


# --- the optimizers' fused step -------------------------------------------------------
def _moments_case(method: str, dtype: str, coef_table: bool, has_m: bool = True, vec: int = 0):
    import torch

    from dissecting_adam.optim import _triton
    from dissecting_adam.optim._internal import compute_dtype, limits

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[dtype]
    acc = compute_dtype(torch_dtype)
    tiny, sqrt_max = limits(acc)
    const = {"METHOD": _triton._CODES[method], "HAS_M": has_m, "COEF_TABLE": coef_table,
             "P_TY": _triton._TL[torch_dtype], "S_TY": _triton._TL[torch_dtype],
             "ACC": _triton._TL[acc], "TINY": tiny, "SQRT_MAX": sqrt_max,
             "BLOCK": _triton.BLOCK, "CHUNK": _triton.CHUNK,
             "IEEE": acc == torch.float32, "VEC": vec}  # fmt: skip
    table = {torch.float32: "*fp32", torch.float64: "*fp64"}[acc] if coef_table else "*i64"
    types = {"addr_ptr": "*i64", "numel_ptr": "*i64", "chunk_ptr": "*i64", "coef_ptr": table,
             **{name: "fp32" for name in ("lr_eff", "k", "shift", "beta")}}  # fmt: skip
    return compile_kernel(_triton._moments_kernel, const, types)


METHODS = ("msgd", "mssd", "msvag", "svag", "mssd_va", "mssd_erf")


@pytest.mark.parametrize("coef_table", [False, True], ids=["host_scalars", "capturable"])
@pytest.mark.parametrize("method", METHODS)
def test_optimizer_kernel_compiles_for_every_method(method, coef_table):
    """float32 parameters; scalars as arguments, or from the device's table (capturable)."""
    assert ".target sm_90" in _moments_case(method, "fp32", coef_table).asm["ptx"]


@pytest.mark.parametrize("dtype", ["bf16", "fp64"])
def test_optimizer_kernel_compiles_for_16_and_64_bit_parameters(dtype):
    assert ".target sm_90" in _moments_case("msvag", dtype, dtype == "fp64").asm["ptx"]


@pytest.mark.parametrize("dtype, vec", [("fp32", 4), ("bf16", 8), ("fp64", 2)])
def test_optimizer_kernel_reads_16_byte_vectors_when_told_it_may(dtype, vec):
    """Aligned tensors whose sizes are whole vectors (``_triton._meta`` decides): p, g, m~
    and v~ are read and written 16 bytes at a time; otherwise one value at a time."""
    wide = _moments_case("msvag", dtype, False, vec=vec).asm["ptx"]
    narrow = _moments_case("msvag", dtype, False, vec=0).asm["ptx"]
    assert len(VECTOR_LOAD.findall(wide)) >= 4, dtype  # p, g, m~, v~
    assert VECTOR_STORE.search(wide), dtype
    assert not VECTOR_LOAD.search(narrow)


def test_wide_accesses_are_chosen_only_when_every_tensor_allows_them():
    import torch

    from dissecting_adam.optim import _triton

    def vec(shapes, dtype=torch.float32, offset=0):
        p = [torch.zeros(n + offset, dtype=dtype)[offset:] for n in shapes]
        g = [torch.zeros(n, dtype=dtype) for n in shapes]
        m = [torch.zeros(n, dtype=torch.float32) for n in shapes]
        return _triton._meta(p, g, m, [torch.zeros_like(x) for x in m], 128)[2]

    assert vec([64, 8]) == 4 and vec([64, 16], torch.bfloat16) == 8
    assert vec([64, 6]) == 0  # 6 values: not whole vectors
    assert vec([64, 8], offset=1) == 0  # a tensor 4 bytes off 16-byte alignment


def test_optimizer_kernel_without_momentum_compiles():
    """beta = 0: no m~ buffer (HAS_M false)."""
    assert ".target sm_90" in _moments_case("msgd", "fp32", False, has_m=False).asm["ptx"]
