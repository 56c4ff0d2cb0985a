"""nimbus's Triton kernel library: the templates the CUDA backend specializes with data from
the plan (shapes, dtypes, epilogues, tuned configs). Nothing here runs code from an artifact.

Each module reads like a Triton tutorial: kernel, launcher, reference check (in
tests/kernels/triton, against the op table's numpy references) and a benchmark hook
(`benchmark_cases`, run on a GPU by benchmarks/gpu_check.py). Without a GPU the kernels run on
the CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

# The kernel modules, each with its launchers and `benchmark_cases()`.
KERNEL_MODULES = ("gemm", "conv", "elementwise", "softmax", "layernorm", "attention")
