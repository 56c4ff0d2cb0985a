"""The SageMaker inference container contract.

    GET  /ping          200 once the models are loaded (503 while draining)
    POST /invocations   the server's default model (the first one given), or the model named by
                        the header X-Amzn-SageMaker-Target-Model (its file name or stem)

Bodies: ``application/json`` with ``{"inputs": [v2 tensors]}`` (answered in the v2 response form)
or ``{"instances": [...]}`` (answered ``{"predictions": [...]}``); or ``application/x-npy``, one
array for a single-input model, read with ``allow_pickle=False``. The response takes the type
the Accept header asks for (``application/json`` or ``application/x-npy``), else the request's.
"""

from __future__ import annotations

import io
import json

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .body import parse_json
from .errors import RequestError, bad_request
from .instances import feeds_from_instances, predictions
from .kserve import encode_response, parse_inputs, parse_outputs
from .models import ServedModel
from .tensors import check_shape, wire_dtype

JSON = "application/json"
NPY = "application/x-npy"
TARGET_MODEL = "x-amzn-sagemaker-target-model"


def media_type(header: str | None) -> str | None:
    return header.split(";")[0].strip().lower() if header else None


def response_type(accept: str | None, request_type: str) -> str:
    """The first type in Accept that we can produce; the request's type for */* or no Accept."""
    if not accept:
        return request_type
    for item in accept.split(","):
        kind = media_type(item)
        if kind in (JSON, NPY):
            return kind
        if kind in ("*/*", "application/*"):
            return request_type
    raise RequestError(406, f"cannot answer in {accept[:80]!r}; use {JSON} or {NPY}")


def read_npy(model: ServedModel, body: bytes) -> dict[str, np.ndarray]:
    if len(model.inputs) != 1:
        raise bad_request(f"an {NPY} body carries one array; model '{model.name}' takes "
                          f"{list(model.inputs)}: send JSON")
    (name, spec), = model.inputs.items()
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise bad_request(f"the body is not a readable .npy array: {str(err)[:120]}") from None
    if not isinstance(array, np.ndarray):
        raise bad_request("the body must be a single .npy array, not an archive")
    target = wire_dtype(spec.dtype).newbyteorder("=")
    if array.dtype.kind not in "biuf" or not np.can_cast(array.dtype, target, "same_kind"):
        raise bad_request(f"input '{name}' takes {target}; the array is {array.dtype}")
    if array.dtype != target:
        array = array.astype(target)
    check_shape(name, list(array.shape), spec, {})
    return {name: array}


def invocation_work(model: ServedModel, body: bytes, content_type: str | None, accept: str | None,
                    *, queued: float, deadline: float | None = None):
    kind = media_type(content_type) or JSON
    if kind == NPY:
        feeds, outputs, request_id, form = read_npy(model, body), None, None, "predictions"
    elif kind == JSON:
        request = parse_json(body)
        if not isinstance(request, dict) or ("inputs" in request) == ("instances" in request):
            raise bad_request('the body must be a JSON object with either "inputs" (v2 tensors) or '
                              '"instances"')
        if "instances" in request:
            feeds, outputs, request_id, form = (feeds_from_instances(model, request["instances"]),
                                                None, None, "predictions")
        else:
            feeds = parse_inputs(model, request["inputs"])
            outputs, request_id, form = parse_outputs(model, request), request.get("id"), "v2"
            if request_id is not None and not isinstance(request_id, str):
                raise bad_request("'id' must be a string")
    else:
        raise RequestError(415, f"unsupported Content-Type {content_type[:80]!r}; use {JSON} or {NPY}")
    answer = response_type(accept, kind)
    if answer == NPY and len(outputs or model.outputs) != 1:
        raise RequestError(406, f"model '{model.name}' has several outputs: ask for {JSON}")
    results = model.run(feeds, queued, deadline)
    if outputs is not None:
        results = {name: results[name] for name in outputs}
    if answer == NPY:
        buffer = io.BytesIO()
        np.save(buffer, next(iter(results.values())), allow_pickle=False)
        return buffer.getvalue(), NPY
    if form == "v2":
        content, _ = encode_response(model, results, {n: False for n in results}, request_id)
        return content, JSON
    count = next(iter(feeds.values())).shape[0] if next(iter(feeds.values())).ndim else 1
    return json.dumps({"predictions": predictions(results, count)}).encode(), JSON


async def ping(request: Request) -> Response:
    ready = request.app.state.server.ready
    return Response(b"", status_code=200 if ready else 503)


async def invocations(request: Request) -> Response:
    server = request.app.state.server
    target = request.headers.get(TARGET_MODEL)
    name = server.default_model if not target else target.removesuffix(".tar.gz").removesuffix(".nimbus")

    async def handle(model: ServedModel, body: bytes):
        content, kind = await model.call(invocation_work, model, body,
                                         request.headers.get("content-type"),
                                         request.headers.get("accept"))
        return Response(content, media_type=kind)

    return await server.infer(request, name, None, handle)


def routes() -> list[Route]:
    return [Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"])]
