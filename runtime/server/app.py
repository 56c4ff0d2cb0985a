"""The ASGI app: every protocol's routes over one set of served models.

``create_app(models, config)`` takes ``{name: Session}`` (insertion order: the first is the
default model for SageMaker and Vertex AI) and returns a Starlette app. Health and metadata
handlers answer on the event loop and never wait behind inference; each inference request is
admitted (or refused, 503) by its model, its body read under the size limit, and all parsing,
running and encoding done on the model's threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..session import Session
from . import kserve, sagemaker, vertex
from .body import read_body
from .errors import RequestError
from .metrics import Metrics
from .models import ServedModel

log = logging.getLogger("nimbus.server")

DEFAULT_MAX_BODY_BYTES = 6 << 20  # SageMaker's real-time payload limit


@dataclass
class ServerConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = 64          # per model: requests queued or running before 503
    workers: int = 2             # per model: threads running it
    timeout_s: float = 60.0      # per request, queue and run together, before 504
    vertex_health_route: str | None = None
    vertex_predict_route: str | None = None
    name: str = "nimbus"
    version: str = "0.1.0"


class Server:
    """What the routes share: models, config, metrics, the draining flag."""

    def __init__(self, sessions: Mapping[str, Session], config: ServerConfig):
        if not sessions:
            raise ValueError("no models to serve")
        self.config = config
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        for name, session in sessions.items():
            model = ServedModel(name, session, workers=config.workers, max_queue=config.max_queue,
                                timeout_s=config.timeout_s, metrics=self.metrics)
            self.metrics.track(model)
            self.models[name] = model
        self.default_model = next(iter(self.models))
        self.draining = False

    @property
    def ready(self) -> bool:
        return not self.draining

    def model(self, name: str, version: str | None = None) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise RequestError(404, f"unknown model '{name[:64]}'")
        if version is not None and version != model.version:
            raise RequestError(404, f"model '{name}' has no version '{version[:32]}' "
                               f"(versions: ['{model.version}'])")
        return model

    async def infer(self, request: Request, name: str, version: str | None,
                    handle: Callable[[ServedModel, bytes], Awaitable[Response]]) -> Response:
        """The shared path of every inference route: find the model, check the size limit,
        read the body, let the protocol handle it, count the outcome."""
        started = time.perf_counter()
        try:
            model = self.model(name, version)
        except RequestError as err:
            self.metrics.unknown_model(err.status)
            raise
        try:
            if self.draining:
                raise RequestError(503, "the server is shutting down", {"Retry-After": "1"})
            body = await read_body(request, self.config.max_body_bytes)
            response = await handle(model, body)
        except RequestError as err:
            self.metrics.answered(model, err.status, time.perf_counter() - started)
            raise
        except Exception:
            self.metrics.answered(model, 500, time.perf_counter() - started)
            raise
        self.metrics.answered(model, response.status_code, time.perf_counter() - started)
        return response

    def close(self) -> None:
        for model in self.models.values():
            model.close()


async def _request_error(request: Request, err: RequestError) -> Response:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


async def _http_error(request: Request, err: HTTPException) -> Response:
    return JSONResponse({"error": err.detail}, status_code=err.status_code, headers=err.headers)


async def _internal_error(request: Request, err: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "internal server error"}, status_code=500)


async def _metrics(request: Request) -> Response:
    metrics = request.app.state.server.metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)


def create_app(models: Mapping[str, Session], config: ServerConfig | None = None) -> Starlette:
    """The app serving ``models`` ({name: Session}) under every contract."""
    config = config or ServerConfig()
    server = Server(models, config)

    @asynccontextmanager
    async def lifespan(app):
        log.info("serving %s", ", ".join(f"{m.name} (v{m.version})" for m in server.models.values()))
        yield
        server.draining = True
        server.close()

    routes = (kserve.routes() + sagemaker.routes()
              + vertex.routes(config.vertex_health_route, config.vertex_predict_route)
              + [Route("/metrics", _metrics, methods=["GET"])])
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        RequestError: _request_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.server = server
    return app
