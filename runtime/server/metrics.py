"""Prometheus metrics, named after Triton's set with a ``nimbus_`` prefix, in a registry of
the app's own (so several apps in one process, as in tests, never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Why a request failed, as the failure counter's `reason` label.
REASONS = {400: "invalid", 404: "invalid", 406: "invalid", 413: "too_large", 415: "invalid",
           503: "rejected", 504: "timeout"}


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        model = ["model", "version"]
        r = self.registry
        self.requests = Counter("nimbus_http_requests", "Inference requests answered, by model and "
                                "HTTP status", ["model", "status"], registry=r)
        self.success = Counter("nimbus_inference_request_success", "Successful inference requests",
                               model, registry=r)
        self.failure = Counter("nimbus_inference_request_failure", "Failed inference requests, by "
                               "reason", model + ["reason"], registry=r)
        self.inferences = Counter("nimbus_inference_count", "Inferences performed (a batch of n "
                                  "counts n)", model, registry=r)
        self.executions = Counter("nimbus_inference_exec_count", "Model executions (Session.run "
                                  "calls)", model, registry=r)
        self.request_us = Counter("nimbus_inference_request_duration_us", "Cumulative inference "
                                  "request time, arrival to response, in microseconds", model, registry=r)
        self.queue_us = Counter("nimbus_inference_queue_duration_us", "Cumulative time requests "
                                "waited for a model worker, in microseconds", model, registry=r)
        self.compute_us = Counter("nimbus_inference_compute_infer_duration_us", "Cumulative model "
                                  "execution time, in microseconds", model, registry=r)
        self.compute_seconds = Histogram("nimbus_inference_compute_seconds", "Model execution time "
                                         "per request", model, registry=r,
                                         buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                                  .5, 1, 2.5, 5, 10, 30, 60))
        self.batch_size = Histogram("nimbus_inference_batch_size", "Rows per model execution "
                                    "(requests batched together add up)", model, registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.in_flight = Gauge("nimbus_inference_pending_requests", "Requests accepted and not yet "
                               "finished (queued or running)", model, registry=r)
        self.queue_depth = Gauge("nimbus_inference_queue_depth", "Requests waiting for a model worker",
                                 model, registry=r)
        self.stalled = Gauge("nimbus_model_stalled", "1 while a run of the model has gone on past "
                             "the stall timeout (the model is not ready), else 0", model, registry=r)

    def track(self, model) -> None:
        """Publish a model's in-flight and queue gauges (read when scraped)."""
        labels = (model.name, model.version)
        self.in_flight.labels(*labels).set_function(lambda: model.pending)
        self.queue_depth.labels(*labels).set_function(lambda: model.pending - model.running)
        self.stalled.labels(*labels).set_function(lambda: model.stalled)
        for counter in (self.success, self.inferences, self.executions, self.request_us,
                        self.queue_us, self.compute_us):
            counter.labels(*labels)

    def untrack(self, model) -> None:
        """Drop an unloaded version's gauges (its counters stay, as counters do)."""
        for gauge in (self.in_flight, self.queue_depth, self.stalled):
            try:
                gauge.remove(model.name, model.version)
            except KeyError:
                pass

    def unauthorized(self) -> None:
        self.requests.labels("", "401").inc()

    def answered(self, model, status: int, seconds: float) -> None:
        """Count an inference request to a known model (``model`` is a ServedModel)."""
        self.requests.labels(model.name, str(status)).inc()
        labels = (model.name, model.version)
        if status < 400:
            self.success.labels(*labels).inc()
        else:
            reason = REASONS.get(status, "internal" if status >= 500 else "invalid")
            self.failure.labels(*labels, reason).inc()
        self.request_us.labels(*labels).inc(seconds * 1e6)

    def unknown_model(self, status: int) -> None:
        # The label never carries the name a client sent: unknown names must not grow the series.
        self.requests.labels("", str(status)).inc()

    def executed(self, model, batch: int, queued: float, compute: float) -> None:
        labels = (model.name, model.version)
        self.inferences.labels(*labels).inc(batch)
        self.executions.labels(*labels).inc()
        self.queue_us.labels(*labels).inc(queued * 1e6)
        self.compute_us.labels(*labels).inc(compute * 1e6)
        self.compute_seconds.labels(*labels).observe(compute)
        self.batch_size.labels(*labels).observe(batch)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
