"""The FastAPI application: ``uvicorn service.app:app`` serves it (contract).

The lifespan connects to Redis (``REDIS_URL``, or an embedded server under the data
dir), recovers every model from its snapshot and log, starts the writers and the
Redis health monitor; at shutdown it applies what is queued, writes a last snapshot
of each model, and stops the embedded server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import torch
from fastapi import FastAPI

from model.learner import resolve_device
from service.api.limits import BodyLimitMiddleware
from service.api.main import include_routes
from service.auth import Authenticator
from service.config import Settings, get_settings
from service.embedded import EmbeddedRedis
from service.errors import install_error_handlers
from service.registry import Registry
from service.store.connection import RedisHealth, connect, make_client
from service.telemetry import Telemetry, TelemetryMiddleware

logger = logging.getLogger("service")

DESCRIPTION = """Train neural networks online, one sample at a time, with Online Normalization.

Every learn is logged to Redis before it is applied and answered only once applied;
models come back after a restart from their latest snapshot plus the log after it.
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.LOG_LEVEL.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings.warn_if_open()
    torch.set_num_threads(settings.TORCH_THREADS)
    device = _device(settings)
    embedded: EmbeddedRedis | None = None
    if settings.REDIS_URL:
        client = make_client(settings.REDIS_URL, None, settings.REDIS_TIMEOUT_SECONDS)
        where = _redacted(settings.REDIS_URL)
    else:
        embedded = EmbeddedRedis(settings.DATA_DIR)
        socket_path = await asyncio.to_thread(embedded.start)
        client = make_client(None, socket_path, settings.REDIS_TIMEOUT_SECONDS)
        where = f"embedded ({settings.DATA_DIR})"
    health = RedisHealth(client)
    registry = Registry(client, health, settings, app.state.telemetry, device)
    try:
        await connect(client, settings.REDIS_CONNECT_ATTEMPTS, where)
        await registry.load_all()
        health.start()
        app.state.redis = client
        app.state.health = health
        app.state.registry = registry
        logger.info(
            "serving %d model(s) on %s, Redis %s, key prefix %r",
            len(registry.handles()),
            device,
            where,
            settings.KEY_PREFIX,
        )
        yield
    finally:
        await registry.close()
        await health.stop()
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="onlinenorm",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    telemetry = Telemetry()
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.authenticator = Authenticator(settings)
    install_error_handlers(app)
    include_routes(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(TelemetryMiddleware, telemetry=telemetry)
    return app


app = create_app()
