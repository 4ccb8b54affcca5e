"""The service's Redis client holds a blocking read open per owned model (its bell) and
per waited-on model (its results): well over a hundred at once must not be refused."""

from __future__ import annotations

import asyncio

from service.store.connection import make_client


def test_hundreds_of_blocking_reads_at_once(redis_url: str, prefix: str, backend: str) -> None:
    if backend != "standalone":  # the cluster client had its own bound all along
        return

    async def run() -> list[object]:
        client = make_client(redis_url, None, timeout=5.0)
        try:  # 150 > redis-py's default pool of 100: that default answered "Too many connections"
            reads = [client.blpop([f"{prefix}:bell-{i}"], timeout=0.2) for i in range(150)]
            return await asyncio.gather(*reads)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [None] * 150
