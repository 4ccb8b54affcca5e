"""Which models exist. Each model's own keys (meta, spec, snapshot...) are created and
deleted atomically in its slot; the catalog hash ``{p}:catalog`` lists it by name,
with the *incarnation* id of the keys it means.

Creating and listing are two steps (a Redis Cluster cannot make them one), ordered so a
crash between them never leaves a ghost: a model is created first and listed second
(a created but unlisted model is finished by the next create of its name), and it is
deleted first and unlisted second, by compare-and-delete on the incarnation, so a
late unlisting can never hide a newer model of the same name.
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import scripts
from service.store.snapshots import Snapshot


async def create_model(
    redis: Redis,
    prefix: str,
    name: str,
    incarnation: str,
    spec_json: bytes,
    snapshot: Snapshot,
    layers: list[str],
) -> str | None:
    """Create and list a model. Returns None when created, else the incarnation that
    already holds the name (which is listed, in case its own create was cut short)."""
    args: list[bytes | str] = [incarnation, spec_json, orjson.dumps(layers), repr(snapshot.created_at)]
    for k, v in snapshot.fields().items():
        args.extend((k, v))
    existing = await scripts(redis).create(keys=keys.model_keys(prefix, name, layers), args=args)
    if existing is not None:
        existing = existing.decode()
        if await listed_incarnation(redis, prefix, name) != existing:
            await redis.hset(keys.catalog_key(prefix), name, existing)
        return existing
    await redis.hset(keys.catalog_key(prefix), name, incarnation)
    return None


async def delete_model(redis: Redis, prefix: str, name: str, incarnation: str, layers: list[str]) -> bool:
    """Delete every key of this incarnation, then unlist it. False if it was already gone."""
    deleted = await scripts(redis).delete(keys=keys.model_keys(prefix, name, layers), args=[incarnation])
    await unlist(redis, prefix, name, incarnation)
    return bool(deleted)


async def unlist(redis: Redis, prefix: str, name: str, incarnation: str) -> None:
    await scripts(redis).unlist(keys=[keys.catalog_key(prefix)], args=[name, incarnation])


async def list_models(redis: Redis, prefix: str) -> dict[str, str]:
    """Model name -> incarnation."""
    raw = await redis.hgetall(keys.catalog_key(prefix))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def listed_incarnation(redis: Redis, prefix: str, name: str) -> str | None:
    raw = await redis.hget(keys.catalog_key(prefix), name)
    return raw.decode() if raw is not None else None


async def read_meta(redis: Redis, prefix: str, name: str) -> dict[str, str]:
    """``inc``, ``epoch``, ``layers`` (JSON), ``created_at``; empty if the model is gone."""
    raw = await redis.hgetall(keys.meta_key(prefix, name))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def read_spec(redis: Redis, prefix: str, name: str) -> bytes | None:
    return await redis.get(keys.spec_key(prefix, name))
