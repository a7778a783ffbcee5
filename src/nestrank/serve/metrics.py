"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nestrank.serve.scheduler import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Per-route request counts and latency, per-model queue, batch and drop figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nestrank_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_seconds = Histogram("nestrank_request_seconds", "Request latency by route", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("nestrank_queue_seconds", "Time a request waited before its first batch",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("nestrank_batch_seconds", "Forward time of one batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_items = Histogram("nestrank_batch_items", "Pairs (or texts) per batch", ["model"],
                                     buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Counter("nestrank_batch_padded_tokens", "Padded tokens run", ["model"], registry=r)
        self.items = Counter("nestrank_items_computed", "Pairs (or texts) computed", ["model"], registry=r)
        self.dropped = Counter("nestrank_items_dropped", "Queued items dropped before running", ["model", "reason"],
                               registry=r)
        self.rejected = Counter("nestrank_requests_rejected", "Requests refused by admission (429)", ["model"],
                                registry=r)
        self.queued_tokens = Gauge("nestrank_queued_tokens", "Tokens waiting", ["model"], registry=r)
        self.ready = Gauge("nestrank_ready", "1 once every model is loaded and warmed", registry=r)

    def observe_batch(self, model: str, stats: BatchStats) -> None:
        """Record one batch (called on the worker thread)."""
        self.batch_seconds.labels(model).observe(stats.seconds)
        self.batch_items.labels(model).observe(stats.items)
        self.batch_tokens.labels(model).inc(stats.padded_tokens)
        self.items.labels(model).inc(stats.items)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
