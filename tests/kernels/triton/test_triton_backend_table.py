"""The Triton backend table names only ops of the op table and launchers that exist."""

import importlib

from nimbus.compiler.ops import OP_TABLE
from nimbus.kernels.triton import KERNEL_MODULES, op_kernels, ops_without_kernel


def test_every_claimed_op_is_in_the_op_table_and_its_launcher_exists():
    for op, launcher in op_kernels().items():
        assert op in OP_TABLE, f"the Triton table claims unknown op '{op}'"
        module, function = launcher.split(".")
        assert module in KERNEL_MODULES
        assert callable(getattr(importlib.import_module(f"nimbus.kernels.triton.{module}"), function))


def test_every_kernel_module_offers_a_benchmark_hook():
    for module in KERNEL_MODULES:
        assert callable(importlib.import_module(f"nimbus.kernels.triton.{module}").benchmark_cases)


def test_pre_flight_names_the_ops_without_a_kernel():
    assert ops_without_kernel(["qlinear", "relu", "max_pool2d", "matmul", "relu"]) == [
        "matmul", "max_pool2d"]
