"""The single writer of one model: requests are logged, then applied, then answered.

Learn requests join the model's queue in arrival order. One asyncio task per model
drains everything queued (a group), writes it to the write-ahead log in one
MULTI/EXEC round trip (group commit), applies it in a worker thread, one optimizer
step per sample and in order, and only then answers. Between groups it writes
snapshots and normalizer stats when they are due. So updates are never concurrent,
never lost once acknowledged, and never applied unless logged.

When a log write fails, the writer cannot know whether Redis kept it (the reply may
be what was lost). It answers 503 and, before its next write, re-reads the log after
its last applied entry and applies whatever is there: the log is the truth, and the
live model always equals what a restart would rebuild from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.config import Settings
from service.errors import InvalidInputError, NotFoundError, ServiceError, UnavailableError
from service.idempotency import IdempotencyRecords, Record, fingerprint
from service.live import LiveModel, Outcome
from service.store import keys, log, snapshots, stats
from service.store.connection import UNREACHABLE, RedisHealth
from service.telemetry import Telemetry

logger = logging.getLogger(__name__)

_RETRY_FIRST = 0.5
_RETRY_MAX = 30.0


@dataclass(eq=False)
class LearnJob:
    """One validated learn request waiting for the writer."""

    kind: str
    xs: list[Any]
    ys: list[Any]
    samples_json: bytes
    idempotency_key: str | None = None
    future: asyncio.Future[Answer] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def size(self) -> int:
        return len(self.xs)


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    replayed: bool = False  # answered from an Idempotency-Key record, not applied again


@dataclass
class _Schedule:
    """When something periodic (snapshot, stats) was last done, and when to retry it."""

    every_steps: int
    every_seconds: float
    step: int
    at: float = field(default_factory=time.monotonic)
    retry_at: float = 0.0
    failures: int = 0

    def due_in(self, step: int, dirty: bool, now: float) -> float | None:
        """Seconds until due (0: now); None while there is nothing new to write."""
        if not dirty:
            return None
        if now < self.retry_at:
            return self.retry_at - now
        if step - self.step >= self.every_steps:
            return 0.0
        return max(0.0, self.at + self.every_seconds - now)

    def done(self, step: int, now: float) -> None:
        self.step, self.at, self.failures, self.retry_at = step, now, 0, 0.0

    def failed(self, now: float) -> None:
        self.failures += 1
        self.retry_at = now + min(_RETRY_FIRST * 2 ** (self.failures - 1), _RETRY_MAX)


class ModelWriter:
    """Owns all writes of one :class:`LiveModel`: its learns, snapshots and stats."""

    def __init__(
        self,
        model: LiveModel,
        *,
        redis: Redis,
        health: RedisHealth,
        settings: Settings,
        telemetry: Telemetry,
        last_id: str,
        records: IdempotencyRecords,
        snapshot_step: int,
        snapshot_log_id: str,
    ) -> None:
        self.model = model
        self.redis = redis
        self.health = health
        self.settings = settings
        self.telemetry = telemetry
        self.records = records
        self._prefix = settings.KEY_PREFIX
        self._log_key = keys.log_key(self._prefix, model.name)
        self._last_id = last_id
        self._uncertain = False
        self._queue: deque[LearnJob] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._drop_reason: ServiceError | None = None
        self._task: asyncio.Task[None] | None = None
        # A snapshot is owed when the log moved past it (a rolled-back entry moves the
        # log but not the step); stats are owed when the step moved.
        self._snapshot_log_id = snapshot_log_id
        self._snapshot = _Schedule(
            settings.SNAPSHOT_EVERY_STEPS, settings.SNAPSHOT_EVERY_SECONDS, snapshot_step
        )
        self._stats = _Schedule(settings.STATS_EVERY_STEPS, settings.STATS_EVERY_SECONDS, snapshot_step)

    @property
    def last_id(self) -> str:
        """Id of the last log entry applied to the live model."""
        return self._last_id

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start (or, after a :meth:`stop`, restart) the writer task."""
        self._closing = False
        self._drop_reason = None
        self._task = asyncio.create_task(self._run(), name=f"writer:{self.model.name}")

    async def stop(self, *, discard: ServiceError | None = None, final_snapshot: bool = True) -> None:
        """Finish the group in progress, then either apply what is queued (shutdown) or
        refuse it with ``discard`` (deletion); optionally write a last snapshot."""
        self._closing = True
        self._drop_reason = discard
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if final_snapshot and self.health.up:
            await self._write_snapshot(time.monotonic())

    # ------------------------------------------------------------------- learning
    async def submit(self, job: LearnJob) -> Answer:
        """Queue a learn request and wait until it is logged and applied (or refused)."""
        if self._closing:
            raise NotFoundError(f"model {self.model.name!r} is being deleted or the service is stopping")
        if not self.health.up:
            self.telemetry.learn_unavailable.inc()
            self.telemetry.watch.count_unavailable(self.model.name)
            raise UnavailableError("Redis is unreachable: the sample was not logged, so it was not applied")
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._seconds_until_due())
            if self._queue:
                if self._closing and self._drop_reason is not None:
                    self._fail(list(self._queue), self._drop_reason)
                    self._queue.clear()
                    return
                group = self._take_group()
                try:
                    await self._commit(group)
                except Exception as exc:  # a bug: answer 500, keep the writer alive
                    logger.exception("model %s: learn group failed", self.model.name)
                    self._fail(group, ServiceError(f"internal error: {exc}"))
            try:
                await self._persist_if_due()
            except Exception:
                logger.exception("model %s: periodic persistence failed", self.model.name)

    def _take_group(self) -> list[LearnJob]:
        group = [self._queue.popleft()]
        samples = group[0].size
        while self._queue and samples + self._queue[0].size <= self.settings.MAX_GROUP_SAMPLES:
            job = self._queue.popleft()
            samples += job.size
            group.append(job)
        return group

    async def _commit(self, group: list[LearnJob]) -> None:
        if not self.health.up:
            self._refuse_unavailable(group)
            return
        if self._uncertain:
            try:
                await self._reconcile()
            except UNREACHABLE as exc:
                self.health.mark_down(exc)
                self._refuse_unavailable(group)
                return
        to_log, followers = self._answer_known_keys(group)
        if not to_log:
            return
        started = time.perf_counter()
        try:
            ids = await log.append_group(
                self.redis,
                self._log_key,
                [log.learn_fields(j.samples_json, j.kind, j.idempotency_key) for j in to_log],
            )
        except (*UNREACHABLE, RedisError) as exc:
            self._uncertain = True
            if isinstance(exc, UNREACHABLE):
                self.health.mark_down(exc)
            else:
                logger.warning("model %s: log write refused by Redis: %s", self.model.name, exc)
            self._refuse_unavailable(to_log + [f for fs in followers.values() for f in fs])
            return
        applied_at = time.perf_counter()
        self.telemetry.log_append_seconds.observe(applied_at - started)
        self.telemetry.group_samples.observe(sum(j.size for j in to_log))
        outcomes = await asyncio.to_thread(self._apply_group, to_log)
        self.telemetry.apply_seconds.observe(time.perf_counter() - applied_at)
        self._last_id = ids[-1]
        rollbacks = []
        for job, entry_id, outcome in zip(to_log, ids, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._fail([job, *followers.get(job.idempotency_key or "", [])], ServiceError(str(outcome)))
                continue
            self._count(outcome)
            if outcome.error is not None:
                rollbacks.append((entry_id, log.Rollback(outcome.applied, outcome.error)))
            if job.idempotency_key is not None:
                self.records.put(job.idempotency_key, Record(fingerprint(job.samples_json), outcome))
                for follower in followers.get(job.idempotency_key, []):
                    self._answer_from_record(follower)
            _resolve(job, Answer(outcome))
        for entry_id, rollback in rollbacks:
            await self._log_rollback(entry_id, rollback)

    def _apply_group(self, jobs: list[LearnJob]) -> list[Outcome | Exception]:
        """Worker thread: apply each request in order (one lock hold per request, so
        predictions can interleave between requests but never inside a step)."""
        outcomes: list[Outcome | Exception] = []
        for job in jobs:
            try:
                outcomes.append(self.model.apply(job.kind, job.xs, job.ys))
            except Exception as exc:  # validated before queueing: should not happen
                logger.exception("model %s: applying a logged request failed", self.model.name)
                outcomes.append(exc)
        return outcomes

    def _count(self, outcome: Outcome) -> None:
        self.telemetry.samples_learned.inc(outcome.applied)
        if outcome.error is not None:
            self.telemetry.nonfinite_steps.inc()
        self.telemetry.watch.count_learned(self.model.name, outcome.applied, outcome.error is not None)

    async def _log_rollback(self, entry_id: str, rollback: log.Rollback) -> None:
        """Best effort: without the record, replay reproduces the rollback deterministically."""
        try:
            await log.append_rollback(self.redis, self._log_key, entry_id, rollback)
        except (*UNREACHABLE, RedisError) as exc:
            logger.warning("model %s: could not log the rollback of %s: %s", self.model.name, entry_id, exc)

    async def _reconcile(self) -> None:
        """Apply log entries a failed write may have left behind (see module docstring)."""
        entries, rollbacks = await log.read_after(self.redis, self._log_key, self._last_id)
        if entries:
            logger.warning(
                "model %s: applying %d logged request(s) whose answer was lost in a Redis failure",
                self.model.name,
                len(entries),
            )
            outcomes = await asyncio.to_thread(self.model.replay, entries, rollbacks)
            for outcome in outcomes:
                self._count(outcome)
            self.records.put_replayed(entries, outcomes)
            self._last_id = entries[-1].id
        self._uncertain = False

    # ---------------------------------------------------------------- idempotency
    def _answer_known_keys(self, group: list[LearnJob]) -> tuple[list[LearnJob], dict[str, list[LearnJob]]]:
        """Answer retries of applied requests from their records; a key repeated within
        the group follows its first use. Returns the jobs to log, and the followers."""
        to_log: list[LearnJob] = []
        followers: dict[str, list[LearnJob]] = {}
        for job in group:
            key = job.idempotency_key
            if key is None:
                to_log.append(job)
            elif self.records.get(key) is not None:
                self._answer_from_record(job)
            elif key in followers:
                followers[key].append(job)
            else:
                followers[key] = []
                to_log.append(job)
        return to_log, followers

    def _answer_from_record(self, job: LearnJob) -> None:
        assert job.idempotency_key is not None
        record = self.records.get(job.idempotency_key)
        assert record is not None
        if record.outcome.kind != job.kind or record.fingerprint != fingerprint(job.samples_json):
            _reject(
                job,
                InvalidInputError(
                    f"Idempotency-Key {job.idempotency_key!r} was already used for a different request"
                ),
            )
            return
        self.telemetry.idempotent_replays.inc()
        _resolve(job, Answer(record.outcome, replayed=True))

    # ---------------------------------------------------------------- persistence
    def _due_in(self, now: float) -> tuple[float | None, float | None]:
        """Seconds until a snapshot and until a stats publish are due (None: not owed)."""
        step = self.model.step
        snapshot = self._snapshot.due_in(step, self._last_id != self._snapshot_log_id, now)
        stats_owed = step != self._stats.step  # without ON layers: the metrics' history
        return snapshot, self._stats.due_in(step, stats_owed, now)

    def _seconds_until_due(self) -> float | None:
        waits = [w for w in self._due_in(time.monotonic()) if w is not None]
        return min(waits) if waits else None

    async def _persist_if_due(self) -> None:
        if not self.health.up:
            return
        now = time.monotonic()
        snapshot_in, stats_in = self._due_in(now)
        if snapshot_in == 0.0:
            await self._write_snapshot(now)
        if stats_in == 0.0:
            await self._publish_stats(now)

    async def _write_snapshot(self, now: float) -> None:
        if self._last_id == self._snapshot_log_id:
            return
        log_id = self._last_id
        step, state = await asyncio.to_thread(self.model.state_bytes)
        snap = snapshots.Snapshot(
            state=state,
            step=step,
            log_id=log_id,
            created_at=self.model.created_at,
            updated_at=self.model.updated_at,
            snapshot_at=time.time(),
            idempotency=self.records.dumps(),
        )
        try:
            await snapshots.write_snapshot(self.redis, self._prefix, self.model.name, snap)
        except (*UNREACHABLE, RedisError) as exc:
            self.telemetry.snapshots.labels("error").inc()
            if isinstance(exc, UNREACHABLE):
                self.health.mark_down(exc)
            self._snapshot.failed(now)
            logger.warning("model %s: snapshot failed, will retry: %s", self.model.name, exc)
            return
        self.telemetry.snapshots.labels("ok").inc()
        self._snapshot_log_id = log_id
        self._snapshot.done(step, now)

    async def _publish_stats(self, now: float) -> None:
        # Only this task applies steps, so both reads see the same step.
        (step, layers), (_, metrics) = await asyncio.to_thread(
            lambda: (self.model.read_stats(), self.model.read_metrics())
        )
        try:
            summaries = await stats.publish_stats(
                self.redis, self._prefix, self.model.name, step, layers, self.settings.STATS_HISTORY, metrics
            )
        except (*UNREACHABLE, RedisError) as exc:
            self.telemetry.stats_publishes.labels("error").inc()
            if isinstance(exc, UNREACHABLE):
                self.health.mark_down(exc)
            self._stats.failed(now)
            logger.warning("model %s: stats publish failed, will retry: %s", self.model.name, exc)
            return
        self.telemetry.stats_publishes.labels("ok").inc()
        self.telemetry.watch.observe(self.model.name, step, summaries, metrics)
        self._stats.done(step, now)

    # ------------------------------------------------------------------- answers
    def _refuse_unavailable(self, jobs: list[LearnJob]) -> None:
        self.telemetry.learn_unavailable.inc(len(jobs))
        self.telemetry.watch.count_unavailable(self.model.name, len(jobs))
        self._fail(
            jobs, UnavailableError("Redis is unreachable: the sample was not logged, so it was not applied")
        )

    @staticmethod
    def _fail(jobs: list[LearnJob], error: ServiceError) -> None:
        for job in jobs:
            _reject(job, error)


def _resolve(job: LearnJob, answer: Answer) -> None:
    if not job.future.done():
        job.future.set_result(answer)


def _reject(job: LearnJob, error: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(error)
