"""Fixtures of the slow tests that install the project as a user would: one wheel per test
session, and fresh virtual environments holding it."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Local state that must not leak into the build: environments, build folders, caches.
NOT_SOURCE = (
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
)


def run(command: list, cwd: Path, env=None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {result.returncode}\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


@pytest.fixture(scope="session")
def checked_run() -> Callable[..., str]:
    """run(command, cwd, env=None) -> its stdout; fails the test, showing the output, unless it
    exits 0."""
    return run


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    # A copy of the sources, so this build shares no build folder with the editable install.
    source = tmp_path_factory.mktemp("source") / "nimbus"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    run([*pip_wheel, "--no-build-isolation", "--wheel-dir", str(wheelhouse), str(source)], source)
    (wheel_path,) = wheelhouse.glob("nimbus-*.whl")
    return wheel_path


@pytest.fixture(scope="session")
def fresh_python(tmp_path_factory) -> Callable[..., Path]:
    """fresh_python(name, *pip_arguments) -> the interpreter of a new virtual environment into
    which pip installed exactly those arguments."""

    def make(name: str, *pip_arguments: str) -> Path:
        environment = tmp_path_factory.mktemp(name) / "venv"
        run([sys.executable, "-m", "venv", str(environment)], environment.parent)
        python = environment / "bin" / "python"
        run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *pip_arguments], environment.parent)
        return python

    return make
