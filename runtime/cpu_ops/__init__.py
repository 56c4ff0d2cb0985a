"""The CPU backend's op table: one numpy kernel per op of the compiler's op table.

``run_op(op, inputs, attrs, types)`` runs one op of an execution plan; ``KERNELS`` maps op names
to kernels (``kernel(op)`` registers one) and ``TensorInfo`` is what a plan records about a
value. Integer ops run on the native extension where it applies and match the op table's
references bit for bit; float ops match them within 1e-5 relative error. Family modules mirror
``nimbus.compiler.ops``, and the pure-numpy arithmetic that both need (requantization,
quantize/dequantize, convolution windows, pooling, normalization, attention, shape ops) is
defined here once: the compiler's op table imports it. Only numpy and the native extension are
imported.
"""

from . import elementwise, fused, nn, quant, reduce, shape  # noqa: F401  (each registers kernels)
from .info import TensorInfo, TensorInfoError
from .registry import KERNELS, NATIVE_THREADS, UnknownOpError, kernel, run_op

__all__ = ["KERNELS", "NATIVE_THREADS", "TensorInfo", "TensorInfoError", "UnknownOpError", "kernel", "run_op"]
