"""Prometheus metrics. Labels come from small fixed sets (route templates, methods,
status codes, outcomes), never from raw paths; the per-model series
(:mod:`service.watch_telemetry`) carry the names of existing models only and are
removed with the model, so series stay bounded."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.watch_telemetry import WatchMetrics

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Telemetry:
    """The service's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "onlinenorm_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "onlinenorm_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.samples_learned = Counter("onlinenorm_samples_learned", "samples applied (steps)", registry=r)
        self.nonfinite_steps = Counter(
            "onlinenorm_nonfinite_steps", "steps rolled back for a non-finite loss or gradient", registry=r
        )
        self.group_samples = Histogram(
            "onlinenorm_group_commit_samples",
            "samples logged per group commit",
            buckets=_GROUP_BUCKETS,
            registry=r,
        )
        self.log_append_seconds = Histogram(
            "onlinenorm_log_append_seconds",
            "write-ahead log round trip",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "onlinenorm_apply_seconds", "time to apply one group commit", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.learn_unavailable = Counter(
            "onlinenorm_learn_unavailable", "learn requests refused because Redis was unreachable", registry=r
        )
        self.idempotent_replays = Counter(
            "onlinenorm_idempotent_replays",
            "learn retries answered from an Idempotency-Key record",
            registry=r,
        )
        self.snapshots = Counter("onlinenorm_snapshots", "snapshot writes", ["result"], registry=r)
        self.stats_publishes = Counter(
            "onlinenorm_stats_publishes", "normalizer stats publishes", ["result"], registry=r
        )
        self.models = Gauge("onlinenorm_models", "models this replica serves (owned or followed)", registry=r)
        self.redis_up = Gauge(
            "onlinenorm_redis_up", "1 when Redis was reachable at the last check", registry=r
        )
        self.redis_writable = Gauge(
            "onlinenorm_redis_writable",
            "1 when Redis accepted writes at the last check (0: out of memory, or unreachable)",
            registry=r,
        )
        self.replicas_live = Gauge(
            "onlinenorm_replicas_live", "live replicas, as this one sees them", registry=r
        )
        self.models_owned = Gauge(
            "onlinenorm_models_owned", "models whose steps this replica applies", registry=r
        )
        self.lease_acquisitions = Counter(
            "onlinenorm_lease_acquisitions", "model leases taken by this replica", registry=r
        )
        self.lease_losses = Counter(
            "onlinenorm_lease_losses",
            "model leases this replica lost while it owned the model (taken, expired, gone)",
            ["reason"],
            registry=r,
        )
        self.redis_data_loss = Counter(
            "onlinenorm_redis_data_loss",
            "times this replica saw Redis lose data (its instance marker or a model's keys vanished)",
            registry=r,
        )
        self.models_repersisted = Counter(
            "onlinenorm_models_repersisted",
            "models re-persisted from memory after Redis lost them",
            registry=r,
        )
        self.idempotency_evicted = Counter(
            "onlinenorm_idempotency_evicted",
            "Idempotency-Key records forgotten before their window ended (the byte bound)",
            registry=r,
        )
        self.watch = WatchMetrics(r)


class TelemetryMiddleware:
    """Counts and times every HTTP request by its route template (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.telemetry.requests.labels(method, template, str(status)).inc()
            self.telemetry.request_seconds.labels(template).observe(time.perf_counter() - start)
