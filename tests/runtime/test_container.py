"""The serving images' contract, checked without Docker.

The Dockerfiles are read for what the platforms need (a build stage apart from a slim final
stage, a non-root user, port 8080, a standard-library HEALTHCHECK, an exec-form ENTRYPOINT). Then
what the CPU image installs (the wheel with the `serve` extra) goes into a fresh virtual
environment, and the server is started there exactly as the image's ENTRYPOINT starts it under
SageMaker (`docker run IMAGE serve`, SAGEMAKER_BIND_TO_PORT, the model folder in SM_MODEL_DIR):
it answers /ping and /invocations, passes the image's HEALTHCHECK command, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from models.cases import converted
from nimbus.runtime.server.entrypoint import server_args
from nimbus.runtime.server.main import KSERVE_MODEL_DIR, SAGEMAKER_MODEL_DIR, default_model_location
from test_server import free_port, wait_until_serving

import nimbus

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": REPO_ROOT / "docker" / "cpu.Dockerfile",
               "gpu": REPO_ROOT / "docker" / "gpu.Dockerfile"}
SERVE_REQUIREMENTS = ("numpy", "starlette", "uvicorn", "prometheus-client")


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    result: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, " ".join(arguments.split())))
    return result


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) instruction's argv; fails on shell form."""
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
    return argv


def final(dockerfile: Path) -> dict[str, list[str]]:
    """The final stage: {INSTRUCTION: [arguments of each occurrence]}."""
    found: dict[str, list[str]] = {}
    for instruction, arguments in stages(dockerfile)[-1]:
        found.setdefault(instruction, []).append(arguments)
    return found


def healthcheck_argv(dockerfile: Path) -> list[str]:
    (healthcheck,) = final(dockerfile)["HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert "--timeout=" in options and "--start-period=" in options, healthcheck
    return exec_form(command)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_contract(kind):
    dockerfile = DOCKERFILES[kind]
    build, *_, serve = stages(dockerfile)
    assert len(stages(dockerfile)) >= 2 and build[0][1].endswith(" AS build"), "not multi-stage"
    assert any(i == "RUN" and "pip wheel" in a for i, a in build), "no wheel is built"
    image = final(dockerfile)
    users = image.get("USER", [])
    assert users and users[-1] not in ("root", "0"), f"the final stage runs as {users or 'root'}"
    assert image["EXPOSE"] == ["8080"]
    (entrypoint,) = image["ENTRYPOINT"]
    assert exec_form(entrypoint) == ["python", "-m", "nimbus.runtime.server.entrypoint"]
    assert exec_form(image["CMD"][-1]) == []  # `docker run IMAGE` and `docker run IMAGE serve` alike
    probe = healthcheck_argv(dockerfile)
    assert probe[:2] == ["python", "-c"] and "urllib.request" in probe[2] and "/ping" in probe[2]
    installs = " ".join(a for i, a in serve if i == "RUN")
    assert "apt-get" not in installs, "the final stage installs system packages (a compiler?)"
    if kind == "cpu":
        assert image["FROM"][0].startswith("python:") and image["FROM"][0].endswith("-slim")
        assert "[serve]" in installs and "torch" not in installs


def test_entrypoint_arguments(tmp_path):
    all_interfaces = ["--host", "0.0.0.0"]
    assert server_args(["serve"]) == all_interfaces
    assert server_args(["--max-batch-size", "8"]) == ["--max-batch-size", "8", *all_interfaces]
    assert server_args(["serve", "m.nimbus", "--host", "::"]) == ["m.nimbus", "--host", "::"]
    assert server_args(["--host=::1"]) == ["--host=::1"]


def test_default_model_location_follows_the_platform(tmp_path):
    default = KSERVE_MODEL_DIR if KSERVE_MODEL_DIR.is_dir() else SAGEMAKER_MODEL_DIR
    assert default_model_location({}) == default
    assert default_model_location({"SM_MODEL_DIR": "/models"}) == "/models"
    assert default_model_location({"AZUREML_MODEL_DIR": "/azure"}) == "/azure"
    assert default_model_location({"NIMBUS_MODEL_DIR": "/n", "SM_MODEL_DIR": "/models"}) == "/n"
    assert default_model_location({"AIP_STORAGE_URI": "gs://b/m", "SM_MODEL_DIR": "/x"}) == "gs://b/m/"


@pytest.fixture(scope="module")
def serve_python(wheel, fresh_python, tmp_path_factory) -> Path:
    """What the CPU image installs: the wheel with the `serve` extra, at this checkout's versions."""
    from importlib.metadata import version

    pins = tmp_path_factory.mktemp("pins") / "constraints.txt"
    pins.write_text("".join(f"{name}=={version(name)}\n" for name in SERVE_REQUIREMENTS))
    return fresh_python("serve", "-c", str(pins), f"{wheel}[serve]")


@pytest.mark.slow
def test_cpu_image_serves_sagemaker_from_its_entrypoint(serve_python, checked_run, tmp_path):
    # -I: the checkout and PYTHON* variables stay off sys.path; only the venv counts.
    checked_run([str(serve_python), "-I", "-c",
                 "import importlib.util as u; assert u.find_spec('torch') is None, 'torch'"], tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _, graph = converted("lenet")
    session = nimbus.load(nimbus.compile(graph).save(model_dir / "lenet.nimbus"))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)

    image = final(DOCKERFILES["cpu"])
    entrypoint = exec_form(image["ENTRYPOINT"][0])
    port = free_port()
    # The container's environment: no PYTHONPATH or virtualenv variables of this test process.
    env = {"PATH": f"{serve_python.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(model_dir)}
    command = [str(serve_python), *entrypoint[1:], "serve"]  # as `docker run IMAGE serve`
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{base}/ping", log_path, timeout_s=60)
        response = httpx.post(f"{base}/invocations", json={"instances": x.tolist()}, timeout=30)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.array(response.json()["predictions"], np.float32),
                                   session.run({"x": x})["output"], rtol=1e-5, atol=1e-6)
        probe = healthcheck_argv(DOCKERFILES["cpu"])
        healthcheck = [str(serve_python), *probe[1:]]
        checked_run(healthcheck, tmp_path, env)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
        failed = subprocess.run(healthcheck, cwd=tmp_path, env=env, capture_output=True,
                                check=False)
        assert failed.returncode != 0, "the HEALTHCHECK passes with the server gone"
        assert "contract: sagemaker" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_gpu_image_serves_on_the_gpu_by_default(monkeypatch):
    final_stage = stages(DOCKERFILES["gpu"])[-1]
    assert ("ENV", "NIMBUS_TARGET=cuda") in final_stage
    from nimbus.runtime.server import main as server_main

    seen = {}
    monkeypatch.setenv("NIMBUS_TARGET", "cuda")
    monkeypatch.setattr(server_main, "serve", lambda paths, **options: seen.update(options))
    server_main.main(["m.nimbus"])
    assert seen["target"] == "cuda"
