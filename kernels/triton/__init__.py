"""nimbus's Triton kernel library: the templates the CUDA backend specializes with data from
the plan (shapes, dtypes, epilogues, tuned configs). Nothing here runs code from an artifact.

Each module reads like a Triton tutorial: kernel, launcher, reference check (in
tests/kernels/triton, against the op table's numpy references) and a benchmark hook
(`benchmark_cases`, run on a GPU by benchmarks/gpu_check.py). Without a GPU the kernels run on
the CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

# The kernel modules, each with its launchers and `benchmark_cases()`.
KERNEL_MODULES = ("gemm", "conv", "elementwise", "softmax", "layernorm", "attention", "quantize")

# The backend table: op (nimbus.compiler.ops) -> "module.launcher" that runs it. Elementwise ops
# run as one-op regions of the fused elementwise template (`op_kernels` adds them).
OP_KERNELS = {
    "linear": "gemm.gemm",
    "fused_linear": "gemm.gemm",
    "qlinear": "gemm.qgemm",
    "conv2d": "conv.conv2d",
    "fused_conv2d": "conv.conv2d",
    "qconv2d": "conv.qconv2d",
    "fused_elementwise": "elementwise.fused_elementwise",
    "softmax": "softmax.softmax",
    "layer_norm": "layernorm.layer_norm",
    "attention": "attention.attention",
    "quantize": "quantize.quantize",
    "dequantize": "quantize.dequantize",
}


def op_kernels() -> dict[str, str]:
    """Every op with a Triton kernel -> its launcher."""
    from .elementwise import SUPPORTED_OPS

    return {**dict.fromkeys(SUPPORTED_OPS, "elementwise.fused_elementwise"), **OP_KERNELS}


def ops_without_kernel(ops) -> list[str]:
    """The ops among `ops` that no Triton kernel runs yet (what a CUDA pre-flight reports)."""
    known = op_kernels()
    return sorted({op for op in ops if op not in known})
