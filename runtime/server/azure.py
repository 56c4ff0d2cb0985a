"""The Azure ML online endpoint contract for a custom container: the deployment names the
liveness, readiness and scoring routes (`inference_config`) and the port; the model is mounted
at ``AZUREML_MODEL_DIR``, served when no artifact is given.

    GET  <liveness route>    200 while the process runs
    GET  <readiness route>   200 once the models are loaded (503 while draining)
    POST <scoring route>     {"input_data": [...]} (or {"instances": [...]}) -> {"predictions": [...]}
                             on the server's default model (the first one given)

An ``input_data`` list holds one sample per element, exactly as ``instances`` does.
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
from .vertex import health as readiness

SAMPLE_KEYS = ("input_data", "instances")


def score_work(model: ServedModel, body: bytes, *, queued: float,
               deadline: float | None = None) -> bytes:
    request = parse_json(body)
    key = next((k for k in SAMPLE_KEYS if isinstance(request, dict) and k in request), None)
    if key is None:
        raise bad_request('the body must be a JSON object {"input_data": [...]}')
    samples = request[key]
    results = model.run(feeds_from_instances(model, samples), queued, deadline)
    return json.dumps({"predictions": predictions(results, len(samples))}).encode()


async def liveness(request: Request) -> Response:
    return Response(b"", status_code=200)


async def score(request: Request) -> Response:
    server = request.app.state.server

    async def handle(model: ServedModel, body: bytes):
        content = await model.call(score_work, model, body)
        return Response(content, media_type="application/json")

    return await server.infer(request, server.default_model, None, handle)


def routes(liveness_route: str | None, readiness_route: str | None,
           scoring_route: str | None) -> list[Route]:
    result = []
    if liveness_route:
        result.append(Route(liveness_route, liveness, methods=["GET"]))
    if readiness_route:
        result.append(Route(readiness_route, readiness, methods=["GET"]))
    if scoring_route:
        result.append(Route(scoring_route, score, methods=["POST"]))
    return result
