"""Dynamic batching: concurrent requests to one model version run as one Session.run.

A model is batchable when every input's first dim is the same symbolic dim (say ``N``) and every
output starts with it too, so rows are independent samples. Requests whose inputs agree on
everything but that first dim (same dtypes, same trailing shapes) share a key; the batcher
concatenates requests of one key along axis 0, in arrival order, up to ``max_batch_size`` rows,
or fewer once the oldest has waited ``max_delay_s``, runs them once and hands each request
exactly its own rows of every output. A request of more rows than the limit runs alone, as does
one of a key nobody else sends. If a batch fails (one request's values make an op fail), each of
its requests is run alone, so only the request at fault gets the error. Requests whose deadline
passed while queued are dropped before the batch runs.

``workers`` runner threads execute batches (so at most ``workers`` Session.run calls at a time);
the request's own thread waits for its rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

import numpy as np

from ..session import Session


def batch_dim(session: Session) -> str | None:
    """The symbolic dim that leads every input and output, or None (the model can't batch)."""
    specs = list(session.inputs) + list(session.outputs)
    if not session.inputs or any(not spec.shape for spec in specs):
        return None
    first = session.inputs[0].shape[0]
    if isinstance(first, int) or any(spec.shape[0] != first for spec in specs):
        return None
    return first


class Expired(Exception):
    """The request's deadline passed while it waited in the batch queue."""


class Closed(Exception):
    """The batcher takes no more requests (the model is shutting down)."""


class _Item:
    __slots__ = ("deadline", "enqueued", "feeds", "future", "key", "rows")

    def __init__(self, feeds, rows, key, deadline):
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.future: Future = Future()


class Batcher:
    """Collects requests into batches and runs them with ``execute(feeds, items_count, queued)``."""

    def __init__(self, name: str, max_batch_size: int, max_delay_s: float, workers: int,
                 execute: Callable[[Mapping[str, np.ndarray], list[int], float], dict]):
        if max_batch_size < 2 or max_delay_s < 0:
            raise ValueError("a batcher needs max_batch_size >= 2 and a non-negative delay")
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._execute = execute
        self._queue: list[_Item] = []
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"nimbus-batch-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # ---- the request's side -------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        """Queue the request's feeds and wait for its own rows of the outputs (raises Expired
        when the deadline passed before its batch ran)."""
        arrays = list(feeds.values())
        rows = int(arrays[0].shape[0])
        key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items())
        item = _Item(dict(feeds), rows, key, deadline)
        with self._cond:
            if self._closed:
                raise Closed
            self._queue.append(item)
            self._cond.notify_all()
        return item.future.result()

    # ---- the runners' side ---------------------------------------------------------------------
    def _select(self, now: float):
        """The first ready batch (full, or its oldest request waited long enough) and None, or
        None and how long to wait for one."""
        seen = set()
        wake = None
        for index, first in enumerate(self._queue):
            if first.key in seen:
                continue
            seen.add(first.key)
            batch, rows, full = [first], first.rows, first.rows >= self.max_batch_size
            for item in self._queue[index + 1:]:
                if full:
                    break
                if item.key != first.key:
                    continue
                if rows + item.rows > self.max_batch_size:
                    full = True
                    break
                batch.append(item)
                rows += item.rows
                full = rows >= self.max_batch_size
            ready_at = first.enqueued + self.max_delay_s
            if full or now >= ready_at or self._closed:
                return batch, None
            wake = ready_at if wake is None else min(wake, ready_at)
        return None, wake

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        if self._closed:
                            return
                        self._cond.wait()
                        continue
                    now = time.monotonic()
                    batch, wake = self._select(now)
                    if batch is not None:
                        taken = set(map(id, batch))
                        self._queue = [item for item in self._queue if id(item) not in taken]
                        break
                    self._cond.wait(max(wake - now, 0.0))
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if now > item.deadline:
                item.future.set_exception(Expired())
            else:
                live.append(item)
        if not live:
            return
        queued = sum(now - item.enqueued for item in live)
        try:
            if len(live) == 1:
                results = self._execute(live[0].feeds, [live[0].rows], queued)
                live[0].future.set_result(results)
                return
            feeds = {name: np.concatenate([item.feeds[name] for item in live])
                     for name in live[0].feeds}
            try:
                results = self._execute(feeds, [item.rows for item in live], queued)
            except Exception:  # noqa: BLE001 - retried one by one below
                # One request's values may have failed the batch: run each alone so only the
                # one at fault gets the error.
                for item in live:
                    self._run_alone(item)
                return
            start = 0
            for item in live:
                stop = start + item.rows
                item.future.set_result({name: array[start:stop] for name, array in results.items()})
                start = stop
        except BaseException as err:  # noqa: BLE001 - never leave a request waiting
            for item in live:
                if not item.future.done():
                    item.future.set_exception(err)

    def _run_alone(self, item: _Item) -> None:
        try:
            item.future.set_result(self._execute(item.feeds, [item.rows], 0.0))
        except BaseException as err:  # noqa: BLE001 - handed to the request
            item.future.set_exception(err)

    def close(self) -> None:
        """Stop taking requests; the runners finish what is queued, then end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
