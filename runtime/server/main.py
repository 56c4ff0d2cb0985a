"""Starting the server: find and load the models, pick the port and contract from the
environment, run uvicorn with a graceful drain on SIGTERM.

Models may be local paths or storage URIs (``s3://``, ``gs://``, ``az://``, pinned ``https://``):
``nimbus.runtime.storage`` fetches and verifies them before anything loads.

Runs from ``nimbus serve`` and, where only the runtime and the ``serve`` extra are installed (a
serving container: no typer), from ``python -m nimbus.runtime.server``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..artifact import ArtifactError
from ..session import Session
from ..storage import fetch
from .app import DEFAULT_MAX_BODY_BYTES, ServerConfig, create_app
from .errors import RequestError
from .repository import Repository

log = logging.getLogger("nimbus.server")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
KSERVE_MODEL_DIR = Path("/mnt/models")
# Folders a container names for its models: nimbus's own, SageMaker's, Azure ML's.
MODEL_DIR_VARIABLES = ("NIMBUS_MODEL_DIR", "SM_MODEL_DIR", "AZUREML_MODEL_DIR")


def detect_platform(environ: Mapping[str, str] = os.environ) -> str:
    if "AIP_HTTP_PORT" in environ or "AIP_PREDICT_ROUTE" in environ:
        return "vertex"
    if "SAGEMAKER_BIND_TO_PORT" in environ or "SM_MODEL_DIR" in environ:
        return "sagemaker"
    if "AZUREML_MODEL_DIR" in environ:
        return "azure"
    return "local"


def default_port(environ: Mapping[str, str] = os.environ) -> int:
    for variable in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT"):
        if environ.get(variable):
            return int(environ[variable])
    return 8080


def default_host(environ: Mapping[str, str] = os.environ) -> str:
    """All interfaces inside a cloud container (the platforms require it), loopback otherwise."""
    return "127.0.0.1" if detect_platform(environ) == "local" else "0.0.0.0"


def as_folder(location: Path | str) -> str:
    """A trailing '/' makes a storage URI a prefix (Vertex AI's AIP_STORAGE_URI names a folder
    without one)."""
    return str(location).rstrip("/") + "/"


def default_model_location(environ: Mapping[str, str] = os.environ) -> str | Path:
    """Where a container's models are when none is named: under Vertex AI's AIP_STORAGE_URI,
    else in the folder of NIMBUS_MODEL_DIR, SM_MODEL_DIR or AZUREML_MODEL_DIR, else KServe's
    /mnt/models when it exists, else SageMaker's /opt/ml/model (`docker run IMAGE serve`)."""
    if environ.get("AIP_STORAGE_URI"):
        return as_folder(environ["AIP_STORAGE_URI"])
    for variable in MODEL_DIR_VARIABLES:
        if environ.get(variable):
            return environ[variable]
    return KSERVE_MODEL_DIR if KSERVE_MODEL_DIR.is_dir() else SAGEMAKER_MODEL_DIR


def model_paths(paths: Sequence[Path | str], environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The artifacts to serve: the given files or URIs (a folder or prefix contributes the
    *.nimbus files directly in it), or when none is given those at default_model_location."""
    if not paths:
        paths = [default_model_location(environ)]
    found: list[Path] = []
    for location in paths:
        path = fetch(location)
        if path.is_dir():
            inside = sorted(path.glob("*.nimbus"))
            if not inside:
                raise ValueError(f"no .nimbus artifact in {location}")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"no such file: {location}")
    return found


def load_models(paths: Sequence[Path | str], name: str | None = None,
                target: str = "cpu") -> dict[str, Session]:
    """{name: Session} on ``target``, named by file stem; ``name`` renames a single model."""
    files = model_paths(paths)
    if name is not None and len(files) != 1:
        raise ValueError(f"--name names one model; {len(files)} are given")
    sessions: dict[str, Session] = {}
    for path in files:
        key = name or path.stem
        if key in sessions:
            raise ValueError(f"two models are named '{key}'")
        try:
            sessions[key] = Session(path, target)
        except ArtifactError as err:
            raise ValueError(f"{path}: {err}") from None
    return sessions


def load_repository(root: Path | str, target: str = "cpu") -> dict[str, dict[str, Session]]:
    """{name: {version: Session}} for every ROOT/name/version/model.nimbus, all verified."""
    repository = Repository(root, target)
    models: dict[str, dict[str, Session]] = {}
    for name in repository.names():
        if not repository.versions(name):
            log.warning("model repository: '%s' has no version folders with %s; skipped",
                        name, "model.nimbus")
            continue
        try:
            models[name] = repository.load_all(name)
        except RequestError as err:
            raise ValueError(f"model repository: {err.message}") from None
    if not models:
        raise ValueError(f"no model in the repository {root} (expected NAME/VERSION/model.nimbus)")
    return models


def per_model(values: Sequence[str], option: str, kind=int) -> tuple[object | None, dict]:
    """``--option 8`` (every model) and ``--option name=8`` (one model), repeatable."""
    default, overrides = None, {}
    for value in values or []:
        key, sep, number = str(value).rpartition("=")
        try:
            parsed = kind(number)
        except ValueError:
            raise ValueError(f"{option}: expected a number or NAME=NUMBER, got {value!r}") from None
        if sep:
            overrides[key] = parsed
        else:
            default = parsed
    return default, overrides


def serve(paths: Sequence[Path | str], *, name: str | None = None, host: str | None = None,
          port: int | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          max_queue: int = 64, workers: int = 2, timeout_s: float = 60.0,
          graceful_timeout_s: float = 20.0, log_level: str = "info",
          max_batch_size: Sequence[str] = (), max_batch_delay_ms: Sequence[str] = (),
          model_repository: Path | str | None = None, management_token: str | None = None,
          api_token: str | None = None, azure_routes: Sequence[str | None] = (None, None, None),
          tls_certfile: str | None = None, tls_keyfile: str | None = None,
          tls_ca_certs: str | None = None, stall_timeout_s: float | None = None,
          target: str = "cpu") -> None:
    """Load the models and serve them until SIGTERM or SIGINT; returns after a graceful drain.

    ``max_batch_size`` / ``max_batch_delay_ms`` are strings ``"8"`` (every model) or
    ``"name=8"`` (one model). ``paths`` and ``model_repository`` may be storage URIs.
    ``tls_ca_certs`` makes the server require client certificates signed by those CAs."""
    import uvicorn

    if (tls_certfile is None) != (tls_keyfile is None):
        raise ValueError("--tls-certfile and --tls-keyfile go together")
    if tls_ca_certs is not None and tls_certfile is None:
        raise ValueError("--tls-ca-certs (client certificates) needs --tls-certfile and --tls-keyfile")
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    models: dict = {}
    if model_repository is not None:
        # A remote repository is fetched whole; management loads read that copy.
        model_repository = fetch(as_folder(model_repository))
        models.update(load_repository(model_repository, target))
    if paths or model_repository is None:
        for key, session in load_models(paths, name, target).items():
            if key in models:
                raise ValueError(f"two models are named '{key}' (an artifact and the repository)")
            models[key] = session
    batch_size, batch_sizes = per_model(max_batch_size, "--max-batch-size", int)
    batch_delay, batch_delays = per_model(max_batch_delay_ms, "--max-batch-delay-ms", float)
    platform = detect_platform()
    config = ServerConfig(max_body_bytes=max_body_bytes, max_queue=max_queue, workers=workers,
                          timeout_s=timeout_s, stall_timeout_s=stall_timeout_s, target=target,
                          vertex_health_route=os.environ.get("AIP_HEALTH_ROUTE"),
                          vertex_predict_route=os.environ.get("AIP_PREDICT_ROUTE"),
                          azure_liveness_route=azure_routes[0],
                          azure_readiness_route=azure_routes[1],
                          azure_scoring_route=azure_routes[2],
                          max_batch_size=1 if batch_size is None else batch_size,
                          max_batch_delay_ms=2.0 if batch_delay is None else batch_delay,
                          model_batch_size=batch_sizes, model_batch_delay_ms=batch_delays,
                          model_repository=model_repository,
                          management_token=management_token or None,
                          api_token=api_token or None)
    for size in [config.max_batch_size, *batch_sizes.values()]:
        if size < 1:
            raise ValueError("--max-batch-size must be at least 1")
    for delay in [config.max_batch_delay_ms, *batch_delays.values()]:
        if not delay >= 0:
            raise ValueError("--max-batch-delay-ms must not be negative")
    app = create_app(models, config)
    host = host or default_host()
    port = default_port() if port is None else port
    log.info("contract: %s (KServe v2, SageMaker and%s routes mounted) on %s://%s:%d", platform,
             " Vertex AI" if config.vertex_predict_route else " no Vertex AI",
             "https" if tls_certfile else "http", host, port)
    server_state = app.state.server

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            server_state.draining = True  # readiness fails at once; in-flight requests finish
            super().handle_exit(sig, frame)

    try:
        uv_config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="on",
            timeout_graceful_shutdown=graceful_timeout_s, access_log=False,
            ssl_certfile=tls_certfile, ssl_keyfile=tls_keyfile, ssl_ca_certs=tls_ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_ca_certs else ssl.CERT_NONE)
        uv_config.load()  # reads the certificate and key now, so a bad pair is a clear error
    except OSError as err:  # ssl.SSLError included: a missing or mismatched certificate or key
        raise ValueError(f"cannot load the TLS certificate and key: {err}") from None
    # uvicorn re-raises a captured SIGTERM once it has shut down; with this handler in place that
    # re-raise is a no-op, so a drained server exits with status 0, as platforms expect.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _Server(uv_config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nimbus.runtime.server",
                                     description="Serve .nimbus artifacts over HTTP.")
    parser.add_argument("models", nargs="*",
                        help="artifacts, folders or storage URIs (s3://, gs://, az://, "
                             "https://...#sha256=HEX); default: AIP_STORAGE_URI, "
                             "NIMBUS_MODEL_DIR, SM_MODEL_DIR, AZUREML_MODEL_DIR, /mnt/models "
                             "or /opt/ml/model")
    parser.add_argument("--name", help="serve a single model under this name")
    parser.add_argument("--host", help="default 0.0.0.0 in a cloud container, else 127.0.0.1")
    parser.add_argument("--port", type=int, help="default AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT or 8080")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--target", choices=("cpu", "cuda"),
                        default=os.environ.get("NIMBUS_TARGET", "cpu"),
                        help="run the models on the CPU or, with the cuda extra, on the GPU "
                             "(default NIMBUS_TARGET, else cpu)")
    parser.add_argument("--stall-timeout", type=float, default=None,
                        help="a run longer than this makes its model not ready "
                             "(default: twice --timeout)")
    parser.add_argument("--graceful-timeout", type=float, default=20.0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--max-batch-size", action="append", default=[],
                        help="rows per batched run: N for every model or NAME=N (default 1: off)")
    parser.add_argument("--max-batch-delay-ms", action="append", default=[],
                        help="longest wait for a batch to fill: MS or NAME=MS (default 2)")
    parser.add_argument("--model-repository",
                        help="serve ROOT/name/version/model.nimbus (a folder or storage URI)")
    parser.add_argument("--management-token", default=os.environ.get("NIMBUS_MANAGEMENT_TOKEN"),
                        help="turn the management API on, behind this bearer token "
                             "(default NIMBUS_MANAGEMENT_TOKEN; unset: off)")
    parser.add_argument("--api-token", default=os.environ.get("NIMBUS_API_TOKEN"),
                        help="bearer token required on inference and model metadata "
                             "(default NIMBUS_API_TOKEN; unset: none)")
    parser.add_argument("--azure-liveness-route", help="Azure ML deployment's liveness route")
    parser.add_argument("--azure-readiness-route", help="Azure ML deployment's readiness route")
    parser.add_argument("--azure-scoring-route", help="Azure ML deployment's scoring route")
    parser.add_argument("--tls-certfile", help="serve https with this certificate (PEM)")
    parser.add_argument("--tls-keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca-certs", help="require client certificates signed by these CAs")
    args = parser.parse_args(argv)
    try:
        serve(args.models, name=args.name, host=args.host, port=args.port,
              max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, workers=args.workers,
              timeout_s=args.timeout, graceful_timeout_s=args.graceful_timeout,
              log_level=args.log_level, max_batch_size=args.max_batch_size,
              max_batch_delay_ms=args.max_batch_delay_ms, model_repository=args.model_repository,
              management_token=args.management_token, api_token=args.api_token,
              azure_routes=(args.azure_liveness_route, args.azure_readiness_route,
                            args.azure_scoring_route),
              tls_certfile=args.tls_certfile, tls_keyfile=args.tls_keyfile,
              tls_ca_certs=args.tls_ca_certs, stall_timeout_s=args.stall_timeout,
              target=args.target)
    except (ValueError, ImportError) as err:  # ImportError: --target cuda without torch
        parser.exit(1, f"error: {err}\n")
