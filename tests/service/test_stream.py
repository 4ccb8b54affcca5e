"""GET /v1/models/{name}/stats/stream (routes/stream.py): Server-Sent Events fed from
the stats stream in real Redis with XREAD BLOCK, read by a real HTTP client (httpx
streaming) from real uvicorn servers."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.cluster.placement import assign
from service.config import Settings
from service.store import keys
from service.store.stats_history import decode_entry
from tests.service.conftest import create, samples, spec
from tests.service.servers import ProcessServer, RedisProcess, ThreadServer, wait_for
from tests.service.sse import BackgroundLearner, SSEReader

pytestmark = pytest.mark.cluster  # also against a real Redis Cluster

STREAM = "/v1/models/m/stats/stream"
READ_TIMEOUT = httpx.Timeout(10.0)  # every wait for an event is bounded: a test fails, never hangs


@pytest.fixture
def every_step(make_settings: Callable[..., Settings]) -> Iterator[ThreadServer]:
    """A server that publishes stats after every learn request."""
    with ThreadServer(make_settings(STATS_EVERY_STEPS=1)) as srv:
        yield srv


def stats_ids(rds: redis.Redis, prefix: str, name: str = "m") -> list[str]:
    return [i.decode() for i, _ in rds.xrange(keys.stats_key(prefix, name))]


def learn(client: httpx.Client, n: int, seed: int = 0) -> None:
    for s in samples(n, seed=seed):
        assert client.post("/v1/models/m/learn", json=s).status_code == 200


def open_streams(server: ThreadServer) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return float(re.search(r"^onlinenorm_stats_streams (\S+)$", text, re.M).group(1))


def test_one_event_per_published_update_while_samples_are_learned(
    every_step: ThreadServer, rds: redis.Redis, prefix: str
) -> None:
    with every_step.client() as c:
        create(c, spec())
    with (
        httpx.Client(base_url=every_step.url, timeout=READ_TIMEOUT) as client,
        client.stream("GET", STREAM) as response,
    ):
        reader = SSEReader(response)
        with BackgroundLearner(every_step.url, "m") as learner:
            events = reader.events(8)
            assert learner.running  # the events arrived while samples were being learned
        assert not learner.errors
    assert reader.retry == 2000
    assert [e.event for e in events] == ["stats"] * 8
    steps = [e.json()["step"] for e in events]
    assert steps == sorted(steps) and len(set(steps)) == 8
    # Each event is one stats stream entry, in order, none skipped: id = the Redis entry id.
    ids = stats_ids(rds, prefix)
    first = ids.index(events[0].id)
    assert [e.id for e in events] == ids[first : first + 8]
    entries = dict(rds.xrange(keys.stats_key(prefix, "m")))
    for event in events:
        entry = decode_entry((event.id.encode(), entries[event.id.encode()]))
        assert event.json() == entry and entry["id"] == event.id
        assert entry["metrics"]["samples_seen"] == entry["step"] and entry["layers"]


def test_last_event_id_resumes_right_after_the_last_seen_entry(
    every_step: ThreadServer, rds: redis.Redis, prefix: str
) -> None:
    with every_step.client() as c:
        create(c, spec())
        learn(c, 6)
        wait_for(lambda: len(stats_ids(rds, prefix)) == 6, 10, "6 stats entries")
        ids = stats_ids(rds, prefix)
        with httpx.Client(base_url=every_step.url, timeout=READ_TIMEOUT) as client:
            # A first connection: reads three events, then the connection drops.
            with client.stream("GET", STREAM, params={"after": "0-0"}) as response:
                seen = SSEReader(response).events(3)
            assert [e.id for e in seen] == ids[:3]
            # The reconnect sends the last id seen: exactly the entries after it, then new ones.
            headers = {"Last-Event-ID": seen[-1].id}
            with client.stream("GET", STREAM, headers=headers, params={"after": "0-0"}) as response:
                reader = SSEReader(response)
                assert [e.id for e in reader.events(3)] == ids[3:6]
                learn(c, 1, seed=1)
                new = reader.next_event()
            assert new.id == stats_ids(rds, prefix)[6] and new.json()["step"] == 7
            # `after` alone (a first connection that already has the history up to an id).
            with client.stream("GET", STREAM, params={"after": ids[4]}) as response:
                assert [e.id for e in SSEReader(response).events(2)] == [ids[5], new.id]
            # Neither: from now on only.
            with client.stream("GET", STREAM) as response:
                reader = SSEReader(response)
                learn(c, 1, seed=2)
                assert reader.next_event().json()["step"] == 8


def test_keep_alive_comments_while_idle(make_settings: Callable[..., Settings]) -> None:
    with ThreadServer(make_settings(STREAM_KEEPALIVE_SECONDS=0.2)) as srv, srv.client() as c:
        create(c, spec())
        started = time.monotonic()
        with c.stream("GET", STREAM) as response:
            comments = SSEReader(response).wait_for_comments(4)
        assert time.monotonic() - started < 5
        assert comments[0] == "stats of model m"
        assert all(text.startswith("ping") for text in comments[1:])


def test_stream_refusals(every_step: ThreadServer) -> None:
    with every_step.client() as c:
        create(c, spec())
        assert c.get("/v1/models/nope/stats/stream").status_code == 404
        assert c.get("/v1/models/bad%20name/stats/stream").status_code == 422
        for headers, params in (
            ({"Last-Event-ID": "yesterday"}, {}),
            ({}, {"after": "12"}),
            ({}, {"after": "\u0661-\u0660"}),
            ({"Last-Event-ID": f"1-{2**64}"}, {}),
        ):
            r = c.get(STREAM, headers=headers, params=params)
            assert r.status_code == 422 and "entry id" in r.json()["detail"]


def test_access_token_is_accepted_on_the_stream_only(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(API_KEYS=["writer-key"], READONLY_API_KEYS=["reader-key"])
    with ThreadServer(settings) as srv:
        with srv.client(headers={"Authorization": "Bearer writer-key"}) as writer:
            create(writer, spec())
        with httpx.Client(base_url=srv.url, timeout=READ_TIMEOUT) as anon:
            assert anon.get(STREAM).status_code == 401
            assert anon.get(STREAM, params={"access_token": "wrong"}).status_code == 401
            for path in ("/v1/models/m/stats", "/v1/models/m/stats/history", "/v1/models/m"):
                assert anon.get(path, params={"access_token": "reader-key"}).status_code == 401, path
            with anon.stream("GET", STREAM, params={"access_token": "reader-key"}) as response:
                assert SSEReader(response).wait_for_comments(1) == ["stats of model m"]
            headers = {"Authorization": "Bearer reader-key"}
            with anon.stream("GET", STREAM, headers=headers) as response:
                assert response.status_code == 200
            # A wrong header is not rescued by a right access_token.
            headers = {"Authorization": "Bearer wrong"}
            assert anon.get(STREAM, headers=headers, params={"access_token": "reader-key"}).status_code == 401


def test_stream_ends_on_client_disconnect_and_on_model_deletion(every_step: ThreadServer) -> None:
    with every_step.client() as c:
        create(c, spec())
        with (
            httpx.Client(base_url=every_step.url, timeout=READ_TIMEOUT) as client,
            client.stream("GET", STREAM) as response,
        ):
            reader = SSEReader(response)  # keep it: a dropped iterator closes the connection
            reader.wait_for_comments(1)
            assert open_streams(every_step) == 1
        wait_for(lambda: open_streams(every_step) == 0, 10, "the generator to end after a disconnect")
        with (
            httpx.Client(base_url=every_step.url, timeout=READ_TIMEOUT) as client,
            client.stream("GET", STREAM) as response,
        ):
            reader = SSEReader(response)
            reader.wait_for_comments(1)
            assert c.delete("/v1/models/m").status_code == 204
            assert reader.read_to_end() == []  # ends cleanly (no protocol error) within seconds
        wait_for(lambda: open_streams(every_step) == 0, 10, "the generator to end after a deletion")


def test_any_replica_streams_what_another_publishes(
    make_settings: Callable[..., Settings], rds: redis.Redis, prefix: str
) -> None:
    """Fed from Redis, not from memory: a second replica on the same prefix, which the
    model is not placed on, streams the updates that its owner publishes."""
    owner_id = "owner-1"
    other_id = next(
        f"other-{i}" for i in range(100) if assign(["m"], [owner_id, f"other-{i}"])["m"] == owner_id
    )
    with (
        ThreadServer(make_settings(STATS_EVERY_STEPS=1, REPLICA_ID=owner_id)) as writer,
        writer.client() as c,
    ):
        create(c, spec())
        with (
            ThreadServer(make_settings(SNAPSHOT_ON_SHUTDOWN=False, REPLICA_ID=other_id)) as replica,
            httpx.Client(base_url=replica.url, timeout=READ_TIMEOUT) as client,
            client.stream("GET", STREAM) as response,
        ):
            reader = SSEReader(response)
            learn(c, 3)
            events = reader.events(3)
            assert [e.json()["step"] for e in events] == [1, 2, 3]
            assert [e.id for e in events] == stats_ids(rds, prefix)
            assert client.get("/v1/models/m").json()["owner"] == owner_id
            assert replica.registry.local("m").writer is None  # it never learned


def test_shutdown_ends_open_streams(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """SIGTERM to uvicorn with a stream open: the stream ends cleanly and the server exits
    (it would wait for the stream forever otherwise)."""
    env = {"REDIS_URL": redis_url, "ONLINENORM_KEY_PREFIX": prefix, "ONLINENORM_DEVICE": "cpu"}
    server = ProcessServer(env, tmp_path / "service.log").start()
    try:
        with server.client() as c:
            create(c, spec())
        with (
            httpx.Client(base_url=server.url, timeout=READ_TIMEOUT) as client,
            client.stream("GET", STREAM) as response,
        ):
            reader = SSEReader(response)
            reader.wait_for_comments(1)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert reader.read_to_end() == []  # no RemoteProtocolError: a complete response
        server.proc.wait(timeout=15)
        assert time.monotonic() - started < 10, server.log()
        assert server.proc.returncode in (0, -signal.SIGTERM), server.log()
    finally:
        server.kill()


@pytest.mark.timeout(120)
def test_stream_outlives_a_redis_outage(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """While Redis is down the stream waits (keep-alives go on); once it is back the
    stream resumes after the last entry it sent. The refused learn is counted per model."""
    own = RedisProcess(tmp_path).start()
    try:
        settings = make_settings(REDIS_URL=own.url, STATS_EVERY_STEPS=1)
        with ThreadServer(settings) as srv, srv.client() as c:
            create(c, spec())
            with (
                httpx.Client(base_url=srv.url, timeout=READ_TIMEOUT) as client,
                client.stream("GET", STREAM) as response,
            ):
                reader = SSEReader(response)
                learn(c, 1)
                assert reader.next_event().json()["step"] == 1
                own.stop()
                assert c.post("/v1/models/m/learn", json=samples(1, seed=3)[0]).status_code == 503
                own.start()
                wait_for(lambda: c.get("/readyz").status_code == 200, 30, "Redis to be back")
                learn(c, 1, seed=4)
                assert reader.next_event().json()["step"] == 2
            assert 'onlinenorm_model_learn_unavailable_total{model="m"} 1.0' in c.get("/metrics").text
    finally:
        own.stop()
