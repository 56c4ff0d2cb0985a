"""A served model: a Session behind its own thread pool and a bounded admission count.

Every request for a model holds one of ``max_queue`` places from admission until its work is
done, queued or running, so a flood is answered 503 at the door instead of building an
unbounded backlog. A place is freed when the work finishes, not when the client gives up: a
request that timed out (504) while its run goes on still counts until that run ends. Work whose
deadline passed while it waited is dropped before it runs.

With dynamic batching on (``max_batch_size`` > 1, a batchable model: see ``batching.py``),
``run`` hands the feeds to the model's Batcher and waits for its rows; otherwise it calls
Session.run directly. A model version that is unloaded or replaced is *retired*: it takes no new
requests (the server no longer resolves it) but the requests already holding it finish on it;
its threads end once the last one has.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..session import Session, SessionError
from .batching import Batcher, Closed, Expired, batch_dim
from .errors import RequestError, bad_request
from .tensors import v2_datatype, v2_shape

log = logging.getLogger("nimbus.server")


_Expired = Expired


class ServedModel:
    def __init__(self, name: str, session: Session, *, version: str = "1", workers: int = 2,
                 max_queue: int = 64, timeout_s: float = 60.0, metrics=None,
                 max_batch_size: int = 1, max_batch_delay_s: float = 0.002):
        if workers < 1 or max_queue < 1 or not timeout_s > 0:
            raise ValueError("workers and max_queue must be at least 1, timeout_s positive")
        if max_batch_size < 1 or not max_batch_delay_s >= 0:
            raise ValueError("max_batch_size must be at least 1, the batch delay non-negative")
        self.name = name
        self.version = version
        self.session = session
        self.workers = workers
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.pending = 0  # admitted and not finished
        self.running = 0
        self.users = 0  # requests that resolved this version and are not answered yet
        self.retired = False
        self._lock = threading.Lock()
        self.inputs = {spec.name: spec for spec in session.inputs}
        self.outputs = {spec.name: spec for spec in session.outputs}
        self.batcher: Batcher | None = None
        self.max_batch_size = 1
        if max_batch_size > 1 and batch_dim(session) is not None:
            self.max_batch_size = max_batch_size
            self.batcher = Batcher(f"{name}-{version}", max_batch_size, max_batch_delay_s, workers,
                                   self._execute)
            # Request threads parse, wait for their rows and encode; `workers` runner threads
            # execute the batches, so enough request threads must wait to fill them.
            threads = max(workers, min(max_queue, workers * max_batch_size))
        else:
            if max_batch_size > 1:
                log.info("model '%s' version %s: inputs and outputs do not share a symbolic first "
                         "dim; it runs without batching", name, version)
            threads = workers
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"nimbus-{name}")

    # ---- metadata -----------------------------------------------------------------------------
    def metadata(self) -> dict:
        manifest = self.session.manifest
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"nimbus_v{manifest.get('format_version', 1)}",
            "inputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": v2_shape(s)}
                       for s in self.inputs.values()],
            "outputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": v2_shape(s)}
                        for s in self.outputs.values()],
        }

    # ---- running ------------------------------------------------------------------------------
    async def call(self, work: Callable, *args):
        """Run ``work(*args)`` on this model's threads within the request timeout; 503 when the
        model already holds ``max_queue`` requests, 504 past the timeout."""
        with self._lock:
            if self.pending >= self.max_queue:
                raise RequestError(503, f"model '{self.name}' is at its limit of {self.max_queue} "
                                   "queued requests; retry later", {"Retry-After": "1"})
            self.pending += 1
        submitted = time.monotonic()
        deadline = submitted + self.timeout_s

        def job():
            if time.monotonic() > deadline:
                raise _Expired
            if self.batcher is not None:  # `running` counts requests in a running batch
                return work(*args, queued=time.monotonic() - submitted, deadline=deadline)
            with self._lock:
                self.running += 1
            try:
                return work(*args, queued=time.monotonic() - submitted, deadline=deadline)
            finally:
                with self._lock:
                    self.running -= 1

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._release()
            raise RequestError(503, "the server is shutting down", {"Retry-After": "1"}) from None
        future.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except (asyncio.TimeoutError, _Expired):
            raise RequestError(504, f"model '{self.name}' did not answer within {self.timeout_s:g} s") from None

    def _release(self) -> None:
        with self._lock:
            self.pending -= 1

    def run(self, feeds: Mapping[str, np.ndarray], queued: float = 0.0,
            deadline: float | None = None) -> dict[str, np.ndarray]:
        """Session.run on checked feeds (called on a worker thread), with metrics; through the
        batcher when batching is on and the request has rows to batch."""
        if self.batcher is not None:
            first = next(iter(feeds.values()))
            if first.ndim and first.shape[0] > 0:
                deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
                try:
                    return self.batcher.run(feeds, deadline)
                except Closed:
                    raise RequestError(503, "the server is shutting down",
                                       {"Retry-After": "1"}) from None
        first = next(iter(feeds.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        return self._execute(feeds, [rows], queued)

    def _execute(self, feeds: Mapping[str, np.ndarray], rows: list[int], queued: float) -> dict:
        """One Session.run over the requests whose ``rows`` make up ``feeds``; with metrics."""
        started = time.perf_counter()
        batched = self.batcher is not None
        if batched:
            with self._lock:
                self.running += len(rows)
        try:
            results = self.session.run(feeds)
        except SessionError as err:
            raise bad_request(str(err)) from None
        except RuntimeError:
            # An op failed on these values (say an index out of range): the input's fault as far
            # as the client can tell; the full error, with source locations, goes to the log only.
            log.exception("model '%s' failed on a request", self.name)
            raise bad_request(f"model '{self.name}' could not run on this input "
                              "(an operation rejected the values)") from None
        finally:
            if batched:
                with self._lock:
                    self.running -= len(rows)
        compute = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.executed(self, sum(rows), queued, compute)
        return results

    # ---- lifetime -----------------------------------------------------------------------------
    def enter(self) -> None:
        with self._lock:
            self.users += 1

    def exit(self) -> None:
        with self._lock:
            self.users -= 1
            done = self.retired and self.users == 0
        if done:
            self._wind_down()

    def retire(self) -> None:
        """No new requests reach this version; close it once those holding it are answered."""
        with self._lock:
            self.retired = True
            done = self.users == 0
        if done:
            self._wind_down()

    def _wind_down(self) -> None:
        # Work already submitted (a timed-out request's run, say) still completes.
        self._executor.shutdown(wait=False, cancel_futures=False)
        if self.batcher is not None:
            self.batcher.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close()
