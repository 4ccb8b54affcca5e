"""Settings from the environment (config.py) and the key schema (store/keys.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from service.config import Settings
from service.store import keys


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("ONLINENORM_KEY_PREFIX", "mine")
    monkeypatch.setenv("ONLINENORM_API_KEYS", '["key1", "key2"]')
    monkeypatch.setenv("ONLINENORM_READONLY_API_KEYS", "ro1, ro2")
    monkeypatch.setenv("ONLINENORM_SNAPSHOT_EVERY_STEPS", "50")
    monkeypatch.setenv("ONLINENORM_DEVICE", "cpu")
    monkeypatch.setenv("ONLINENORM_PORT", "9001")
    s = Settings()
    assert s.REDIS_URL == "redis://example:6379/2"
    assert s.KEY_PREFIX == "mine"
    assert s.API_KEYS == ["key1", "key2"]
    assert s.READONLY_API_KEYS == ["ro1", "ro2"]
    assert s.SNAPSHOT_EVERY_STEPS == 50
    assert s.PORT == 9001
    assert s.auth_enabled


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "ONLINENORM_KEY_PREFIX", "ONLINENORM_API_KEYS", "ONLINENORM_HOST"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.REDIS_URL is None  # embedded Redis
    assert s.KEY_PREFIX == "onlinenorm"
    assert s.HOST == "127.0.0.1" and s.host_is_loopback
    assert s.DEVICE == "auto"
    assert not s.auth_enabled


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(KEY_PREFIX="has space")
    with pytest.raises(ValidationError):
        Settings(DEVICE="tpu")
    with pytest.raises(ValidationError):
        Settings(API_KEYS=[""])


def test_key_schema() -> None:
    assert keys.catalog_key("p") == "p:catalog"
    assert keys.spec_key("p", "m") == "p:model:{m}:spec"
    assert keys.log_key("p", "m") == "p:model:{m}:log"
    assert keys.snapshot_key("p", "m") == "p:model:{m}:snapshot"
    assert keys.norm_key("p", "m", "blocks.0.1") == "p:model:{m}:norm:blocks.0.1"
    assert keys.stats_key("p", "m") == "p:model:{m}:stats"
    assert keys.lease_key("p", "m") == "p:model:{m}:lease"
    assert keys.legacy_models_key("p") == "p:models"
    assert keys.legacy_model_keys("p", "m", ["x"])["norm:x"] == "p:model:m:norm:x"


@pytest.mark.parametrize("name", ["m", "digits", "a.b-c_d", "Z" * 64])
def test_every_key_of_a_model_is_in_one_cluster_slot(name: str) -> None:
    """Redis Cluster runs a script or transaction only on keys of one slot."""
    slots = {key_slot(k.encode()) for k in keys.model_keys("onlinenorm", name, ["input_norm", "blocks.0.1"])}
    assert len(slots) == 1
