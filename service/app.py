"""The FastAPI application: ``uvicorn service.app:app`` serves it (contract).

The lifespan connects to Redis (``REDIS_URL``, or an embedded server under the data
dir), moves a legacy key layout if it finds one, joins the replicas and takes over
the models placed on this one (snapshot plus log), and starts the Redis health
monitor; at shutdown it leaves, hands every owned model over (what is queued applied,
a last snapshot, the lease released), and stops the embedded server.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from model.learner import OnlineLearner, resolve_device
from service import executors
from service.api.docs import mount_docs
from service.api.hot import HotRoutes
from service.api.limits import BodyLimitMiddleware, ContentTypeMiddleware
from service.api.main import include_routes
from service.api.openapi import install_openapi
from service.auth import Authenticator
from service.cluster.replica import Replica
from service.config import Settings, get_settings
from service.embedded import EmbeddedRedis
from service.errors import install_error_handlers
from service.registry import Registry
from service.store.connection import RedisHealth, connect, is_cluster, make_client, make_cluster_client
from service.store.migrate import migrate_legacy_layout
from service.telemetry import Telemetry, TelemetryMiddleware

logger = logging.getLogger("service")

DESCRIPTION = """Train neural networks online, one sample at a time, with Online Normalization.

Every learn is logged to Redis before it is applied and answered only once applied;
models come back after a restart from their latest snapshot plus the log after it.
Any number of replicas may share one Redis and key prefix: each model has one owner
at a time (a fenced lease), and any replica answers any endpoint.
With API keys configured, send `Authorization: Bearer <key>`.
"""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _device(settings: Settings) -> torch.device:
    device = resolve_device(settings.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ONLINENORM_DEVICE=cuda but torch sees no CUDA device")
    return device


async def _open_redis(settings: Settings, embedded: EmbeddedRedis | None) -> tuple[Redis, str]:
    """The client: ``REDIS_URL`` (a Redis Cluster if the server is a cluster node, or as
    ``REDIS_CLUSTER`` says), or the embedded server's socket."""
    timeout = settings.REDIS_TIMEOUT_SECONDS
    if embedded is not None:
        socket_path = await asyncio.to_thread(embedded.start)
        return make_client(None, socket_path, timeout), f"embedded ({settings.DATA_DIR})"
    assert settings.REDIS_URL is not None
    where = _redacted(settings.REDIS_URL)
    client = make_client(settings.REDIS_URL, None, timeout)
    await connect(client, settings.REDIS_CONNECT_ATTEMPTS, where)
    mode = settings.REDIS_CLUSTER
    if mode == "no" or (mode == "auto" and not await is_cluster(client)):
        return client, where
    await client.aclose()
    return make_cluster_client(settings.REDIS_URL, timeout), f"{where} (cluster)"


_WARM_UP_SPEC = {"name": "warm-up", "task": "regression", "input_shape": [1], "network": {"hidden": [1]}}


def _warm_up(device: torch.device) -> None:
    """Build and train a throwaway learner: the first one a process builds pays for
    imports that torch defers (``torch._dynamo``, seconds, on the first optimizer). Run
    in a worker thread from the start of start-up, beside the Redis connect and the
    models' recovery, it keeps that off the first create of a model."""
    try:
        OnlineLearner(_WARM_UP_SPEC, device).learn_one([0.0], 0.0)
    except Exception as exc:  # only an optimization
        logger.debug("warm-up failed: %s", exc)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.LOG_LEVEL.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings.warn_if_open()
    torch.set_num_threads(settings.TORCH_THREADS)
    # Each model's torch work runs in its own threads (service.executors); a shorter GIL
    # switch interval than Python's 5 ms keeps a Python-heavy step of one model from
    # holding up the event loop and the other models' threads.
    sys.setswitchinterval(min(sys.getswitchinterval(), executors.SWITCH_INTERVAL))
    device = _device(settings)
    warm_up = asyncio.create_task(asyncio.to_thread(_warm_up, device), name="warm-up")
    embedded = None if settings.REDIS_URL else EmbeddedRedis(settings.DATA_DIR)
    client, where = await _open_redis(settings, embedded)
    health = RedisHealth(client)
    registry = Registry(client, health, settings, app.state.telemetry, device)
    replica = Replica(client, health, settings, app.state.telemetry, registry)
    started = False
    try:
        await connect(client, settings.REDIS_CONNECT_ATTEMPTS, where)
        migrated = await migrate_legacy_layout(client, settings.KEY_PREFIX)
        if migrated:
            logger.warning("moved %d model(s) to the replicated key layout: %s", len(migrated), migrated)
        await replica.start()
        started = True
        health.start()
        # Ready means a create is answered at once too. With models, recovering them has
        # paid for the deferred imports already; without, this is when they are paid.
        await warm_up
        app.state.redis = client
        app.state.health = health
        app.state.registry = registry
        app.state.replica = replica
        logger.info(
            "replica %s serving %d model(s) (owning %d) on %s, Redis %s, key prefix %r",
            replica.id,
            len(registry.handles()),
            len(replica.owned()),
            device,
            where,
            settings.KEY_PREFIX,
        )
        yield
    finally:
        await warm_up  # a worker thread: it cannot be cancelled, and it ends on its own
        stopping = time.monotonic()
        if started:
            owned = len(replica.owned())
            await replica.stop()
            logger.info(
                "handed over %d model(s)%s in %.1f s",
                owned,
                " with final snapshots" if settings.SNAPSHOT_ON_SHUTDOWN else "",
                time.monotonic() - stopping,
            )
        await health.stop()
        await client.aclose()
        if embedded is not None:
            logger.info("stopping the embedded Redis (it flushes its append-only file)")
            await asyncio.to_thread(embedded.stop)
            logger.info("embedded Redis stopped (data in %s)", settings.DATA_DIR)
        logger.info("shut down in %.1f s", time.monotonic() - stopping)


class ServiceApp(FastAPI):
    """FastAPI, with the learn routes served by :class:`HotRoutes` ahead of its stack."""

    hot: HotRoutes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot.match(scope)
        if hot is not None:
            await self.hot.serve(scope, receive, send, *hot)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = ServiceApp(
        title="onlinenorm",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package's assets, not a CDN (service.api.docs)
        redoc_url=None,
    )
    telemetry = Telemetry()
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.authenticator = Authenticator(settings)
    app.hot = HotRoutes(app.state)
    install_error_handlers(app)
    include_routes(app)
    install_openapi(app)
    mount_docs(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(ContentTypeMiddleware)
    if settings.CORS_ORIGINS:  # closed unless origins are listed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Idempotent-Replayed", "Retry-After"],
        )
    app.add_middleware(TelemetryMiddleware, telemetry=telemetry)
    return app


app = create_app()
