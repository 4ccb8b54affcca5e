"""All service settings, read once from the environment (``REDIS_URL`` and ``ONLINENORM_*``)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.store.keys import REPLICA_ID_PATTERN

logger = logging.getLogger(__name__)

_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ORIGIN_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


class Settings(BaseSettings):
    """Service configuration. Every field is ``ONLINENORM_<FIELD>`` in the environment,
    except ``REDIS_URL``; lists (API keys) are JSON arrays or comma-separated."""

    model_config = SettingsConfigDict(env_prefix="ONLINENORM_", extra="ignore", frozen=True)

    REDIS_URL: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "ONLINENORM_REDIS_URL"),
        description="Redis server to use; unset: start an embedded one under DATA_DIR",
    )
    KEY_PREFIX: str = Field("onlinenorm", pattern=_KEY_PREFIX_PATTERN)
    DATA_DIR: Path = Field(Path("data"), description="where the embedded Redis persists (append-only file)")

    API_KEYS: Annotated[list[str], NoDecode] = Field(default_factory=list, description="read-write keys")
    READONLY_API_KEYS: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="keys that may predict and read, not learn/create/delete"
    )
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins (scheme://host[:port]) allowed to call the API cross-site; "
        "empty (the default): none, CORS stays closed",
    )

    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=0, le=65535)
    ACCESS_LOG: bool = Field(False, description="python -m service: log every request (uvicorn's access log)")
    LOG_LEVEL: Literal["critical", "error", "warning", "info", "debug"] = "info"
    DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    TORCH_THREADS: int = Field(
        1,
        ge=1,
        description="torch intra-op threads. One step is a batch of one: extra threads barely help, "
        "and on cores shared with the HTTP loop their spin-waits can slow steps down many times",
    )

    MAX_BODY_BYTES: int = Field(16 * 1024 * 1024, ge=1024)
    MAX_BATCH_SAMPLES: int = Field(1000, ge=1)
    MAX_GROUP_SAMPLES: int = Field(1024, ge=1, description="most samples one group commit logs and applies")

    SNAPSHOT_EVERY_STEPS: int = Field(1000, ge=1)
    SNAPSHOT_EVERY_SECONDS: float = Field(30.0, gt=0)
    SNAPSHOT_ON_SHUTDOWN: bool = Field(True, description="a last snapshot of every model at shutdown")
    STATS_EVERY_STEPS: int = Field(100, ge=1)
    STATS_EVERY_SECONDS: float = Field(5.0, gt=0)
    STATS_HISTORY: int = Field(1000, ge=1, description="approximate length cap of each model's stats stream")
    STREAM_KEEPALIVE_SECONDS: float = Field(
        15.0, gt=0, description="stats event streams (SSE): a keep-alive comment this often"
    )
    IDEMPOTENCY_SECONDS: float = Field(
        600.0,
        ge=0,
        description="how long a model remembers an Idempotency-Key (0: not at all); longer than any "
        "client's retries",
    )
    IDEMPOTENCY_MAX_BYTES: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="per model: most bytes of remembered outcomes; past it the oldest are forgotten early",
    )
    MAX_MODEL_BYTES: int = Field(
        4 * 1024**3,
        ge=1024,
        description="largest model accepted at create: weights, gradients, optimizer state and one "
        "step's activations",
    )

    LABEL_TTL_SECONDS: float = Field(
        86400.0,
        gt=0,
        description="how long a prediction made with label_later waits for its label (404 after)",
    )
    MAX_PENDING_LABELS: int = Field(
        100_000,
        ge=1,
        description="per model: most predictions waiting for a label; past it the oldest expire early",
    )
    MAX_PENDING_STREAM_LABELS: int = Field(
        10_000,
        ge=1,
        description="stateful rnn, per model: most stream steps waiting for a label (each keeps its "
        "window); past it the oldest is evicted",
    )
    STREAM_TTL_SECONDS: float = Field(
        7 * 86400.0,
        gt=0,
        description="stateful rnn: a stream idle this long is forgotten (its next step starts afresh)",
    )
    MAX_STREAMS: int = Field(
        10_000,
        ge=1,
        description="stateful rnn, per model: most live streams; a new stream past it evicts the "
        "longest idle one",
    )

    REPLICA_ID: str | None = Field(
        None,
        pattern=REPLICA_ID_PATTERN,
        description="this process's name among the replicas; default host:pid",
    )
    LEASE_SECONDS: float = Field(
        10.0,
        ge=0.5,
        description="how long a model's owner holds it without renewing (renewed every third of it): "
        "a dead owner's models move after about this long",
    )
    REMOTE_TIMEOUT_SECONDS: float = Field(
        30.0,
        gt=0,
        description="how long a replica waits for a model's owner to apply a learn it handed over "
        "(504 after, the learn stays logged); longer than a lease plus a recovery",
    )
    FOLLOWER_STALENESS_SECONDS: float = Field(
        1.0,
        ge=0,
        description="a replica that does not own a model predicts from a copy at most this old "
        "(0: always the owner's latest state)",
    )
    REDIS_CLUSTER: Literal["auto", "yes", "no"] = Field(
        "auto", description="talk to a Redis Cluster; auto: ask the server (INFO cluster)"
    )

    REDIS_TIMEOUT_SECONDS: float = Field(5.0, gt=0)
    REDIS_CONNECT_ATTEMPTS: int = Field(5, ge=1)

    @field_validator("API_KEYS", "READONLY_API_KEYS", "CORS_ORIGINS", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """Accept a JSON array (``'["k1","k2"]'``) or a comma-separated string."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("API_KEYS", "READONLY_API_KEYS")
    @classmethod
    def _non_empty_keys(cls, keys: list[str]) -> list[str]:
        if any(not k for k in keys):
            raise ValueError("API keys must not be empty")
        return keys

    @field_validator("CORS_ORIGINS")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        """An explicit allow-list: exact origins, never ``*``."""
        for origin in origins:
            if not _ORIGIN_RE.match(origin):
                raise ValueError(
                    f"CORS origin {origin!r} is not scheme://host[:port] (list each origin; '*' is refused)"
                )
        return origins

    @property
    def replica_id(self) -> str:
        """``REPLICA_ID``, or ``<host>:<pid>``: unique among processes, new at each restart."""
        return self.REPLICA_ID or default_replica_id()

    @property
    def auth_enabled(self) -> bool:
        return bool(self.API_KEYS or self.READONLY_API_KEYS)

    @property
    def host_is_loopback(self) -> bool:
        if self.HOST == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.HOST).is_loopback
        except ValueError:
            return False

    def warn_if_open(self) -> None:
        """Say loudly that anyone who can reach the port may train and delete models."""
        if self.auth_enabled:
            return
        where = "loopback only" if self.host_is_loopback else f"{self.HOST} (NOT loopback)"
        logger.warning(
            "no API keys configured (ONLINENORM_API_KEYS): the service is OPEN to anyone who can "
            "reach it, bound to %s",
            where,
        )


def default_replica_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    return f"{host}:{os.getpid()}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, from the environment, read once."""
    return Settings()
