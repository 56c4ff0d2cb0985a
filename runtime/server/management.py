"""The model management API (off unless a management token is configured).

    POST /v2/repository/models/{name}/load      {"version"?: "2"}  load from the repository folder
    POST /v2/repository/models/{name}/unload    {"version"?: "2"}  one version, or all of them
    POST /v2/repository/models/{name}/default   {"version": "1"}   switch the default (rollback);
                                                {"version": "latest"}: follow the highest again
    GET  /v2/repository/index                   what is in the folder and what is loaded

Every request needs ``Authorization: Bearer <token>`` (compared in constant time), else 401.
A load reads and verifies the artifacts (checksums, format version, plan) on a worker thread
before they take traffic; a bad one is refused with 400 naming the problem and whatever was
serving keeps serving. The body names a version only: never a path or URL. Changes run one at a
time; in-flight requests finish on the version they started on.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .body import parse_json, read_body
from .errors import RequestError, bad_request
from .repository import valid_name, valid_version, version_key

MAX_BODY = 4096


async def _version_from_body(request: Request, required: bool, latest: bool = False) -> str | None:
    body = await read_body(request, MAX_BODY)
    if not body.strip():
        payload = {}
    else:
        payload = parse_json(body, "management request")
    if not isinstance(payload, dict):
        raise bad_request("the body must be a JSON object")
    unknown = [str(key)[:32] for key in payload if key != "version"]
    if unknown:
        raise bad_request(f"unknown fields {unknown}: only 'version' may be given (artifacts "
                          "load from the model repository only)")
    version = payload.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if version is None:
        if required:
            raise bad_request("'version' is required")
        return None
    if latest and version == "latest":
        return version
    if not isinstance(version, str) or not valid_version(version):
        raise bad_request("'version' must be a positive integer (as a string)")
    return version


def _server(request: Request):
    server = request.app.state.server
    server.check_management_token(request)
    return server


def _name(request: Request) -> str:
    name = request.path_params["name"]
    if not valid_name(name):
        raise bad_request("invalid model name")
    return name


async def load(request: Request) -> Response:
    server = _server(request)
    name = _name(request)
    version = await _version_from_body(request, required=False)
    if server.repository is None:
        raise RequestError(409, "the server has no model repository (start it with "
                           "--model-repository)")
    async with server.manage_lock:
        # Reading and verifying happen off the event loop: inference goes on meanwhile.
        sessions = await asyncio.to_thread(server.repository.load_all, name,
                                           None if version is None else [version])
        loaded = server.install(name, sessions)
    return JSONResponse({"name": name, "loaded": loaded, "versions": server.versions(name),
                         "default_version": server.families[name].default})


async def unload(request: Request) -> Response:
    server = _server(request)
    name = _name(request)
    version = await _version_from_body(request, required=False)
    async with server.manage_lock:
        unloaded = server.unload(name, version)
    family = server.families.get(name)
    return JSONResponse({"name": name, "unloaded": unloaded,
                         "versions": family.sorted_versions() if family else [],
                         "default_version": family.default if family else None})


async def set_default(request: Request) -> Response:
    server = _server(request)
    name = _name(request)
    version = await _version_from_body(request, required=True, latest=True)
    async with server.manage_lock:
        server.set_default(name, version)
    return JSONResponse({"name": name, "default_version": server.families[name].default,
                         "versions": server.versions(name)})


async def index(request: Request) -> Response:
    server = _server(request)
    entries = {}
    if server.repository is not None:
        names = await asyncio.to_thread(server.repository.names)
        for name in names:
            for version in await asyncio.to_thread(server.repository.versions, name):
                entries[(name, version)] = {"name": name, "version": version, "state": "UNAVAILABLE",
                                            "reason": "not loaded"}
    for name, family in server.families.items():
        for version in family.versions:
            entries[(name, version)] = {"name": name, "version": version, "state": "READY",
                                        "default": version == family.default}
    ordered = sorted(entries.values(), key=lambda e: (e["name"], version_key(e["version"])))
    return JSONResponse(ordered)


def routes() -> list[Route]:
    base = "/v2/repository/models/{name}"
    return [Route(base + "/load", load, methods=["POST"]),
            Route(base + "/unload", unload, methods=["POST"]),
            Route(base + "/default", set_default, methods=["POST"]),
            Route("/v2/repository/index", index, methods=["GET", "POST"])]
