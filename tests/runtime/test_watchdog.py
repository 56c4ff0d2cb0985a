"""A hung or crashing model run: readiness, metrics and answers reflect it, the server survives.

The backend is a fake session (the Session interface: inputs, outputs, run) whose run hangs on
a marker value until the test lets it go, or raises on another; the app runs in process.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from nimbus.runtime.server import ServerConfig, create_app
from nimbus.runtime.session import TensorSpec

HANG = 7.0
CRASH = 9.0
HEALTH_ROUTES = ("/ping", "/v2/health/ready", "/v2/models/fake/ready")


class Crash(Exception):
    """Not an input error: the backend itself failed."""


class FakeSession:
    def __init__(self):
        self.inputs = [TensorSpec("x", "f32", ("N", 2))]
        self.outputs = [TensorSpec("y", "f32", ("N", 2))]
        self.release = threading.Event()
        self.runs = []  # the first value of every run's feed, in order

    def run(self, feeds):
        x = feeds["x"]
        self.runs.append(float(x.flat[0]))
        if (x == HANG).any():
            self.release.wait(30)
        if (x == CRASH).any():
            raise Crash("the backend fell over")
        return {"y": x * 2}


def request(value: float, rows: int = 1) -> dict:
    return {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32",
                        "data": [value] * (2 * rows)}]}


def stalled_gauge(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("nimbus_model_stalled{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def fake():
    session = FakeSession()
    yield session
    session.release.set()  # never leave a worker thread hanging past the test


def serve(session, **options):
    app = create_app({"fake": session}, ServerConfig(**options))
    # Starlette answers an unexpected exception 500, then re-raises it for the server to log.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return app, httpx.AsyncClient(transport=transport, base_url="http://test")


def test_stall_timeout_defaults_to_twice_the_request_timeout(fake):
    app, _ = serve(fake, timeout_s=3)
    assert app.state.server.models["fake"].stall_timeout_s == 6
    app.state.server.close()


def test_a_hung_run_fails_readiness_and_waiting_requests_until_it_returns(fake):
    # A stall limit well above the scenario's first checks (a loaded CI machine once took 0.4 s
    # to answer them), still far below the 10 s request timeout.
    app, client = serve(fake, workers=1, timeout_s=10, stall_timeout_s=1.5)

    async def scenario():
        async with client:
            hung = asyncio.create_task(client.post("/v2/models/fake/infer", json=request(HANG)))
            await asyncio.sleep(0.1)
            # queued behind the hung run on the model's only worker
            queued = asyncio.create_task(client.post("/v2/models/fake/infer", json=request(1.0)))
            for route in HEALTH_ROUTES:  # not stalled yet
                assert (await client.get(route)).status_code == 200, route

            started = time.monotonic()
            answers = await asyncio.gather(hung, queued)
            waited = time.monotonic() - started
            for answer in answers:  # both answered at the stall, long before their timeout
                assert answer.status_code == 503, answer.text
                assert "not responding" in answer.json()["error"]
                assert answer.headers["retry-after"] == "1"
            assert waited < 5, waited
            for route in HEALTH_ROUTES:
                assert (await client.get(route)).status_code == 503, route
            assert (await client.get("/v2/health/live")).status_code == 200
            assert stalled_gauge((await client.get("/metrics")).text) == 1
            refused = await client.post("/invocations", json=request(2.0))
            assert refused.status_code == 503 and "not responding" in refused.json()["error"]

            fake.release.set()  # the run returns: ready again, serving again
            deadline = time.monotonic() + 5
            while (await client.get("/ping")).status_code != 200:
                assert time.monotonic() < deadline, "readiness did not recover"
                await asyncio.sleep(0.02)
            for route in HEALTH_ROUTES:
                assert (await client.get(route)).status_code == 200, route
            answer = await client.post("/v2/models/fake/infer", json=request(3.0))
            assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [6.0, 6.0]
            assert stalled_gauge((await client.get("/metrics")).text) == 0

    asyncio.run(scenario())
    # the queued request was dropped, never run; the refused one never reached the model
    assert fake.runs == [HANG, 3.0]
    server = app.state.server
    assert server.models["fake"].pending == 0
    server.close()


@pytest.mark.parametrize("batch", [1, 4])
def test_a_crashing_run_fails_only_its_own_requests(fake, batch):
    app, client = serve(fake, workers=1, max_batch_size=batch, max_batch_delay_ms=50)
    values = [1.0, CRASH, 2.0, 3.0]

    async def scenario():
        async with client:
            answers = await asyncio.gather(*(client.post("/v2/models/fake/infer", json=request(v))
                                             for v in values))
            health = [(await client.get(route)).status_code for route in HEALTH_ROUTES]
            again = await client.post("/v2/models/fake/infer", json=request(4.0))
            return answers, health, again, (await client.get("/metrics")).text

    answers, health, again, metrics = asyncio.run(scenario())
    for value, answer in zip(values, answers):
        if value == CRASH:
            assert answer.status_code == 500
            assert answer.json() == {"error": "internal server error"}  # no internals leak
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [2 * value] * 2
    assert health == [200] * len(HEALTH_ROUTES)
    assert again.status_code == 200
    assert 'nimbus_inference_request_failure_total{model="fake",reason="internal",version="1"} 1.0' \
        in metrics
    if batch > 1:
        assert len(fake.runs) > len(values), "the batch was not rerun request by request"
    assert app.state.server.models["fake"].pending == 0
    app.state.server.close()
