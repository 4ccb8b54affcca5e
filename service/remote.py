"""Learns this replica hands to a model's owner: appended to the model's log (the log is
the queue: durable and ordered once appended), answered when the owner has applied
them and published their outcome.

Each waiting request registers its nonce (``req``) before its entry is appended, and a
tail task per model, started before that append, reads the results stream with
``XREAD BLOCK``: a result can never slip past unseen. Requests that this replica had
logged itself as the owner, and then could not answer (it lost the lease), wait the
same way, reading back the results published since they were logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.answers import Answer, SyncReply
from service.errors import GatewayTimeoutError, ServiceError, UnavailableError
from service.store import log, pending, results
from service.store.connection import UNREACHABLE, RedisHealth
from service.writer import LearnJob

logger = logging.getLogger(__name__)

_BLOCK_MS = 1000
#: An idle tail stays this long for the next waiter before it stops.
_LINGER_SECONDS = 10.0
_RETRY_SECONDS = 0.5
_READY_TIMEOUT = 5.0


class RemoteLearns:
    """The non-owner path of one model on this replica."""

    def __init__(
        self,
        name: str,
        incarnation: str,
        *,
        redis: Redis,
        health: RedisHealth,
        prefix: str,
        replica: str,
        timeout: float,
        on_gone: Callable[[], Awaitable[ServiceError]],
        on_unowned: Callable[[], None],
    ) -> None:
        self.name = name
        self.incarnation = incarnation
        self.redis = redis
        self.health = health
        self.prefix = prefix
        self.replica = replica
        self.timeout = timeout
        self._on_gone = on_gone  # the error to answer when the model vanished from Redis
        self._on_unowned = on_unowned  # the log has no owner: maybe this replica should take it
        self._waiters: dict[str, asyncio.Future[Answer]] = {}
        self._tail: asyncio.Task[None] | None = None
        self._tail_ready: asyncio.Event | None = None
        self._closed: ServiceError | None = None
        self._relays: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- requests
    async def learn(self, job: LearnJob) -> Answer:
        """Append ``job`` to the log and wait for the owner's answer."""
        fields = log.learn_fields(job.samples_json, job.kind, job.idempotency_key, self.replica, job.req)
        return await self._request(job.req, fields)

    async def labels(
        self,
        kind: str,
        labels: list[tuple[str, bytes]],
        request_json: bytes,
        idempotency_key: str | None,
        ttl_seconds: float,
        on_taken: Callable[[pending.Taken], None],
    ) -> Answer:
        """Turn labels of pending predictions into a learn entry (any replica, the owner
        included: the entry reaches the writer through its bell) and wait for its answer.
        Raises :class:`~service.store.pending.LabelRefusedError` when one cannot be taken."""
        req = log.new_req()
        fields = log.label_fields(kind, request_json, self.replica, req)

        async def append() -> tuple[str, str | None] | None:
            taken = await pending.take_labels(
                self.redis,
                self.prefix,
                self.name,
                self.incarnation,
                labels,
                ttl_seconds,
                idempotency_key,
                fields,
            )
            if taken is None:
                return None
            on_taken(taken)
            return taken.entry_id, taken.holder

        return await self._request(req, append)

    async def sync(self) -> SyncReply:
        """Ask the owner for its current state: the snapshot it answers with includes
        every entry logged before this call."""
        req = log.new_req()
        answer = await self._request(req, log.sync_fields(self.replica, req))
        if answer.sync is None:
            raise UnavailableError(f"model {self.name!r}: the owner did not answer a sync")
        return answer.sync

    async def _request(
        self,
        req: str,
        entry: dict[bytes, bytes] | Callable[[], Awaitable[tuple[str, str | None] | None]],
    ) -> Answer:
        if self._closed is not None:
            raise self._closed
        if not self.health.up:
            raise UnavailableError("Redis is unreachable: the sample was not logged, so it was not applied")
        future = self._register(req)
        try:
            await self._ensure_tail()
            try:
                if callable(entry):
                    appended = await entry()
                else:
                    appended = await log.append_remote(
                        self.redis, self.prefix, self.name, self.incarnation, entry
                    )
            except UNREACHABLE as exc:
                self.health.mark_down(exc)
                raise UnavailableError(
                    f"Redis is unreachable ({exc}): the sample may not have been logged"
                ) from exc
            except RedisError as exc:
                raise UnavailableError(
                    f"Redis refused the log write ({exc}): the sample was not logged"
                ) from exc
            if appended is None:
                raise await self._on_gone()
            if appended[1] is None:
                self._on_unowned()
            return await self._wait(future)
        finally:
            self._waiters.pop(req, None)

    async def _wait(self, future: asyncio.Future[Answer]) -> Answer:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise GatewayTimeoutError(
                f"the request was logged, but model {self.name!r}'s owner has not applied it within "
                f"{self.timeout:g} s (an owner is being replaced?); it will be applied: retry with the "
                "same Idempotency-Key for its answer"
            ) from None

    def resubmit(self, job: LearnJob) -> None:
        """A job this replica queued as the owner but never logged: send it the remote way."""
        self._spawn(self._relay(job, self.learn(job)))

    def adopt(self, job: LearnJob) -> None:
        """A job this replica logged as the owner but could not answer: wait for the answer
        of whoever applies it now (published since it was logged, or, if this replica
        takes the model back, delivered by its replay)."""
        future = self._register(job.req)
        self._spawn(self._relay(job, self._await_logged(job, future)))

    async def _await_logged(self, job: LearnJob, future: asyncio.Future[Answer]) -> Answer:
        try:
            await self._ensure_tail()
            since = job.logged_at_ms - 1000  # Redis's clock may be a little behind ours
            with contextlib.suppress(*UNREACHABLE, RedisError):
                for req, body in await results.read_since(self.redis, self.prefix, self.name, since):
                    self.deliver(req, Answer.from_bytes(body))
            return await self._wait(future)
        finally:
            self._waiters.pop(job.req, None)

    async def _relay(self, job: LearnJob, answer: Awaitable[Answer]) -> None:
        try:
            result = await answer
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    # ------------------------------------------------------------------ results
    def deliver(self, req: str, answer: Answer) -> bool:
        """Resolve the waiter of ``req``, if any (a result read from Redis, or one this
        replica computed itself as the new owner)."""
        future = self._waiters.get(req)
        if future is None or future.done():
            return False
        future.set_result(answer)
        return True

    def _register(self, req: str) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters[req] = future
        return future

    async def _ensure_tail(self) -> None:
        """Start the results tail if it is not running, and wait until it has a cursor
        (so that every result published from now on reaches it)."""
        if self._tail is None or self._tail.done():
            self._tail_ready = asyncio.Event()
            self._tail = asyncio.create_task(self._run_tail(self._tail_ready), name=f"results:{self.name}")
        assert self._tail_ready is not None
        try:
            await asyncio.wait_for(self._tail_ready.wait(), _READY_TIMEOUT)
        except TimeoutError:
            raise UnavailableError(
                "Redis is unreachable: the sample was not logged, so it was not applied"
            ) from None

    async def _run_tail(self, ready: asyncio.Event) -> None:
        cursor: str | None = None
        idle_since = time.monotonic()
        while self._closed is None:
            try:
                if cursor is None:
                    cursor = await results.last_id(self.redis, self.prefix, self.name)
                    ready.set()
                cursor, got = await results.wait(self.redis, self.prefix, self.name, cursor, _BLOCK_MS)
            except (*UNREACHABLE, RedisError) as exc:
                logger.debug("model %s: results tail: %s", self.name, exc)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for req, body in got:
                if req in self._waiters:
                    self.deliver(req, Answer.from_bytes(body))
            if self._waiters:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > _LINGER_SECONDS:
                self._tail = None
                return

    async def close(self, error: ServiceError) -> None:
        """Fail every waiter with ``error`` (the model was deleted) and stop the tail."""
        self._closed = error
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        if self._tail is not None:
            self._tail.cancel()  # a blocked XREAD may swallow it: the flag ends the loop
            await asyncio.wait([self._tail], timeout=_BLOCK_MS / 1000 + 1)
            self._tail = None
