"""The ASGI app: every protocol's routes over one set of served models.

``create_app(models, config)`` takes ``{name: Session}`` or ``{name: {version: Session}}``
(insertion order: the first is the default model for SageMaker and Vertex AI) and returns a
Starlette app; a backend other than Session serves too if it has Session's ``inputs``,
``outputs`` and ``run``. Each name has one or more versions; requests without a version go to the
default version (the highest number unless switched). Versions are swapped, switched and
unloaded on the event loop; a request resolves its version once, holds it until answered, and
so finishes on the session it started on whatever happens meanwhile. Health and metadata
handlers answer on the event loop and never wait behind inference; each inference request is
admitted (or refused, 503) by its model, its body read under the size limit, and all parsing,
running and encoding done on the model's threads.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..session import Session
from . import azure, kserve, management, sagemaker, vertex
from .body import read_body
from .errors import RequestError
from .metrics import Metrics
from .models import ServedModel
from .repository import Repository, version_key

log = logging.getLogger("nimbus.server")

DEFAULT_MAX_BODY_BYTES = 6 << 20  # SageMaker's real-time payload limit


@dataclass
class ServerConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = 64          # per model: requests queued or running before 503
    workers: int = 2             # per model: threads running it
    timeout_s: float = 60.0      # per request, queue and run together, before 504
    # A run going on longer than this makes its model not ready (None: twice timeout_s, so that
    # only a run far beyond any request's patience counts as hung).
    stall_timeout_s: float | None = None
    target: str = "cpu"          # where management-loaded sessions run
    vertex_health_route: str | None = None
    vertex_predict_route: str | None = None
    azure_liveness_route: str | None = None
    azure_readiness_route: str | None = None
    azure_scoring_route: str | None = None
    name: str = "nimbus"
    version: str = "0.1.0"
    # Dynamic batching: rows per Session.run (1: off) and how long the oldest request may wait
    # for others; per-model overrides by name.
    max_batch_size: int = 1
    max_batch_delay_ms: float = 2.0
    model_batch_size: dict[str, int] = field(default_factory=dict)
    model_batch_delay_ms: dict[str, float] = field(default_factory=dict)
    model_repository: str | Path | None = None  # ROOT/name/version/model.nimbus
    management_token: str | None = None  # turns the management API on; None: off (404)
    api_token: str | None = None  # bearer token required on inference and model metadata


class Family:
    """The loaded versions of one model name and which one is the default."""

    def __init__(self, name: str):
        self.name = name
        self.versions: dict[str, ServedModel] = {}
        self.pinned: str | None = None  # set by a default switch; else the highest version

    @property
    def default(self) -> str:
        if self.pinned in self.versions:
            return self.pinned
        return max(self.versions, key=version_key)

    def sorted_versions(self) -> list[str]:
        return sorted(self.versions, key=version_key)


def _check_bearer(request: Request, token: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def unauthorized() -> RequestError:
    return RequestError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


class Server:
    """What the routes share: models and their versions, config, metrics, the draining flag."""

    def __init__(self, sessions: Mapping[str, Session | Mapping[str, Session]], config: ServerConfig):
        if not sessions:
            raise ValueError("no models to serve")
        for option in ("management_token", "api_token"):
            if getattr(config, option) is not None and not getattr(config, option).strip():
                raise ValueError(f"{option} must not be empty")
        self.config = config
        self.metrics = Metrics()
        self.repository = (Repository(config.model_repository, config.target)
                           if config.model_repository else None)
        self.families: dict[str, Family] = {}
        self.order: list[str] = []  # names in the order first served: the first is the default
        for name, versions in sessions.items():
            if not isinstance(versions, Mapping):  # a Session, or any object with its interface
                versions = {"1": versions}
            if not versions:
                raise ValueError(f"model '{name}' has no versions")
            self.install(name, dict(versions))
        self.draining = False
        self.manage_lock = asyncio.Lock()  # management changes run one at a time

    # ---- models and versions -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Not draining and no loaded version stalled (a hung run makes the server not ready,
        so that a platform routes around it or replaces it)."""
        return not self.draining and not any(
            model.stalled for family in self.families.values() for model in family.versions.values())

    @property
    def models(self) -> dict[str, ServedModel]:
        """{name: its default version}."""
        return {name: family.versions[family.default] for name, family in self.families.items()}

    @property
    def default_model(self) -> str:
        """SageMaker's and Vertex AI's model: the first one served that is still loaded."""
        for name in self.order:
            if name in self.families:
                return name
        return self.order[0] if self.order else ""

    def _served(self, name: str, version: str, session: Session) -> ServedModel:
        config = self.config
        return ServedModel(name, session, version=version, workers=config.workers,
                           max_queue=config.max_queue, timeout_s=config.timeout_s,
                           stall_timeout_s=config.stall_timeout_s, metrics=self.metrics,
                           max_batch_size=config.model_batch_size.get(name, config.max_batch_size),
                           max_batch_delay_s=config.model_batch_delay_ms.get(
                               name, config.max_batch_delay_ms) / 1000)

    def install(self, name: str, sessions: Mapping[str, Session]) -> list[str]:
        """Serve these versions of ``name`` (already verified Sessions), replacing any loaded
        under the same numbers; the replaced ones finish their requests, then close."""
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(name)
        if name not in self.order:
            self.order.append(name)
        for version, session in sessions.items():
            model = self._served(name, version, session)
            old = family.versions.get(version)
            family.versions[version] = model
            self.metrics.track(model)
            if old is not None:
                old.retire()
            log.info("model '%s' version %s loaded", name, version)
        return sorted(sessions, key=version_key)

    def unload(self, name: str, version: str | None = None) -> list[str]:
        family = self.families.get(name)
        if family is None:
            raise RequestError(404, f"unknown model '{name[:64]}'")
        if version is not None and version not in family.versions:
            raise RequestError(404, f"model '{name}' has no version '{version[:32]}' "
                               f"(versions: {family.sorted_versions()})")
        versions = [version] if version is not None else family.sorted_versions()
        for v in versions:
            model = family.versions.pop(v)
            self.metrics.untrack(model)
            model.retire()
            log.info("model '%s' version %s unloaded", name, v)
        if not family.versions:
            del self.families[name]
        return versions

    def set_default(self, name: str, version: str) -> None:
        """Pin the default to a loaded version, or with "latest" follow the highest again."""
        if version == "latest":
            self.model(name)  # 404 unless loaded
            self.families[name].pinned = None
        else:
            self.model(name, version)  # 404 unless loaded
            self.families[name].pinned = version
        log.info("model '%s': default version is now %s", name, version)

    def versions(self, name: str) -> list[str]:
        return self.families[name].sorted_versions()

    def model(self, name: str, version: str | None = None) -> ServedModel:
        family = self.families.get(name)
        if family is None:
            raise RequestError(404, f"unknown model '{name[:64]}'")
        if version is None:
            return family.versions[family.default]
        model = family.versions.get(version)
        if model is None:
            raise RequestError(404, f"model '{name}' has no version '{version[:32]}' "
                               f"(versions: {family.sorted_versions()})")
        return model

    # ---- requests ----------------------------------------------------------------------------
    def check_api_token(self, request: Request) -> None:
        if self.config.api_token is not None and not _check_bearer(request, self.config.api_token):
            self.metrics.unauthorized()
            raise unauthorized()

    def check_management_token(self, request: Request) -> None:
        token = self.config.management_token
        if token is None:  # routes are not mounted then; this is a second lock
            raise RequestError(404, "Not Found")
        if not _check_bearer(request, token):
            raise unauthorized()

    async def infer(self, request: Request, name: str, version: str | None,
                    handle: Callable[[ServedModel, bytes], Awaitable[Response]]) -> Response:
        """The shared path of every inference route: check the token, find the model version
        (held until answered), check the size limit, read the body, let the protocol handle it,
        count the outcome."""
        started = time.perf_counter()
        self.check_api_token(request)
        try:
            model = self.model(name, version)
        except RequestError as err:
            self.metrics.unknown_model(err.status)
            raise
        model.enter()
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
        finally:
            model.exit()
        self.metrics.answered(model, response.status_code, time.perf_counter() - started)
        return response

    def close(self) -> None:
        for family in self.families.values():
            for model in family.versions.values():
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


def create_app(models: Mapping[str, Session | Mapping[str, Session]],
               config: ServerConfig | None = None) -> Starlette:
    """The app serving ``models`` ({name: Session} or {name: {version: Session}}) under every
    contract; the management routes only when ``config.management_token`` is set."""
    config = config or ServerConfig()
    server = Server(models, config)

    @asynccontextmanager
    async def lifespan(app):
        log.info("serving %s", ", ".join(f"{name} (versions {', '.join(server.versions(name))})"
                                         for name in server.families))
        if config.management_token is not None:
            log.info("management API on (bearer token required)")
        yield
        server.draining = True
        server.close()

    routes = (kserve.routes() + sagemaker.routes()
              + vertex.routes(config.vertex_health_route, config.vertex_predict_route)
              + azure.routes(config.azure_liveness_route, config.azure_readiness_route,
                             config.azure_scoring_route)
              + [Route("/metrics", _metrics, methods=["GET"])]
              + (management.routes() if config.management_token is not None else []))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        RequestError: _request_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.server = server
    return app
