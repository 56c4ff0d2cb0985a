"""Install nimbus's build requirements into the running environment.

Used by scripts/test.sh before an editable install without build isolation: a persistent build
folder then keeps pointing at the same pybind11 from run to run, and the wheel test can build
without isolation. The versions are read from pyproject.toml, so they live in one place; cmake
and ninja come from PyPI only where the machine lacks usable ones, as scikit-build-core decides.
Run from the repository root.
"""

import importlib
import subprocess
import sys
import tomllib


def pip_install(requirements: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--constraint", "constraints.txt"]
    subprocess.run([*command, *requirements], check=True)


def main() -> None:
    with open("pyproject.toml", "rb") as pyproject:
        pip_install(tomllib.load(pyproject)["build-system"]["requires"])
    # scikit-build-core may have been installed just now, after the import system scanned.
    importlib.invalidate_caches()
    from scikit_build_core.build import get_requires_for_build_editable

    build_tools = get_requires_for_build_editable()
    if build_tools:
        pip_install(build_tools)


if __name__ == "__main__":
    main()
