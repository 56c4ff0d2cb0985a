"""The Vertex AI custom container contract: routes from the environment.

    GET  $AIP_HEALTH_ROUTE    200 once the models are loaded (503 while draining)
    POST $AIP_PREDICT_ROUTE   {"instances": [...], "parameters"?: {...}} -> {"predictions": [...]}
                              on the server's default model (the first one given)

The port is ``AIP_HTTP_PORT`` (see ``main.default_port``).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .body import parse_json
from .errors import bad_request
from .instances import feeds_from_instances, predictions
from .models import ServedModel


def predict_work(model: ServedModel, body: bytes, *, queued: float,
                 deadline: float | None = None) -> bytes:
    request = parse_json(body)
    if not isinstance(request, dict) or "instances" not in request:
        raise bad_request('the body must be a JSON object {"instances": [...]}')
    feeds = feeds_from_instances(model, request["instances"])
    results = model.run(feeds, queued, deadline)
    return json.dumps({"predictions": predictions(results, len(request["instances"]))}).encode()


async def health(request: Request) -> Response:
    ready = request.app.state.server.ready
    return Response(b"", status_code=200 if ready else 503)


async def predict(request: Request) -> Response:
    server = request.app.state.server

    async def handle(model: ServedModel, body: bytes):
        content = await model.call(predict_work, model, body)
        return Response(content, media_type="application/json")

    return await server.infer(request, server.default_model, None, handle)


def routes(health_route: str | None, predict_route: str | None) -> list[Route]:
    result = []
    if health_route:
        result.append(Route(health_route, health, methods=["GET"]))
    if predict_route:
        result.append(Route(predict_route, predict, methods=["POST"]))
    return result
