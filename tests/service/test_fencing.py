"""Leases and fenced writes against a real Redis (store/leases.py, store/fencing.py,
store/scripts.py): a paused owner's token is refused by Redis itself, however long it
slept, and a refused write changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from service.store import catalog, keys, leases, log, snapshots
from service.store.fencing import Fence, FencedError, FencedWrite
from service.store.leases import ModelGone
from tests.service.conftest import async_client

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster


def _run(redis_url: str, backend: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        client = async_client(redis_url, backend)
        try:
            await body(client)
        finally:
            await client.aclose()

    asyncio.run(main())


async def _model(client: Any, prefix: str, name: str = "m") -> str:
    snap = snapshots.Snapshot(b"state", 0, log.START_ID, 1.0, None, 1.0)
    incarnation = f"inc-{name}"
    assert await catalog.create_model(client, prefix, name, incarnation, b"{}", snap, ["input_norm"]) is None
    return incarnation


def test_each_acquisition_gets_a_new_token_and_holders_are_exclusive(
    redis_url: str, backend: str, prefix: str
) -> None:
    async def body(client: Any) -> None:
        inc = await _model(client, prefix)
        first = await leases.acquire(client, prefix, "m", inc, "r1", 10_000)
        assert isinstance(first, Fence) and first.token == f"{inc}:1"
        assert await leases.acquire(client, prefix, "m", inc, "r2", 10_000) == "r1"  # held
        assert await leases.holder(client, prefix, "m") == "r1"
        await leases.release(client, first)
        second = await leases.acquire(client, prefix, "m", inc, "r2", 10_000)
        assert isinstance(second, Fence) and second.epoch == 2
        with pytest.raises(ModelGone):
            await leases.acquire(client, prefix, "m", "another-incarnation", "r3", 10_000)

    _run(redis_url, backend, body)


def test_a_stale_token_is_refused_after_its_lease_expired(
    redis_url: str, backend: str, prefix: str, rds: redis.Redis
) -> None:
    """Kleppmann's case: the owner pauses past its lease, another takes the model, the
    first wakes up and writes. Redis refuses, whether the lease is free or taken."""

    async def body(client: Any) -> None:
        inc = await _model(client, prefix)
        stale = await leases.acquire(client, prefix, "m", inc, "r1", 200)
        assert isinstance(stale, Fence)
        await asyncio.sleep(0.4)  # "paused" past the lease

        def append(fence: Fence) -> FencedWrite:
            write = FencedWrite(fence)
            write.xadd(keys.log_key(prefix, "m"), log.learn_fields(b"[[[1],0]]", "one", None, "r", "q"))
            return write

        with pytest.raises(FencedError) as expired:
            await append(stale).run(client)
        assert expired.value.reason == "expired"
        assert await leases.renew(client, stale, 10_000) == "expired"
        fresh = await leases.acquire(client, prefix, "m", inc, "r2", 10_000)
        assert isinstance(fresh, Fence) and fresh.epoch > stale.epoch
        with pytest.raises(FencedError) as taken:
            await append(stale).run(client)
        assert taken.value.reason == "taken"
        assert await leases.renew(client, stale, 10_000) == "taken"
        with pytest.raises(FencedError):
            await leases.release(client, stale)  # nor can it release the new owner's lease
        assert rds.xlen(keys.log_key(prefix, "m")) == 0  # nothing of the stale writes landed
        replies = await append(fresh).run(client)
        assert len(replies) == 1 and rds.xlen(keys.log_key(prefix, "m")) == 1

    _run(redis_url, backend, body)


def test_a_fenced_write_is_all_or_nothing(
    redis_url: str, backend: str, prefix: str, rds: redis.Redis
) -> None:
    async def body(client: Any) -> None:
        inc = await _model(client, prefix)
        fence = await leases.acquire(client, prefix, "m", inc, "r1", 10_000)
        assert isinstance(fence, Fence)
        write = FencedWrite(fence)
        write.hset(keys.snapshot_key(prefix, "m"), {b"step": b"7"})
        write.xadd(keys.stats_key(prefix, "m"), {b"step": b"7"}, "MAXLEN", "~", 10)
        write.command("XRANGE", keys.log_key(prefix, "m"), "-", "+")
        replies = await write.run(client)
        assert replies[2] == []
        assert rds.hget(keys.snapshot_key(prefix, "m"), "step") == b"7"
        # The same commands under a token that lost: none of them runs.
        await leases.release(client, fence)
        again = FencedWrite(fence)
        again.hset(keys.snapshot_key(prefix, "m"), {b"step": b"8"})
        again.xadd(keys.stats_key(prefix, "m"), {b"step": b"8"})
        with pytest.raises(FencedError):
            await again.run(client)
        assert rds.hget(keys.snapshot_key(prefix, "m"), "step") == b"7"
        assert rds.xlen(keys.stats_key(prefix, "m")) == 1

    _run(redis_url, backend, body)


def test_writes_to_a_deleted_model_are_refused_as_gone(
    redis_url: str, backend: str, prefix: str, rds: redis.Redis
) -> None:
    """Deleting a model removes its lease too: its owner learns that it is gone, and an
    append from any replica is refused instead of recreating the model's keys."""

    async def body(client: Any) -> None:
        inc = await _model(client, prefix)
        fence = await leases.acquire(client, prefix, "m", inc, "r1", 10_000)
        assert isinstance(fence, Fence)
        assert await catalog.delete_model(client, prefix, "m", inc, ["input_norm"])
        write = FencedWrite(fence)
        write.hset(keys.snapshot_key(prefix, "m"), {b"step": b"1"})
        with pytest.raises(FencedError) as gone:
            await write.run(client)
        assert gone.value.reason == "gone"
        assert await leases.renew(client, fence, 10_000) == "gone"
        fields = log.learn_fields(b"[[[1],0]]", "one", None, "r2", "q")
        assert await log.append_remote(client, prefix, "m", inc, fields) is None
        assert not list(rds.scan_iter(match=f"{prefix}:model:*"))
        assert await catalog.list_models(client, prefix) == {}

    _run(redis_url, backend, body)


def test_a_create_cut_short_before_listing_is_finished_by_the_next(
    redis_url: str, backend: str, prefix: str
) -> None:
    """Create writes the model's keys, then lists it: if the listing never happened, the
    next create of the name lists the existing model (and answers that it exists)."""

    async def body(client: Any) -> None:
        inc = await _model(client, prefix)
        await client.hdel(keys.catalog_key(prefix), "m")  # as if the process died in between
        snap = snapshots.Snapshot(b"other", 0, log.START_ID, 2.0, None, 2.0)
        existing = await catalog.create_model(client, prefix, "m", "inc-2", b"{}", snap, ["input_norm"])
        assert existing == inc
        assert await catalog.list_models(client, prefix) == {"m": inc}
        # A stale listing (a delete cut short) never hides the newer incarnation.
        await catalog.unlist(client, prefix, "m", "some-older-incarnation")
        assert await catalog.list_models(client, prefix) == {"m": inc}

    _run(redis_url, backend, body)
