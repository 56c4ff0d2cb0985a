"""Every pass's FileCheck cases (tests/passes/*.nir): IR in, pipeline, CHECK lines on the IR out,
and the interpreter gives the same outputs before and after on random inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from checks import assert_matches
from filecheck import check_output, load_cases
from nimbus.compiler.dims import evaluate
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.text import parse_ir, print_ir
from nimbus.passes import PassManager

HERE = Path(__file__).parent
CASES = [case for path in sorted(HERE.glob("*.nir")) for case in load_cases(path)]
EXTERNAL = re.compile(r"const @(\S+): (\w+)\[([^\]]*)\] = external")
BATCH = {"N": 3}


def random_array(dtype: DType, shape, rng) -> np.ndarray:
    if dtype.is_float:
        # Positive values keep variances and square roots in the cases well defined.
        return rng.uniform(0.1, 1.0, size=shape).astype(dtype.numpy)
    if dtype == DType.bool:
        return rng.random(shape) > 0.5
    return rng.integers(0, 4, size=shape).astype(dtype.numpy)


def external_constants(source: str, rng) -> dict[str, np.ndarray]:
    constants = {}
    for name, dtype, dims in EXTERNAL.findall(source):
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        constants[name] = random_array(DType.parse(dtype), shape, rng)
    return constants


def test_every_pass_has_filecheck_cases():
    covered = {case.name.split("[")[0].replace("_", "-") for case in CASES}
    assert {"canonicalize", "fold-constants", "fold-batchnorm", "fuse", "eliminate-dead-code",
            "eliminate-common-subexpressions"} <= covered


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pass_case(case):
    rng = np.random.default_rng(0)
    graph = parse_ir(case.source, external_constants(case.source, rng), filename=case.name)
    inputs = {v.name: random_array(v.type.dtype, [evaluate(d, BATCH) for d in v.type.shape], rng)
              for v in graph.inputs}
    expected = interpret(graph, inputs)
    result = PassManager(case.pipeline, verify=True).run(graph.copy())
    check_output(print_ir(result, inline_limit=16), case.checks, case.name)
    actual = interpret(result, inputs)
    for name in graph.output_names:
        assert_matches(actual[name], expected[name], f"{case.name} output {name}", rtol=1e-5)
