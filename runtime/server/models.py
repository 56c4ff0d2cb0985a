"""A served model: a Session behind its own thread pool and a bounded admission count.

The model's backend is a Session or any object with the same ``inputs``, ``outputs`` and
``run(feeds)`` (a benchmark serves ONNX Runtime behind the same HTTP stack this way).

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

A watchdog on every run: once one has gone on longer than ``stall_timeout_s`` (a hung kernel, a
deadlocked backend), the model is *stalled*: it reports not ready, every request waiting on it is
answered 503 at once (its queued work dropped) and new ones are refused, until the run returns.
A thread cannot be killed, so recovery is the run returning; a platform that sees readiness fail
long enough replaces the instance. A run that raises fails only its own requests (500, or 400
when the input is at fault) and the model goes on serving.
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
                 max_batch_size: int = 1, max_batch_delay_s: float = 0.002,
                 stall_timeout_s: float | None = None):
        stall_timeout_s = 2 * timeout_s if stall_timeout_s is None else stall_timeout_s
        if workers < 1 or max_queue < 1 or not timeout_s > 0 or not stall_timeout_s > 0:
            raise ValueError("workers and max_queue must be at least 1, the timeouts positive")
        if max_batch_size < 1 or not max_batch_delay_s >= 0:
            raise ValueError("max_batch_size must be at least 1, the batch delay non-negative")
        self.name = name
        self.version = version
        self.session = session
        self.workers = workers
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.metrics = metrics
        self.pending = 0  # admitted and not finished
        self.running = 0
        self.users = 0  # requests that resolved this version and are not answered yet
        self.retired = False
        self._lock = threading.Lock()
        self._runs: dict[object, float] = {}  # runs going on: token -> start (oldest first)
        self._stall_reported = False
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
        manifest = getattr(self.session, "manifest", {})  # other backends carry none
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
        model already holds ``max_queue`` requests or is stalled, 504 past the timeout."""
        if self.stalled:
            raise self._stalled_error()
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
        answer = asyncio.wrap_future(future)
        try:
            # Wake at the deadline, or when a run may first be stalled, whichever comes first.
            while not answer.done():
                now = time.monotonic()
                if now >= deadline:
                    raise self._timeout_error()
                if self.stalled:
                    raise self._stalled_error()
                await asyncio.wait({answer}, timeout=min(deadline, self._stall_at(now)) - now)
            try:
                return answer.result()
            except _Expired:
                raise self._timeout_error() from None
        finally:
            answer.cancel()  # drops the work if it has not started yet; a no-op once done

    def _timeout_error(self) -> RequestError:
        return RequestError(504, f"model '{self.name}' did not answer within {self.timeout_s:g} s")

    # ---- the watchdog -------------------------------------------------------------------------
    def _stall_at(self, now: float) -> float:
        """When the model becomes stalled unless its oldest run returns first (a run starting
        later can stall no sooner than ``now`` + the stall timeout)."""
        with self._lock:
            oldest = next(iter(self._runs.values()), now)
        return min(oldest, now) + self.stall_timeout_s

    @property
    def stalled(self) -> bool:
        """Whether a run has gone on past the stall timeout; logged once per stall by whoever
        notices first (a readiness probe, a request, a metrics scrape)."""
        now = time.monotonic()
        stalled = now >= self._stall_at(now)
        if stalled and not self._stall_reported:
            self._stall_reported = True
            log.error("model '%s' version %s: a run has not returned within %g s; not ready "
                      "until it does", self.name, self.version, self.stall_timeout_s)
        return stalled

    def _stalled_error(self) -> RequestError:
        return RequestError(503, f"model '{self.name}' is not responding (a run has taken over "
                            f"{self.stall_timeout_s:g} s); retry later", {"Retry-After": "1"})

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
        """One Session.run over the requests whose ``rows`` make up ``feeds``; with metrics and
        under the watchdog."""
        started = time.perf_counter()
        batched = self.batcher is not None
        token = object()
        with self._lock:
            self._runs[token] = time.monotonic()
            if batched:
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
            with self._lock:
                del self._runs[token]
                if batched:
                    self.running -= len(rows)
            self._note_recovery(time.perf_counter() - started)
        compute = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.executed(self, sum(rows), queued, compute)
        return results

    def _note_recovery(self, seconds: float) -> None:
        if self._stall_reported and not self.stalled:
            self._stall_reported = False
            log.warning("model '%s' version %s is ready again: its stalled run returned after "
                        "%.1f s", self.name, self.version, seconds)

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
