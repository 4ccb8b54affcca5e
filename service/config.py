"""All service settings, read once from the environment (``REDIS_URL`` and ``ONLINENORM_*``)."""

from __future__ import annotations

import ipaddress
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


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
    IDEMPOTENCY_KEYS: int = Field(
        1024, ge=0, description="per model: how many recent Idempotency-Keys are remembered"
    )

    REDIS_TIMEOUT_SECONDS: float = Field(5.0, gt=0)
    REDIS_CONNECT_ATTEMPTS: int = Field(5, ge=1)

    @field_validator("API_KEYS", "READONLY_API_KEYS", mode="before")
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


@lru_cache
def get_settings() -> Settings:
    """The process's settings, from the environment, read once."""
    return Settings()
