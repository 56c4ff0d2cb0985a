"""`nimbus serve`: KServe v2 (JSON and binary tensors), SageMaker and Vertex AI routes, limits,
overload and timeouts, metrics; results equal Session.run; every bad request is a 4xx naming the
problem and the server keeps serving. One test runs the real server (uvicorn, subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models.cases import converted
from nimbus.runtime.server import ServerConfig, create_app
from nimbus.runtime.server.main import default_host, default_port, detect_platform, model_paths
from nimbus.runtime.session import Session

import nimbus

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


VERTEX_HEALTH = "/vertex/health"
VERTEX_PREDICT = "/v1/endpoints/1/deployedModels/2:predict"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for case, name in (("lenet", "lenet"), ("sequence_mixer", "mixer")):
        _, graph = converted(case)
        paths[name] = nimbus.compile(graph).save(folder / f"{name}.nimbus")
    return paths


@pytest.fixture(scope="module")
def sessions(artifacts):
    return {name: Session(path) for name, path in artifacts.items()}


def make_app(sessions, **options):
    config = ServerConfig(max_body_bytes=LIMIT, vertex_health_route=VERTEX_HEALTH,
                          vertex_predict_route=VERTEX_PREDICT, **options)
    return create_app({"lenet": sessions["lenet"], "mixer": sessions["mixer"]}, config)


@pytest.fixture
def client(sessions):
    with TestClient(make_app(sessions)) as client:
        yield client


def images(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def mixer_feeds(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 5, 12)).astype(np.float32),
            "ids": rng.integers(0, 10, (batch, 5)).astype(np.int64)}


def v2_tensor(name, array, datatype):
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "data": array.ravel().tolist()}


def lenet_request(x):
    return {"inputs": [v2_tensor("x", x, "FP32")]}


def mixer_request(feeds):
    return {"inputs": [v2_tensor("x", feeds["x"], "FP32"), v2_tensor("ids", feeds["ids"], "INT64")]}


def output_array(tensor):
    return np.array(tensor["data"], np.float32).reshape(tensor["shape"])


def assert_error(response, status, pattern):
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert pytest.importorskip("re").search(pattern, message), message


# ---- health and metadata ------------------------------------------------------------------------
def test_health_and_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "nimbus" and "binary_tensor_data" in server["extensions"]
    meta = client.get("/v2/models/mixer").json()
    assert meta["name"] == "mixer" and meta["versions"] == ["1"] and meta["platform"].startswith("nimbus_")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 5, 12]},
                              {"name": "ids", "datatype": "INT64", "shape": [-1, 5]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 30]}]
    assert client.get("/v2/models/lenet/versions/1").json()["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert client.get("/v2/models/lenet/ready").status_code == 200
    assert client.get("/v2/models/lenet/versions/1/ready").status_code == 200
    assert client.get("/ping").status_code == 200
    assert client.get(VERTEX_HEALTH).status_code == 200
    assert_error(client.get("/v2/models/nope"), 404, "unknown model 'nope'")
    assert_error(client.get("/v2/models/nope/ready"), 404, "unknown model")
    assert_error(client.get("/v2/models/lenet/versions/7"), 404, "no version '7'")
    assert_error(client.post("/v2/models/nope/infer", json={}), 404, "unknown model 'nope'")
    assert_error(client.get("/no/such/route"), 404, "Not Found")


# ---- inference ---------------------------------------------------------------------------------
def test_infer_matches_session_run(client, sessions):
    x = images(3)
    expected = sessions["lenet"].run({"x": x})["output"]
    response = client.post("/v2/models/lenet/infer", json={"id": "r1", **lenet_request(x)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "lenet" and body["id"] == "r1"
    (out,) = body["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    np.testing.assert_array_equal(output_array(out), expected)
    # nested data, the versioned route, outputs requested by name
    nested = {"inputs": [{"name": "x", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": x.tolist()}],
              "outputs": [{"name": "output"}]}
    response = client.post("/v2/models/lenet/versions/1/infer", json=nested)
    np.testing.assert_array_equal(output_array(response.json()["outputs"][0]), expected)
    # two inputs of different datatypes
    feeds = mixer_feeds(4)
    response = client.post("/v2/models/mixer/infer", json=mixer_request(feeds))
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(output_array(response.json()["outputs"][0]),
                                  sessions["mixer"].run(feeds)["output"])


def test_nan_is_a_float_value(client, sessions):
    x = images(1)
    x[0, 0, 0, 0] = np.nan
    body = lenet_request(x)
    assert "NaN" in json.dumps(body)
    response = client.post("/v2/models/lenet/infer", content=json.dumps(body))
    assert response.status_code == 200, response.text


BAD_REQUESTS = [
    ("not json", b"{\"inputs\": [", "not valid JSON"),
    ("not an object", b"[1, 2]", "must be a JSON object"),
    ("not utf-8", b"\xff\xfe\x00{", "UTF-8|not valid JSON"),
    ("deep nesting", b"[" * 10000 + b"]" * 10000, "nested deeper than 64"),
    ("deep inside data", b'{"inputs": [{"name": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
     "nested deeper"),
    ("duplicate keys", b'{"inputs": [], "inputs": []}', "duplicate key 'inputs'"),
    ("huge integer", b'{"inputs": [{"name": "x", "shape": [' + b"9" * 5000 + b"]}]}", "JSON"),
]


@pytest.mark.parametrize("body, pattern", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_malformed_bodies_are_400(client, body, pattern):
    assert_error(client.post("/v2/models/lenet/infer", content=body), 400, pattern)
    assert client.post("/v2/models/lenet/infer", json=lenet_request(images(1))).status_code == 200


def _mixer(**changes):
    feeds = mixer_feeds(2)
    request = mixer_request(feeds)
    x, ids = request["inputs"]
    for key, value in changes.items():
        target, _, field = key.partition("__")
        tensor = {"x": x, "ids": ids}[target]
        if value is None:
            del tensor[field]
        else:
            tensor[field] = value
    return request


BAD_TENSORS = [
    ("unknown input", _mixer(x__name="y"), "has no input 'y'"),
    ("missing input", {"inputs": [{"name": "x", "shape": [1, 5, 12], "datatype": "FP32",
                                   "data": [0.0] * 60}]}, r"missing inputs \['ids'\]"),
    ("input twice", {"inputs": [{"name": "ids", "shape": [1, 5], "datatype": "INT64", "data": [1] * 5}] * 2},
     "given twice"),
    ("no inputs", {"inputs": []}, "non-empty list"),
    ("wrong datatype", _mixer(ids__datatype="INT32"), "'ids' has datatype INT32, the model takes INT64"),
    ("unknown datatype", _mixer(x__datatype="FLOAT"), "unknown datatype 'FLOAT'"),
    ("missing datatype", _mixer(x__datatype=None), "'datatype' must be a string"),
    ("shape not ints", _mixer(x__shape=[2, "5", 12]), "list of integers"),
    ("wrong rank", _mixer(x__shape=[10, 12]), "rank 3"),
    ("wrong fixed dim", _mixer(x__shape=[2, 6, 10]), r"axis 1 .*expected 5, got 6"),
    ("batch mismatch", _mixer(ids__shape=[5, 2]), r"'ids' axis 0 .*expected N=2, got 5"),
    ("negative dim", _mixer(x__shape=[-2, 5, 12]), "negative dimension"),
    ("huge dims", _mixer(x__shape=[1 << 40, 1 << 40, 12]), "too many elements"),
    ("too few elements", _mixer(x__data=[0.5] * 119), "119 elements, shape .* needs 120"),
    ("data not a list", _mixer(x__data="abc"), "must be a JSON array"),
    ("strings in data", _mixer(x__data=["a"] * 120), "must be numbers"),
    ("nulls in data", _mixer(x__data=[None] * 120), "must be numbers"),
    ("ragged data", _mixer(x__data=[[0.5] * 60, [0.5] * 59]), "regular"),
    ("bools for floats", _mixer(x__data=[True] * 120), "must be numbers"),
    ("floats for ints", _mixer(ids__data=[1.5] * 10), "INT64: data has non-integer"),
    ("ints out of range", _mixer(ids__data=[1 << 63] * 10), r"outside \[|not a regular|integers"),
    ("no data", _mixer(x__data=None), "neither 'data' nor binary_data_size"),
    ("unknown output", {**_mixer(), "outputs": [{"name": "logits"}]}, "has no output 'logits'"),
    ("bad id", {**_mixer(), "id": 5}, "'id' must be a string"),
    ("float overflow", {"inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                    "data": [1e300] * 3072}]}, "outside its range"),
]


@pytest.mark.parametrize("request_body, pattern", [b[1:] for b in BAD_TENSORS],
                         ids=[b[0] for b in BAD_TENSORS])
def test_bad_tensors_are_400_naming_the_problem(client, request_body, pattern):
    model = "lenet" if request_body["inputs"] and request_body["inputs"][0].get("shape") == [1, 3, 32, 32] \
        else "mixer"
    assert_error(client.post(f"/v2/models/{model}/infer", json=request_body), 400, pattern)
    assert client.post("/v2/models/mixer/infer", json=mixer_request(mixer_feeds(1))).status_code == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                              max_size=3),
    max_leaves=12)
# (route, headers, a valid body) for each protocol, on the two-input model
FUZZED_ROUTES = [
    ("/v2/models/mixer/infer", {}, lambda: mixer_request(mixer_feeds(2))),
    ("/invocations", {"X-Amzn-SageMaker-Target-Model": "mixer"},
     lambda: {"instances": [{"x": mixer_feeds(1)["x"][0].tolist(), "ids": [1, 2, 3, 4, 5]}]}),
    (VERTEX_PREDICT, {}, lambda: {"instances": images(1).tolist()}),
]


@st.composite
def mutated_requests(draw):
    """A valid request with one field replaced by random JSON or removed (a tensor's name,
    shape, datatype or data, or a top-level key), or a random JSON document in its place."""
    route, headers, make = draw(st.sampled_from(FUZZED_ROUTES))
    body = make()
    kind = draw(st.sampled_from(["field", "remove", "document"]))
    if kind == "document":
        return route, headers, draw(JSON_VALUES)
    containers = [body] + [t for t in body.get("inputs", []) if isinstance(t, dict)]
    target = draw(st.sampled_from(containers))
    key = draw(st.sampled_from(sorted(target) + ["outputs", "parameters", "id"]))
    if kind == "remove":
        target.pop(key, None)
    else:
        target[key] = draw(JSON_VALUES)
    return route, headers, body


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=mutated_requests())
def test_fuzzed_requests_get_a_named_client_error_or_an_answer(client, request):
    """No request body makes a 5xx: each is answered or refused with a 4xx naming the problem,
    and the server keeps serving."""
    route, headers, body = request
    response = client.post(route, content=json.dumps(body), headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert client.post("/v2/models/mixer/infer",
                       json=mixer_request(mixer_feeds(1))).status_code == 200


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from([route for route, _, _ in FUZZED_ROUTES]),
       content_type=st.sampled_from(["application/json", "application/x-npy",
                                     "application/octet-stream", "text/plain"]),
       header_length=st.none() | st.integers(-5, 300).map(str)
       | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
       body=st.binary(max_size=300))
def test_random_bytes_get_a_named_client_error(client, route, content_type, header_length, body):
    """Bytes of any kind (.npy, KServe's binary form with any JSON header length) are refused
    with a 4xx naming the problem, never a 5xx."""
    headers = {"Content-Type": content_type}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = client.post(route, content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_nan_in_an_integer_input_is_400(client):
    request = _mixer()
    body = json.dumps(request).replace('"data": [' + ", ".join(map(str, request["inputs"][1]["data"][:1])),
                                       '"data": [NaN', 1)
    assert "NaN" in body
    assert_error(client.post("/v2/models/mixer/infer", content=body), 400, "INT64: data has non-integer")


# ---- binary tensor data extension --------------------------------------------------------------
def binary_request(feeds, outputs_binary=True, sizes=None, tail=b""):
    header = {"inputs": [], "outputs": [{"name": "output", "parameters": {"binary_data": outputs_binary}}]}
    payload = b""
    for (name, array), datatype in zip(feeds.items(), ("FP32", "INT64")):
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        size = (sizes or {}).get(name, len(raw))
        header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                 "parameters": {"binary_data_size": size}})
        payload += raw
    text = json.dumps(header).encode()
    return text + payload + tail, {"Inference-Header-Content-Length": str(len(text)),
                                   "Content-Type": "application/octet-stream"}


def test_binary_inputs_and_outputs(client, sessions):
    feeds = mixer_feeds(3)
    expected = sessions["mixer"].run(feeds)["output"]
    body, headers = binary_request(feeds)
    response = client.post("/v2/models/mixer/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == expected.nbytes and "data" not in out
    actual = np.frombuffer(response.content[length:], "<f4").reshape(out["shape"])
    np.testing.assert_array_equal(actual, expected)
    # binary in, JSON out
    body, headers = binary_request(feeds, outputs_binary=False)
    response = client.post("/v2/models/mixer/infer", content=body, headers=headers)
    np.testing.assert_array_equal(output_array(response.json()["outputs"][0]), expected)
    # JSON in, all outputs binary by the request parameter
    request = {**mixer_request(feeds), "parameters": {"binary_data_output": True}}
    response = client.post("/v2/models/mixer/infer", json=request)
    length = int(response.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<f4").reshape(3, 30), expected)


def test_binary_bounds_are_checked(client):
    feeds = mixer_feeds(2)
    body, headers = binary_request(feeds)

    def post(content, h=headers):
        return client.post("/v2/models/mixer/infer", content=content, headers=h)

    assert_error(post(body[:-5]), 400, "binary_data_size 80 runs past the end")
    assert_error(post(body + b"\0" * 8), 400, "declare 560 bytes, the body carries 568")
    big, h = binary_request(feeds, sizes={"x": 1 << 62})
    assert_error(post(big, h), 400, "runs past the end")
    odd, h = binary_request(feeds, sizes={"x": 476, "ids": 84})
    assert_error(post(odd, h), 400, "'x': binary_data_size is 476 bytes, shape .* needs 480")
    negative, h = binary_request(feeds, sizes={"x": -1})
    assert_error(post(negative, h), 400, "non-negative integer")
    assert_error(post(body, {"Inference-Header-Content-Length": str(len(body) + 1)}), 400, "has only")
    assert_error(post(body, {"Inference-Header-Content-Length": "-3"}), 400, "non-negative integer")
    assert_error(post(body, {"Inference-Header-Content-Length": "10"}), 400, "not valid JSON")
    assert client.post("/v2/models/mixer/infer", content=body, headers=headers).status_code == 200


# ---- body size limit ---------------------------------------------------------------------------
def test_body_over_the_limit_is_413(client):
    big = b" " * (LIMIT + 1)
    assert_error(client.post("/v2/models/lenet/infer", content=big), 413, f"limit of {LIMIT} bytes")

    def chunks():  # no Content-Length: chunked transfer encoding
        for _ in range(40):
            yield b" " * 32768

    response = client.post("/v2/models/lenet/infer", content=chunks())
    assert_error(response, 413, "over the limit")
    assert_error(client.post("/invocations", content=big), 413, "over the limit")
    assert_error(client.post(VERTEX_PREDICT, content=big), 413, "over the limit")
    assert client.post("/v2/models/lenet/infer", json=lenet_request(images(1))).status_code == 200


# ---- SageMaker and Vertex AI -------------------------------------------------------------------
def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_sagemaker_invocations(client, sessions):
    x = images(2)
    expected = sessions["lenet"].run({"x": x})["output"]
    response = client.post("/invocations", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32), expected)
    response = client.post("/invocations", json=lenet_request(x))
    np.testing.assert_array_equal(output_array(response.json()["outputs"][0]), expected)
    # .npy in, .npy out (the request's type), or JSON when Accept asks for it
    response = client.post("/invocations", content=npy(x), headers={"Content-Type": "application/x-npy"})
    assert response.headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), expected)
    response = client.post("/invocations", content=npy(x), headers={"Content-Type": "application/x-npy",
                                                                     "Accept": "application/json"})
    np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32), expected)
    response = client.post("/invocations", json={"instances": x.tolist()},
                           headers={"Accept": "application/x-npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), expected)
    # the target-model header picks another model; several inputs come as objects
    feeds = mixer_feeds(2)
    instances = [{"x": feeds["x"][i].tolist(), "ids": feeds["ids"][i].tolist()} for i in range(2)]
    response = client.post("/invocations", json={"instances": instances},
                           headers={"X-Amzn-SageMaker-Target-Model": "mixer.tar.gz"})
    np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32),
                                  sessions["mixer"].run(feeds)["output"])
    # errors
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    npy_headers = {"Content-Type": "application/x-npy"}
    assert_error(client.post("/invocations", content=pickled.getvalue(), headers=npy_headers), 400, "npy")
    assert_error(client.post("/invocations", content=b"garbage", headers=npy_headers), 400, "npy")
    assert_error(client.post("/invocations", content=npy(x.astype(np.int64)[:, :, :, :31]),
                             headers=npy_headers), 400, "axis 3")
    assert_error(client.post("/invocations", content=npy(x.astype(np.complex64)), headers=npy_headers),
                 400, "takes float32")
    assert_error(client.post("/invocations", content=b"x", headers={"Content-Type": "text/csv"}), 415, "csv")
    assert_error(client.post("/invocations", json={"instances": x.tolist()}, headers={"Accept": "text/csv"}),
                 406, "text/csv")
    assert_error(client.post("/invocations", json={"rows": []}), 400, "either \"inputs\"")
    assert_error(client.post("/invocations", json={"instances": [[1, 2]]}), 400, "rank 4")
    assert_error(client.post("/invocations", json={"instances": [{"x": 1}]},
                             headers={"X-Amzn-SageMaker-Target-Model": "mixer"}), 400, r"missing \['ids'\]")
    assert_error(client.post("/invocations", json={"instances": [1]},
                             headers={"X-Amzn-SageMaker-Target-Model": "other"}), 404, "unknown model")


def test_vertex_predict(client, sessions):
    x = images(2, seed=5)
    response = client.post(VERTEX_PREDICT, json={"instances": x.tolist(), "parameters": {}})
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32),
                                  sessions["lenet"].run({"x": x})["output"])
    assert_error(client.post(VERTEX_PREDICT, json={"inputs": []}), 400, "instances")
    assert_error(client.post(VERTEX_PREDICT, json={"instances": []}), 400, "non-empty")
    assert_error(client.post(VERTEX_PREDICT, content=b"[" * 3000), 400, "nested deeper")


def test_azure_ml_routes_and_model_directory(sessions, artifacts, tmp_path):
    routes = {"azure_liveness_route": "/live", "azure_readiness_route": "/ready",
              "azure_scoring_route": "/score"}
    with TestClient(make_app(sessions, **routes)) as azure:
        assert azure.get("/live").status_code == 200 and azure.get("/ready").status_code == 200
        x = images(3, seed=9)
        for key in ("input_data", "instances"):
            response = azure.post("/score", json={key: x.tolist()})
            assert response.status_code == 200, response.text
            np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32),
                                          sessions["lenet"].run({"x": x})["output"])
        assert_error(azure.post("/score", json={"data": []}), 400, "input_data")
        assert_error(azure.post("/score", json={"input_data": []}), 400, "non-empty")
    mount = tmp_path / "azureml-models" / "lenet" / "1"
    mount.mkdir(parents=True)
    (mount / "lenet.nimbus").write_bytes(artifacts["lenet"].read_bytes())
    assert model_paths([], {"AZUREML_MODEL_DIR": str(mount)}) == [mount / "lenet.nimbus"]
    assert detect_platform({"AZUREML_MODEL_DIR": str(mount)}) == "azure"
    assert default_host({"AZUREML_MODEL_DIR": str(mount)}) == "0.0.0.0"


def test_platform_environment():
    assert default_port({}) == 8080 and default_host({}) == "127.0.0.1"
    assert default_port({"SAGEMAKER_BIND_TO_PORT": "9001"}) == 9001
    assert detect_platform({"SAGEMAKER_BIND_TO_PORT": "9001"}) == "sagemaker"
    assert default_port({"AIP_HTTP_PORT": "7080"}) == 7080 and default_host({"AIP_HTTP_PORT": "7080"}) == "0.0.0.0"


# ---- overload, timeouts, metrics ---------------------------------------------------------------
def slow(session, seconds, monkeypatch):
    run = session.run

    def sleeping_run(feeds):
        time.sleep(seconds)
        return run(feeds)

    monkeypatch.setattr(session, "run", sleeping_run)


async def _post_many(app, path, body, count):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post(path, json=body) for _ in range(count)))


def test_overload_is_503_with_retry_after_and_timeouts_504(artifacts, monkeypatch):
    sessions = {name: Session(path) for name, path in artifacts.items()}
    slow(sessions["lenet"], 0.3, monkeypatch)
    app = make_app(sessions, max_queue=3, workers=1, timeout_s=5)
    responses = asyncio.run(_post_many(app, "/v2/models/lenet/infer", lenet_request(images(1)), 8))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [503] * 5, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and "limit of 3" in rejected.json()["error"]
    server = app.state.server
    assert server.models["lenet"].pending == 0
    # health never waits behind inference; another model is not affected
    metrics = TestClient(app).get("/metrics").text
    assert 'nimbus_http_requests_total{model="lenet",status="503"} 5.0' in metrics
    assert 'nimbus_inference_request_failure_total{model="lenet",reason="rejected",version="1"} 5.0' in metrics

    app = make_app(sessions, max_queue=4, workers=1, timeout_s=0.2)
    responses = asyncio.run(_post_many(app, "/v2/models/lenet/infer", lenet_request(images(1)), 2))
    assert [r.status_code for r in responses] == [504, 504]
    assert "within 0.2 s" in responses[0].json()["error"]
    # the second request's deadline passed while it waited: it is dropped before it runs
    deadline = time.monotonic() + 5
    while app.state.server.models["lenet"].pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.server.models["lenet"].pending == 0
    metrics = app.state.server.metrics.exposition().decode()
    assert 'nimbus_inference_exec_count_total{model="lenet",version="1"} 1.0' in metrics


def test_metrics(client):
    client.post("/v2/models/lenet/infer", json=lenet_request(images(2)))
    client.post("/v2/models/lenet/infer", json={"inputs": "bad"})
    client.post("/v2/models/secret-name/infer", json={})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('nimbus_http_requests_total{model="lenet",status="200"} 1.0',
                 'nimbus_http_requests_total{model="lenet",status="400"} 1.0',
                 'nimbus_http_requests_total{model="",status="404"} 1.0',
                 'nimbus_inference_request_success_total{model="lenet",version="1"} 1.0',
                 'nimbus_inference_request_failure_total{model="lenet",reason="invalid",version="1"} 1.0',
                 'nimbus_inference_count_total{model="lenet",version="1"} 2.0',
                 'nimbus_inference_exec_count_total{model="lenet",version="1"} 1.0',
                 'nimbus_inference_compute_seconds_count{model="lenet",version="1"} 1.0',
                 'nimbus_inference_pending_requests{model="lenet",version="1"} 0.0',
                 'nimbus_inference_queue_depth{model="mixer",version="1"} 0.0'):
        assert line in text, line
    assert "secret-name" not in text
    assert "nimbus_inference_compute_infer_duration_us_total" in text


# ---- layering and the real server --------------------------------------------------------------
def test_server_imports_without_the_compiler():
    code = ("import sys, nimbus.runtime.server, nimbus.runtime.server.main\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'lark', 'triton', 'sympy')"
            " or m.startswith('nimbus.compiler') or m.startswith('nimbus.passes')]\n"
            "print(bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(process, url: str, log_path, timeout_s: float = 30) -> None:
    """Polls ``url`` until it answers 200; fails with the server's log if the process exits or
    the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(arguments: list[str], tmp_path, env=None):
    """A real server process on a free loopback port, ready to serve: yields (process, base URL,
    log path) and kills it if the test leaves it running."""
    port = free_port()
    command = [*arguments, "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{base}/v2/health/ready", log_path)
        yield process, base, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_real_server_serves_and_exits_cleanly_on_sigterm(artifacts, sessions, tmp_path):
    env = {**os.environ, "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict"}
    command = [sys.executable, "-m", "nimbus.cli", "serve", str(artifacts["lenet"]), str(artifacts["mixer"]),
               "--max-body-bytes", "300000", "--max-queue", "8",
               "--max-batch-size", "4", "--max-batch-size", "mixer=2", "--max-batch-delay-ms", "1"]
    with running_server(command, tmp_path, env) as (process, base, log_path):
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/ping").status_code == 200 and http.get("/health").status_code == 200
            x = images(2)
            response = http.post("/v2/models/lenet/infer", json=lenet_request(x))
            # Another process: its BLAS may split float products differently, so not bit for bit.
            np.testing.assert_allclose(output_array(response.json()["outputs"][0]),
                                       sessions["lenet"].run({"x": x})["output"], rtol=1e-5,
                                       atol=1e-6)
            response = http.post("/predict", json={"instances": x.tolist()})
            assert np.array(response.json()["predictions"]).shape == (2, 10)
            assert http.post("/v2/models/lenet/infer", content=b"[" * 10000).status_code == 400
            assert http.post("/v2/models/lenet/infer", content=b" " * 300001).status_code == 413
            response = http.post("/v2/models/lenet/infer", content=(b" " * 100000 for _ in range(4)))
            assert response.status_code == 413
            assert http.get("/v2/models/mixer").json()["inputs"][1]["datatype"] == "INT64"
            assert 'status="200"' in http.get("/metrics").text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()


# ---- dynamic batching --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_lenet(artifacts, tmp_path_factory):
    _, graph = converted("lenet")
    rng = np.random.default_rng(3)
    calibration = [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    compiled = nimbus.compile(graph, calibration=calibration)
    assert any(n.op == "qconv2d" for n in compiled.graph.nodes)
    return compiled.save(tmp_path_factory.mktemp("int8") / "lenet_int8.nimbus")


def _concurrent(calls, threads=16):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_batching_is_bit_identical_under_concurrency(artifacts, int8_lenet):
    from nimbus.runtime.server.metrics import Metrics
    from nimbus.runtime.server.models import ServedModel

    # int8 lenet (bit-exact kernels) and the float sequence mixer (two inputs, FP32 and INT64)
    cases = [("lenet8", Session(int8_lenet), lambda b, seed: {"x": images(b, seed)}),
             ("mixer", Session(artifacts["mixer"]), mixer_feeds)]
    for name, session, make in cases:
        metrics = Metrics()
        model = ServedModel(name, session, workers=2, max_queue=64, metrics=metrics,
                            max_batch_size=8, max_batch_delay_s=0.02)
        assert model.batcher is not None
        requests = [make(1 + i % 3, seed=i) for i in range(36)]
        try:
            results = _concurrent([lambda f=f, m=model: m.run(f) for f in requests])
        finally:
            model.close()
        for feeds, result in zip(requests, results):
            expected = session.run(feeds)
            assert list(result) == list(expected)
            for key in expected:
                assert result[key].shape == expected[key].shape
                np.testing.assert_array_equal(result[key], expected[key])
        text = metrics.exposition().decode()
        labels = f'{{model="{name}",version="1"}}'
        rows = sum(next(iter(f.values())).shape[0] for f in requests)
        assert f"nimbus_inference_batch_size_sum{labels} {float(rows)}" in text
        assert f"nimbus_inference_count_total{labels} {float(rows)}" in text
        executions = float(text.split(f"nimbus_inference_exec_count_total{labels} ")[1].split()[0])
        assert f"nimbus_inference_batch_size_count{labels} {executions}" in text
        assert executions < len(requests), "no request was batched"


def test_batcher_groups_by_shape_splits_exactly_and_isolates_failures():
    from nimbus.runtime.server.batching import Batcher

    runs = []

    def execute(feeds, rows, queued):
        x = feeds["x"]
        runs.append((rows, x.shape))
        if (x < 0).any():
            raise ValueError("negative")
        return {"y": x * 2}

    batcher = Batcher("t", 4, 0.05, 1, execute)
    try:
        feeds = [np.full((1, 2), 1.0), np.full((2, 2), 2.0), np.full((1, 3), 3.0),
                 np.full((6, 2), 4.0), np.full((1, 2), 5.0)]
        results = _concurrent([lambda x=x: batcher.run({"x": x}, time.monotonic() + 5) for x in feeds])
        for x, result in zip(feeds, results):
            np.testing.assert_array_equal(result["y"], x * 2)
        assert all(sum(rows) <= 4 or len(rows) == 1 for rows, _ in runs), runs
        assert any(shape == (1, 3) and rows == [1] for rows, shape in runs)  # other trailing shape: alone
        assert any(shape == (6, 2) and rows == [6] for rows, shape in runs)  # over the limit: alone
        assert len(runs) < len(feeds)
        # one bad request in a batch: the others still get their results
        good, bad = np.ones((1, 2)), -np.ones((1, 2))
        outcomes = _concurrent([lambda: batcher.run({"x": good}, time.monotonic() + 5),
                                lambda: _raises(lambda: batcher.run({"x": bad}, time.monotonic() + 5))])
        np.testing.assert_array_equal(outcomes[0]["y"], good * 2)
        assert isinstance(outcomes[1], ValueError)
    finally:
        batcher.close()


def _raises(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001
        return err
    return None


async def _post_all(app, requests, headers=None):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post(path, json=body, headers=headers) for path, body in requests))


def test_batching_over_every_protocol_and_batch_metric(sessions):
    app = make_app(sessions, max_batch_size=8, max_batch_delay_ms=30, workers=1)
    requests, expected = [], []
    for i in range(24):
        x = images(1 + i % 3, seed=100 + i)
        want = sessions["lenet"].run({"x": x})["output"]
        kind = i % 3
        if kind == 0:
            requests.append(("/v2/models/lenet/infer", lenet_request(x)))
        elif kind == 1:
            requests.append(("/invocations", {"instances": x.tolist()}))
        else:
            requests.append((VERTEX_PREDICT, {"instances": x.tolist()}))
        expected.append(want)
    responses = asyncio.run(_post_all(app, requests))
    for response, want in zip(responses, expected):
        assert response.status_code == 200, response.text
        body = response.json()
        got = output_array(body["outputs"][0]) if "outputs" in body else np.array(body["predictions"], np.float32)
        assert got.shape == want.shape
        # float lenet's BLAS matmuls may round differently by batch size: close, not bit-equal
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    text = app.state.server.metrics.exposition().decode()
    rows = sum(w.shape[0] for w in expected)
    assert f'nimbus_inference_batch_size_sum{{model="lenet",version="1"}} {float(rows)}' in text
    count = float(text.split('nimbus_inference_batch_size_count{model="lenet",version="1"} ')[1].split()[0])
    assert count < len(requests)
    app.state.server.close()


def test_batching_keeps_queue_limit_and_timeouts(artifacts, monkeypatch):
    sessions = {name: Session(path) for name, path in artifacts.items()}
    slow(sessions["lenet"], 0.3, monkeypatch)
    app = make_app(sessions, max_queue=3, workers=1, timeout_s=5, max_batch_size=4)
    responses = asyncio.run(_post_many(app, "/v2/models/lenet/infer", lenet_request(images(1)), 8))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [503] * 5, codes
    assert app.state.server.models["lenet"].pending == 0
    app.state.server.close()

    app = make_app(sessions, max_queue=4, workers=1, timeout_s=0.2, max_batch_size=4)
    responses = asyncio.run(_post_many(app, "/v2/models/lenet/infer", lenet_request(images(1)), 2))
    assert [r.status_code for r in responses] == [504, 504]
    deadline = time.monotonic() + 5
    while app.state.server.models["lenet"].pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.server.models["lenet"].pending == 0
    metrics = app.state.server.metrics.exposition().decode()
    # one run at most: whatever waited past its deadline was dropped before running
    assert 'nimbus_inference_exec_count_total{model="lenet",version="1"} 1.0' in metrics
    app.state.server.close()


# ---- model repository, versions, management -----------------------------------------------------
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def repository(artifacts, int8_lenet, tmp_path):
    import shutil
    root = tmp_path / "repo"
    for name, version, source in (("lenet", "1", artifacts["lenet"]), ("lenet", "2", int8_lenet),
                                  ("mixer", "1", artifacts["mixer"])):
        (root / name / version).mkdir(parents=True)
        shutil.copy(source, root / name / version / "model.nimbus")
    return root


def repo_app(root, **options):
    from nimbus.runtime.server.main import load_repository
    config = ServerConfig(max_body_bytes=LIMIT, model_repository=root, **options)
    return create_app(load_repository(root), config)


def lenet_output(client, path, x, headers=None):
    response = client.post(path, json=lenet_request(x), headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], output_array(body["outputs"][0])


def test_repository_serves_versions(repository, artifacts, int8_lenet):
    v1, v2 = Session(artifacts["lenet"]), Session(int8_lenet)
    x = images(2, seed=9)
    with TestClient(repo_app(repository)) as client:
        meta = client.get("/v2/models/lenet").json()
        assert meta["versions"] == ["1", "2"]
        version, out = lenet_output(client, "/v2/models/lenet/infer", x)  # default: highest
        assert version == "2"
        np.testing.assert_array_equal(out, v2.run({"x": x})["output"])
        version, out = lenet_output(client, "/v2/models/lenet/versions/1/infer", x)
        assert version == "1"
        np.testing.assert_array_equal(out, v1.run({"x": x})["output"])
        assert client.get("/v2/models/lenet/versions/2/ready").status_code == 200
        assert_error(client.get("/v2/models/lenet/versions/3"), 404, r"no version '3' \(versions: \['1', '2'\]\)")
        assert client.post("/invocations", json={"instances": x.tolist()}).status_code == 200
        # management is off by default: no route answers
        for path in ("/v2/repository/index", "/v2/repository/models/lenet/load"):
            assert client.post(path, json={}, headers=AUTH).status_code == 404
        assert client.get("/v2/repository/index", headers=AUTH).status_code == 404


def test_management_needs_the_token(repository):
    with TestClient(repo_app(repository, management_token=TOKEN)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = client.post("/v2/repository/models/lenet/unload", json={}, headers=headers)
            assert_error(response, 401, "bearer token")
            assert response.headers["www-authenticate"] == "Bearer"
            assert client.get("/v2/repository/index", headers=headers).status_code == 401
        assert client.get("/v2/models/lenet").json()["versions"] == ["1", "2"]  # nothing happened
        index = client.get("/v2/repository/index", headers=AUTH).json()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            ("lenet", "1", "READY"), ("lenet", "2", "READY"), ("mixer", "1", "READY")]
        # a request names a version only, never a path
        assert_error(client.post("/v2/repository/models/lenet/load", json={"path": "/etc/passwd"},
                                 headers=AUTH), 400, "only 'version'")
        assert_error(client.post("/v2/repository/models/lenet/load", json={"version": "../1"},
                                 headers=AUTH), 400, "positive integer")
        assert_error(client.post("/v2/repository/models/..x/load", json={}, headers=AUTH), 400,
                     "invalid model name")


def test_load_unload_default_and_corrupt_artifact(repository, artifacts, int8_lenet):
    import shutil
    v1, v2 = Session(artifacts["lenet"]), Session(int8_lenet)
    x = images(1, seed=4)
    with TestClient(repo_app(repository, management_token=TOKEN)) as client:
        def post(what, body=None):
            return client.post(f"/v2/repository/models/lenet/{what}", json=body or {}, headers=AUTH)

        # rollback: switch the default to 1, then back to 2
        response = post("default", {"version": "1"})
        assert response.status_code == 200 and response.json()["default_version"] == "1"
        version, out = lenet_output(client, "/v2/models/lenet/infer", x)
        assert version == "1"
        np.testing.assert_array_equal(out, v1.run({"x": x})["output"])
        assert_error(post("default", {"version": "7"}), 404, "no version '7'")
        assert_error(post("default", {}), 400, "'version' is required")
        assert post("default", {"version": "2"}).json()["default_version"] == "2"
        # a corrupted version 3 is refused, naming the problem; version 2 keeps serving
        (repository / "lenet" / "3").mkdir()
        data = bytearray((repository / "lenet" / "2" / "model.nimbus").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (repository / "lenet" / "3" / "model.nimbus").write_bytes(bytes(data))
        response = post("load", {"version": "3"})
        assert_error(response, 400, r"lenet/3/model.nimbus is not a valid artifact: .*(checksum|corrupt)")
        assert str(repository) not in response.text
        assert client.get("/v2/models/lenet").json()["versions"] == ["1", "2"]
        version, out = lenet_output(client, "/v2/models/lenet/infer", x)
        assert version == "2"
        np.testing.assert_array_equal(out, v2.run({"x": x})["output"])
        assert_error(post("load", {"version": "9"}), 404, "no lenet/9/model.nimbus")
        index = client.get("/v2/repository/index", headers=AUTH).json()
        assert {"name": "lenet", "version": "3", "state": "UNAVAILABLE", "reason": "not loaded"} in index
        # a good version 3 loads; the default stays where it was switched to, until "latest"
        shutil.copy(artifacts["lenet"], repository / "lenet" / "3" / "model.nimbus")
        response = post("load", {"version": "3"})
        assert response.status_code == 200, response.text
        assert response.json()["versions"] == ["1", "2", "3"] and response.json()["default_version"] == "2"
        assert lenet_output(client, "/v2/models/lenet/infer", x)[0] == "2"
        assert post("default", {"version": "latest"}).json()["default_version"] == "3"
        assert lenet_output(client, "/v2/models/lenet/infer", x)[0] == "3"
        # unload one version, then all
        assert post("unload", {"version": "3"}).json()["unloaded"] == ["3"]
        assert lenet_output(client, "/v2/models/lenet/infer", x)[0] == "2"
        assert_error(client.post("/v2/models/lenet/versions/3/infer", json=lenet_request(x)), 404, "no version '3'")
        assert post("unload").json()["unloaded"] == ["1", "2"]
        assert_error(client.post("/v2/models/lenet/infer", json=lenet_request(x)), 404, "unknown model")
        assert 'model="lenet",version="2"' not in client.get("/metrics").text.split("pending_requests")[-1]
        # and back from the repository: every version present
        assert post("load").json()["loaded"] == ["1", "2", "3"]
        assert lenet_output(client, "/v2/models/lenet/infer", x)[0] == "3"


def test_switch_and_unload_under_load_drop_nothing(repository, artifacts, int8_lenet, monkeypatch):
    from nimbus.runtime.server.main import load_repository
    sessions = load_repository(repository)
    for session in sessions["lenet"].values():
        slow(session, 0.1, monkeypatch)
    app = create_app(sessions, ServerConfig(max_body_bytes=LIMIT, model_repository=repository,
                                            management_token=TOKEN, workers=2, max_queue=64,
                                            max_batch_size=4))
    x = images(1, seed=11)
    expected = {"1": Session(artifacts["lenet"]).run({"x": x})["output"],
                "2": Session(int8_lenet).run({"x": x})["output"]}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def infer():
                return await client.post("/v2/models/lenet/infer", json=lenet_request(x))

            first = [asyncio.create_task(infer()) for _ in range(20)]
            await asyncio.sleep(0.05)
            switched = await client.post("/v2/repository/models/lenet/default", json={"version": "1"},
                                         headers=AUTH)
            second = [asyncio.create_task(infer()) for _ in range(20)]
            await asyncio.sleep(0.02)
            in_flight_on_2 = sum(not task.done() for task in first)
            unloaded = await client.post("/v2/repository/models/lenet/unload", json={"version": "2"},
                                         headers=AUTH)
            responses = await asyncio.gather(*first, *second)
            return responses, (switched, unloaded), in_flight_on_2

    responses, (switched, unloaded), in_flight_on_2 = asyncio.run(scenario())
    assert in_flight_on_2 > 0  # the unload came while requests on version 2 were running
    assert switched.status_code == 200 and unloaded.status_code == 200, (switched.text, unloaded.text)
    versions = []
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        versions.append(body["model_version"])
        # batched float lenet (version 1) may differ from an unbatched run in the last bits
        np.testing.assert_allclose(output_array(body["outputs"][0]), expected[body["model_version"]],
                                   rtol=1e-5, atol=1e-6)
    assert "2" in versions and "1" in versions, (versions, switched.json(), unloaded.json())
    server = app.state.server
    assert server.versions("lenet") == ["1"]
    server.close()


def test_api_token_guards_inference_not_health(sessions):
    app = make_app(sessions, api_token=TOKEN)
    with TestClient(app) as client:
        x = images(1)
        for path, body in (("/v2/models/lenet/infer", lenet_request(x)), ("/invocations", {"instances": x.tolist()}),
                           (VERTEX_PREDICT, {"instances": x.tolist()})):
            assert_error(client.post(path, json=body), 401, "bearer token")
            assert client.post(path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert client.post(path, json=body, headers=AUTH).status_code == 200
        assert client.get("/v2/models/lenet").status_code == 401
        assert client.get("/v2/models/lenet", headers=AUTH).status_code == 200
        assert_error(client.post("/v2/models/secret/infer", json={}), 401, "bearer")  # before 404
        for path in ("/v2/health/live", "/v2/health/ready", "/ping", VERTEX_HEALTH, "/v2/models/lenet/ready"):
            assert client.get(path).status_code == 200, path
        assert 'nimbus_http_requests_total{model="",status="401"}' in client.get("/metrics").text


def metric_value(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_during_load_loses_no_accepted_request(tmp_path):
    """Requests accepted before SIGTERM all finish with their answers; then the process exits 0."""
    import threading

    import torch

    torch.manual_seed(0)
    layers = [module for _ in range(8) for module in (torch.nn.Linear(1024, 1024), torch.nn.ReLU())]
    path = nimbus.compile(torch.nn.Sequential(*layers).eval(), (torch.zeros(1, 1024),)).save(
        tmp_path / "slow.nimbus")
    session = Session(path)
    batches = [np.random.default_rng(i).standard_normal((64, 1024)).astype(np.float32) for i in range(6)]
    command = [sys.executable, "-m", "nimbus.runtime.server", str(path), "--workers", "1",
               "--max-body-bytes", str(8 << 20)]
    with running_server(command, tmp_path) as (process, base, log_path):
        answers = [None] * len(batches)

        def send(index):
            body = {"inputs": [v2_tensor("input", batches[index], "FP32")]}
            answers[index] = httpx.post(f"{base}/v2/models/slow/infer", json=body, timeout=60)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while True:  # every request accepted (finished or pending), some still in flight
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            pending = metric_value(metrics, "nimbus_inference_pending_requests", "slow")
            done = metric_value(metrics, "nimbus_inference_request_success_total", "slow")
            if pending + done >= len(batches):
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert process.wait(timeout=60) == 0, log_path.read_text()
        for batch, answer in zip(batches, answers):
            assert answer is not None and answer.status_code == 200, answer and answer.text
            np.testing.assert_allclose(output_array(answer.json()["outputs"][0]),
                                       session.run({"input": batch})["output"], rtol=1e-5, atol=1e-6)
        print(f"\nSIGTERM with {pending:.0f} of {len(batches)} requests still in flight: all answered")
