"""The runtime installs and runs with numpy alone, as in a serving container.

A wheel of the project goes into a fresh virtual environment next to numpy and nothing else;
a child interpreter there imports nimbus and runs a kernel, and none of the compiler's heavy
dependencies may have been imported on the way.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPILER_ONLY_MODULES = {"torch", "onnx", "onnxruntime", "lark", "sympy", "triton"}

CHILD_SCRIPT = """
import json
import sys

import numpy as np

import nimbus
import nimbus.runtime

a = np.array([[1, 2, 255]], dtype=np.uint8)
b = np.array([[1, -1], [2, 0], [-128, 127]], dtype=np.int8)
print(json.dumps({
    "runtime_file": nimbus.runtime.__file__,
    "product": nimbus.runtime.gemm_u8s8s32(a, b).tolist(),
    "loaded_modules": sorted(name.partition(".")[0] for name in sys.modules),
}))
"""


def test_wheel_holds_the_nimbus_package_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    grammars = {
        f"nimbus/compiler/{path.relative_to(REPO_ROOT / 'compiler').as_posix()}"
        for path in (REPO_ROOT / "compiler").rglob("*.lark")
    }
    assert grammars <= names, f"grammar files missing from the wheel: {sorted(grammars - names)}"
    assert {"nimbus/runtime/__init__.py", "nimbus/runtime/_kernels.pyi"} <= names
    extension = [name for name in names if name.startswith("nimbus/runtime/_kernels.cpython")]
    assert extension, "the native extension nimbus/runtime/_kernels is missing from the wheel"
    stray = sorted(name for name in names if not name.startswith(("nimbus/", "nimbus-0.1.0.dist")))
    assert not stray, f"files outside the nimbus package: {stray}"


@pytest.fixture(scope="module")
def slim_python(wheel, fresh_python) -> Path:
    """The interpreter of a fresh virtual environment holding numpy and the wheel, nothing else."""
    return fresh_python("slim", "--no-deps", f"numpy=={np.__version__}", str(wheel))


def test_runtime_runs_with_numpy_alone(slim_python, checked_run, tmp_path):
    # -I keeps the checkout and PYTHON* variables off sys.path: only the installed wheel counts.
    report = json.loads(checked_run([str(slim_python), "-I", "-c", CHILD_SCRIPT], tmp_path))

    assert Path(report["runtime_file"]).is_relative_to(slim_python.parents[1])
    assert report["product"] == [[1 + 4 - 32640, -1 + 0 + 32385]]
    heavy = COMPILER_ONLY_MODULES & set(report["loaded_modules"])
    assert not heavy, f"importing nimbus.runtime loaded {sorted(heavy)}"


SESSION_SCRIPT = """
import json
import sys

import numpy as np

import nimbus

x = np.load("x.npy")
report = {}
for name in ("float", "int8"):
    session = nimbus.load(f"{name}.nimbus")
    report[name] = session.run({"x": x})["output"].tolist()
report["loaded_modules"] = sorted(name.partition(".")[0] for name in sys.modules)
print(json.dumps(report))
"""


def test_an_artifact_compiled_elsewhere_runs_with_numpy_alone(slim_python, checked_run, tmp_path):
    """The serving container's job: load artifacts compiled by the full install and run them."""
    import nimbus
    from models.cases import converted
    from nimbus.compiler.interpreter import interpret

    _, graph = converted("lenet")
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for name, data in (("float", None), ("int8", calibration)):
        compiled = nimbus.compile(graph, calibration=data)
        compiled.save(tmp_path / f"{name}.nimbus")
        expected[name] = interpret(compiled.graph, {"x": x})["output"]

    report = json.loads(checked_run([str(slim_python), "-I", "-c", SESSION_SCRIPT], tmp_path))

    np.testing.assert_array_equal(np.array(report["int8"], np.float32), expected["int8"])
    np.testing.assert_allclose(np.array(report["float"], np.float32), expected["float"],
                               rtol=1e-5, atol=1e-6)
    heavy = COMPILER_ONLY_MODULES & set(report["loaded_modules"])
    assert not heavy, f"running an artifact loaded {sorted(heavy)}"
