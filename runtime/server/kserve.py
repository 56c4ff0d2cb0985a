"""KServe / Open Inference Protocol v2 REST, with the binary tensor data extension.

    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{name}[/versions/{v}], /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The request's JSON part may be followed by raw tensor bytes: the header
``Inference-Header-Content-Length`` gives the JSON part's length and each binary input declares
``parameters.binary_data_size``; the sizes must add up to exactly the bytes that follow. Outputs
asked for with ``parameters.binary_data: true`` (or all outputs, with the request parameter
``binary_data_output: true``) come back the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import bad_request
from .models import ServedModel
from .tensors import (
    array_from_bytes,
    array_from_data,
    check_datatype,
    check_shape,
    datatype_of,
    to_wire_bytes,
)

HEADER_LENGTH = "inference-header-content-length"
# The extensions this server implements, as GET /v2 lists them.
EXTENSIONS = ["binary_tensor_data"]


# ---- request -> feeds ---------------------------------------------------------------------------
def parse_request(model: ServedModel, body: bytes, header_length: str | None):
    """The feeds, the outputs to return (name -> binary?) and the request id of an infer request."""
    from .body import parse_json

    view = memoryview(body)
    if header_length is not None:
        if not header_length.isdigit() or len(header_length) > 20:
            raise bad_request("Inference-Header-Content-Length must be a non-negative integer")
        json_length = int(header_length)
        if json_length > len(body):
            raise bad_request(f"Inference-Header-Content-Length is {json_length}, the body has only "
                              f"{len(body)} bytes")
    else:
        json_length = len(body)
    request = parse_json(view[:json_length], "inference request")
    binary = view[json_length:]
    if not isinstance(request, dict):
        raise bad_request("inference request must be a JSON object")
    feeds = parse_inputs(model, request.get("inputs"), binary)
    outputs = parse_outputs(model, request)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("'id' must be a string")
    return feeds, outputs, request_id


def parse_inputs(model: ServedModel, inputs, binary: memoryview | None = None) -> dict:
    """v2 input tensors (JSON data or binary parts) -> {name: array}, every check applied."""
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("'inputs' must be a non-empty list of tensors")
    binary = memoryview(b"") if binary is None else binary
    feeds: dict[str, np.ndarray] = {}
    bindings: dict[str, int] = {}
    offset = 0
    for number, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise bad_request(f"inputs[{number}] must be an object with a string 'name'")
        name = tensor["name"]
        spec = model.inputs.get(name)
        if spec is None:
            raise bad_request(f"model '{model.name}' has no input '{name[:64]}'; its inputs are "
                              f"{list(model.inputs)}")
        if name in feeds:
            raise bad_request(f"input '{name}' is given twice")
        check_datatype(name, tensor.get("datatype"), spec)
        shape = check_shape(name, tensor.get("shape"), spec, bindings)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise bad_request(f"input '{name}': 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise bad_request(f"input '{name}' has both 'data' and binary_data_size")
            if type(size) is not int or size < 0:
                raise bad_request(f"input '{name}': binary_data_size must be a non-negative integer")
            if size > len(binary) - offset:
                raise bad_request(f"input '{name}': binary_data_size {size} runs past the end of the "
                                  f"body ({len(binary) - offset} binary bytes left)")
            feeds[name] = array_from_bytes(name, binary[offset:offset + size], shape, spec.dtype)
            offset += size
        else:
            if "data" not in tensor:
                raise bad_request(f"input '{name}' has neither 'data' nor binary_data_size")
            feeds[name] = array_from_data(name, tensor["data"], shape, spec.dtype)
    if offset != len(binary):
        raise bad_request(f"the binary inputs declare {offset} bytes, the body carries "
                          f"{len(binary)} after the JSON header")
    missing = [n for n in model.inputs if n not in feeds]
    if missing:
        raise bad_request(f"missing inputs {missing}; model '{model.name}' takes {list(model.inputs)}")
    return feeds


def parse_outputs(model: ServedModel, request: dict) -> dict[str, bool]:
    """Requested outputs in the model's order: name -> sent as binary?"""
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request("'parameters' must be an object")
    all_binary = parameters.get("binary_data_output") is True
    requested = request.get("outputs")
    if requested is None:
        return {name: all_binary for name in model.outputs}
    if not isinstance(requested, list):
        raise bad_request("'outputs' must be a list")
    chosen: dict[str, bool] = {}
    for number, output in enumerate(requested):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise bad_request(f"outputs[{number}] must be an object with a string 'name'")
        name = output["name"]
        if name not in model.outputs:
            raise bad_request(f"model '{model.name}' has no output '{name[:64]}'; its outputs are "
                              f"{list(model.outputs)}")
        options = output.get("parameters") or {}
        if not isinstance(options, dict):
            raise bad_request(f"output '{name}': 'parameters' must be an object")
        chosen[name] = options.get("binary_data", all_binary) is True
    return {name: chosen[name] for name in model.outputs if name in chosen}


# ---- results -> response -------------------------------------------------------------------------
def encode_response(model: ServedModel, results: Mapping[str, np.ndarray], outputs: dict[str, bool],
                    request_id: str | None) -> tuple[bytes, dict[str, str]]:
    tensors = []
    parts = []
    for name, binary in outputs.items():
        array = results[name]
        tensor = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            raw = to_wire_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    response = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not parts:
        return header, {"content-type": "application/json"}
    return header + b"".join(parts), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}


def infer_work(model: ServedModel, body: bytes, header_length: str | None, *, queued: float,
               deadline: float | None = None):
    """Everything CPU-bound about one infer request; runs on the model's thread."""
    feeds, outputs, request_id = parse_request(model, body, header_length)
    results = model.run(feeds, queued, deadline)
    return encode_response(model, results, outputs, request_id)


# ---- routes -------------------------------------------------------------------------------------
async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    server = request.app.state.server
    is_ready = server.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def server_metadata(request: Request) -> Response:
    server = request.app.state.server
    return JSONResponse({"name": server.config.name, "version": server.config.version,
                         "extensions": EXTENSIONS})


async def model_metadata(request: Request) -> Response:
    server = request.app.state.server
    server.check_api_token(request)
    model = server.model(request.path_params["name"], request.path_params.get("version"))
    metadata = model.metadata()
    metadata["versions"] = server.versions(model.name)
    return JSONResponse(metadata)


async def model_ready(request: Request) -> Response:
    server = request.app.state.server
    model = server.model(request.path_params["name"], request.path_params.get("version"))
    is_ready = not server.draining and not model.stalled  # another model's stall is not this one's
    return JSONResponse({"name": request.path_params["name"], "ready": is_ready},
                        status_code=200 if is_ready else 503)


async def infer(request: Request) -> Response:
    server = request.app.state.server
    name, version = request.path_params["name"], request.path_params.get("version")

    async def handle(model: ServedModel, body: bytes):
        content, headers = await model.call(infer_work, model, body,
                                            request.headers.get(HEADER_LENGTH))
        return Response(content, headers=headers)

    return await server.infer(request, name, version, handle)


def routes() -> list[Route]:
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
    ]
