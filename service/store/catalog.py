"""Which models exist: the ``{p}:models`` set and each model's spec, created and
deleted together with the model's other keys in one transaction."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import WatchError

from service.store import keys
from service.store.snapshots import Snapshot


async def create_model(
    redis: Redis, prefix: str, name: str, spec_json: bytes, snapshot: Snapshot, layers: list[str]
) -> bool:
    """Register a model with its initial snapshot; False if the name is taken.

    WATCH makes the existence check and the writes one atomic step, and any leftover
    keys of the name (a log, stats) are cleared so the new model starts empty.
    """
    spec_key = keys.spec_key(prefix, name)
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(spec_key, keys.models_key(prefix))
            if await pipe.exists(spec_key) or await pipe.sismember(keys.models_key(prefix), name):
                return False
            pipe.multi()
            pipe.delete(*keys.model_keys(prefix, name, layers))
            pipe.set(spec_key, spec_json)
            pipe.hset(keys.snapshot_key(prefix, name), mapping=snapshot.fields())  # type: ignore[arg-type]
            pipe.sadd(keys.models_key(prefix), name)
            await pipe.execute()
        except WatchError:
            return False
    return True


async def delete_model(redis: Redis, prefix: str, name: str, layers: list[str]) -> None:
    """Remove the model's name and every key it owns, atomically."""
    pipe = redis.pipeline(transaction=True)
    pipe.delete(*keys.model_keys(prefix, name, layers))
    pipe.srem(keys.models_key(prefix), name)
    await pipe.execute()


async def list_names(redis: Redis, prefix: str) -> list[str]:
    return sorted(n.decode() for n in await redis.smembers(keys.models_key(prefix)))


async def read_spec(redis: Redis, prefix: str, name: str) -> bytes | None:
    return await redis.get(keys.spec_key(prefix, name))
