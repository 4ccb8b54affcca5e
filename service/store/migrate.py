"""Moving the layout before replicas to today's, at start-up, losing nothing.

Before replicas, models were listed in the set ``{p}:models`` and their keys had no
hash tag (``{p}:model:<name>:log``). Each such model is copied into its new keys (the
log and the stats history with their entry ids, so snapshots, rollback records and
``Last-Event-ID`` cursors stay valid; the snapshot as it was, its inline
Idempotency-Key records moved to the records hash), listed
in the catalog, and only then are its old keys deleted. A crash part-way leaves the
old keys in place and the new ones unlisted, and the next start simply starts over.
One replica at a time migrates (a lock key); the others wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
from redis.asyncio import Redis

from model.learner import OnlineLearner
from model.spec import ModelSpec
from service.idempotency import LEGACY_FINGERPRINT, Record
from service.live import Outcome
from service.store import catalog, keys
from service.store.scripts import scripts
from service.store.snapshots import SNAPSHOT_FORMAT

logger = logging.getLogger(__name__)

_LOCK_MS = 120_000
_CHUNK = 1000


async def migrate_legacy_layout(redis: Redis, prefix: str) -> list[str]:
    """Migrate every model of the legacy layout; returns their names."""
    legacy = keys.legacy_models_key(prefix)
    if not await redis.exists(legacy):
        return []
    lock = keys.migration_lock_key(prefix)
    token = uuid.uuid4().hex
    while not await redis.set(lock, token, nx=True, px=_LOCK_MS):
        await asyncio.sleep(0.2)  # another replica migrates: wait for it, then check again
        if not await redis.exists(legacy):
            return []
    try:
        names = sorted(n.decode() for n in await redis.smembers(legacy))
        for name in names:
            await _migrate_model(redis, prefix, name)
            await redis.srem(legacy, name)
        return names
    finally:
        if await redis.get(lock) == token.encode():
            await redis.delete(lock)


async def _migrate_model(redis: Redis, prefix: str, name: str) -> None:
    spec_json = await redis.get(f"{prefix}:model:{name}:spec")
    if spec_json is None:
        logger.warning("legacy model %s has no spec: dropped from the old listing", name)
        return
    layers = OnlineLearner(ModelSpec.from_stored(spec_json)).layer_names()
    old = keys.legacy_model_keys(prefix, name, layers)
    if await catalog.listed_incarnation(redis, prefix, name) is None:
        snapshot = await redis.hgetall(old["snapshot"])
        if not snapshot:
            logger.warning("legacy model %s has no snapshot: dropped from the old listing", name)
            return
        await redis.delete(*keys.model_keys(prefix, name, layers))  # a migration cut short
        incarnation = uuid.uuid4().hex
        created_at = snapshot.get(b"created_at", b"0").decode()
        legacy_records = snapshot.pop(b"idempotency", b"[]")
        snapshot[b"format"] = str(SNAPSHOT_FORMAT).encode()
        args: list[bytes | str] = [incarnation, spec_json, orjson.dumps(layers), created_at]
        for k, v in snapshot.items():
            args.extend((k, v))
        await scripts(redis).create(keys=keys.model_keys(prefix, name, layers), args=args)
        records = _records(legacy_records)
        if records:
            await redis.hset(keys.idempotency_key(prefix, name), mapping=records)  # type: ignore[arg-type]
        await _copy_stream(redis, old["log"], keys.log_key(prefix, name))
        await _copy_stream(redis, old["stats"], keys.stats_key(prefix, name))
        for layer in layers:
            fields = await redis.hgetall(old[f"norm:{layer}"])
            if fields:
                await redis.hset(keys.norm_key(prefix, name, layer), mapping=fields)  # type: ignore[arg-type]
        await redis.hset(keys.catalog_key(prefix), name, incarnation)
        logger.warning("model %s: moved to the replicated key layout", name)
    await redis.delete(*old.values())


def _records(legacy: bytes) -> dict[bytes, bytes]:
    """The inline records of an old snapshot (``[[key, fingerprint, outcome], ...]``, no
    times) as today's, counted as made now: remembered for a full window from the
    migration on. Their fingerprints were computed without the endpoint kind."""
    now_id = f"{int(time.time() * 1000)}-0"
    out: dict[bytes, bytes] = {}
    for key, fp, outcome in orjson.loads(legacy or b"[]"):
        out[key.encode()] = Record(now_id, LEGACY_FINGERPRINT + fp, Outcome.from_json(outcome)).pack()
    return out


async def _copy_stream(redis: Redis, source: str, target: str) -> None:
    cursor = "-"
    while True:
        chunk = await redis.xrange(source, min=cursor, max="+", count=_CHUNK)
        for entry_id, fields in chunk:
            await redis.xadd(target, fields, id=entry_id)
        if len(chunk) < _CHUNK:
            return
        cursor = f"({chunk[-1][0].decode()}"
