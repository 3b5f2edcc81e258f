"""Prometheus metrics for one node, in a registry of its own (no global state)."""

from __future__ import annotations

import gc
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._children: dict[tuple[Counter, str], Counter] = {}
        self.connections = Gauge("yanzi_connections", "Open WebSocket sessions", registry=r)
        self.frames_in = Counter(
            "yanzi_frames_in_total", "Client frames received", ["type"], registry=r
        )
        self.frames_out = Counter("yanzi_frames_out_total", "Frames sent to clients", registry=r)
        self.sends = Counter(
            "yanzi_sends_total",
            "New ops this node accepted from its clients (WebSocket, POST /v1/ops, /v1/direct);"
            " retried cmids are not counted again",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "yanzi_deliveries_total", "Live op frames queued to sessions", registry=r
        )
        self.notices = Counter(
            "yanzi_notice_deliveries_total",
            "Read, typing and presence frames queued to sessions",
            registry=r,
        )
        self.ack_latency = Histogram(
            "yanzi_ack_latency_seconds",
            "From a send (frame or POST /v1/ops) to its durable ack",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "yanzi_errors_total", "Errors answered to clients", ["code"], registry=r
        )
        self.commit_batch = Histogram(
            "yanzi_commit_batch_size",
            "Write batches per LMDB commit",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "yanzi_commit_seconds",
            "Duration of one LMDB group commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_consumers = Counter(
            "yanzi_slow_consumer_closes_total", "Sessions closed for a full send queue", registry=r
        )
        self.lmdb_size = Gauge("yanzi_lmdb_size_bytes", "Size of the LMDB data file", registry=r)
        self.ops_stored = Gauge("yanzi_ops_stored", "Ops held in memory logs", registry=r)
        self.conversations = Gauge("yanzi_conversations", "Conversations on this node", registry=r)
        self.gc_frozen = Gauge(
            "yanzi_gc_frozen_objects",
            "Objects in the collector's permanent generation (node/gc_policy.py)",
            registry=r,
        )
        self.gc_frozen.set_function(gc.get_freeze_count)

    def frame_in(self, kind: str) -> None:
        self._child(self.frames_in, kind).inc()

    def send(self, kind: str) -> None:
        self._child(self.sends, kind).inc()

    def _child(self, counter: Counter, label: str) -> Counter:
        # labels() resolves (and validates) the label on every call: a few µs per frame on the
        # hot path. Label values here are a small fixed set (frame types, op kinds).
        key = (counter, label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        return child

    def on_batch(self, batch_size: int, seconds: float) -> None:
        self.commit_batch.observe(batch_size)
        self.commit_seconds.observe(seconds)

    def track(self, gauge: Gauge, fn: Callable[[], float]) -> None:
        gauge.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
