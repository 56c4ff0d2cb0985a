"""`nimbus serve`: KServe v2 (JSON and binary tensors), SageMaker and Vertex AI routes, limits,
overload and timeouts, metrics; results equal Session.run; every bad request is a 4xx naming the
problem and the server keeps serving. One test runs the real server (uvicorn, subprocess)."""

from __future__ import annotations

import asyncio
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
from models.cases import converted
from nimbus.runtime.server import ServerConfig, create_app
from nimbus.runtime.server.main import default_host, default_port, detect_platform
from nimbus.runtime.session import Session

import nimbus

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

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


def test_real_server_serves_and_exits_cleanly_on_sigterm(artifacts, sessions, tmp_path):
    port = free_port()
    env = {**os.environ, "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict"}
    command = [sys.executable, "-m", "nimbus.cli", "serve", str(artifacts["lenet"]), str(artifacts["mixer"]),
               "--host", "127.0.0.1", "--port", str(port), "--max-body-bytes", "300000", "--max-queue", "8"]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/ping").status_code == 200 and http.get("/health").status_code == 200
            x = images(2)
            response = http.post("/v2/models/lenet/infer", json=lenet_request(x))
            np.testing.assert_array_equal(output_array(response.json()["outputs"][0]),
                                          sessions["lenet"].run({"x": x})["output"])
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
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
