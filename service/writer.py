"""The single writer of one model, on the replica that owns it: requests are logged,
then applied, then answered.

Learn requests received by this replica join the model's queue in arrival order. One
asyncio task drains everything queued (a group) and appends it to the write-ahead log
in one fenced script call (group commit), which also returns, in the same round trip,
any entries other replicas appended since the last one applied here. It applies all of
them in log order, one optimizer step per sample (right on the event loop when the
group's steps take a few milliseconds at most, since a worker thread's hop costs more
than that; in a worker thread when they take longer), then records what
must be durable before anything later is acknowledged (rollbacks, the outcomes other
replicas wait for, a snapshot a sync asked for) in one more fenced call, and only then
answers. A bell (a list that non-owners push to) wakes it when other replicas append
while nothing is queued here; it carries the entries themselves, so the owner reads the
log only when they do not follow what it applied. Between groups it writes snapshots
and normalizer stats when they are due.

Every write is fenced by the lease token: when Redis refuses one, this replica is no
longer the owner; the writer stops and hands back what it had not finished, so the
requests still get their answers through the new owner.

When a log write fails on the connection, the writer cannot know whether Redis kept it.
It answers 503 and, before its next write, reads the log after its last applied entry
and applies whatever is there: the log is the truth, and the live model always equals
what a replay would rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from model.learner import LearnerCorruptedError
from service import executors
from service.answers import Answer, SyncReply
from service.applier import Applied, apply_entry
from service.config import Settings
from service.errors import InvalidInputError, ServiceError, UnavailableError
from service.idempotency import IdempotencyRecords
from service.live import LiveModel
from service.store import keys, log, results, snapshots, stats
from service.store.connection import UNREACHABLE, RedisHealth, is_out_of_memory
from service.store.fencing import Fence, FencedError, FencedWrite
from service.telemetry import Telemetry

logger = logging.getLogger(__name__)

_RETRY_FIRST = 0.5
_RETRY_MAX = 30.0
_BELL_BLOCK_SECONDS = 1.0
#: Apply a group on the event loop when its steps should take at most this long (judged
#: from this model's own step times; until they have been timed, never).
_INLINE_SECONDS = 0.02
#: A group this many times dearer per sample than the average replaces it at once (one
#: such group is enough to keep the next one off the event loop).
_JUMP = 4.0
#: How far any other timing moves the average.
_AVERAGE_WEIGHT = 0.25


@dataclass(eq=False)
class LearnJob:
    """One validated learn request waiting for its answer."""

    kind: str
    xs: list[Any]
    ys: list[Any]
    samples_json: bytes
    idempotency_key: str | None
    req: str  # the nonce its log entry carries, under which its outcome is published
    future: asyncio.Future[Answer] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    logged_at_ms: int = 0  # when this replica appended it (0: not yet)

    @property
    def size(self) -> int:
        return len(self.xs)


@dataclass
class WriterExit:
    """Why a writer stopped, and the requests it leaves to be answered elsewhere:
    ``unlogged`` were never appended; ``unanswered`` are in the log but their answers
    were not made durable here (a new owner will apply them)."""

    reason: str  # handover, shutdown, deleted, gone, taken, expired, rebuild
    unlogged: list[LearnJob] = field(default_factory=list)
    unanswered: list[LearnJob] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)  # of unanswered ones, by req ("gone")


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


#: Stop reasons: the lease is no longer ours.
LOST = ("gone", "taken", "expired")
#: Stop reason: the live state cannot be trusted (or its outcome was not recorded):
#: release the lease and rebuild the model from Redis.
REBUILD = "rebuild"


class _Stop(Exception):
    """Leave the writer loop: the lease is gone, or the model must be rebuilt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelWriter:
    """Owns all writes of one :class:`LiveModel` while this replica holds its lease."""

    def __init__(
        self,
        model: LiveModel,
        *,
        fence: Fence,
        redis: Redis,
        health: RedisHealth,
        settings: Settings,
        telemetry: Telemetry,
        records: IdempotencyRecords,
        last_id: str,
        snapshot_step: int,
        snapshot_log_id: str,
        deliver: Callable[[str, Answer], bool],
        on_exit: Callable[[ModelWriter, WriterExit], None],
    ) -> None:
        self.model = model
        self.fence = fence
        self.redis = redis
        self.health = health
        self.settings = settings
        self.telemetry = telemetry
        self.records = records
        self.replica = settings.replica_id
        self._prefix = settings.KEY_PREFIX
        self._log_key = keys.log_key(self._prefix, model.name)
        self._bell_key = keys.bell_key(self._prefix, model.name)
        self._deliver = deliver  # answers for this replica's own remote waiters
        self._on_exit = on_exit
        self._last_id = last_id
        self._remote_pending = True  # other replicas may have appended while we took over
        self._must_read = True  # read the log itself, not just what the bell carried
        self._bell_items: list[log.BellItem] = []
        self._queue: deque[LearnJob] = deque()
        self._wake = asyncio.Event()
        self.accepting = True
        self._stop_reason: str | None = None
        self._discard: ServiceError | None = None
        self._task: asyncio.Task[None] | None = None
        self._bell_task: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._exiting = False
        self._logged: list[LearnJob] = []  # appended in the current cycle, not yet answered
        self._followers: list[LearnJob] = []  # retries within the current group, not logged
        self._computed: dict[str, Answer] = {}  # answers of the logged ones, if Redis lost the log
        # A snapshot is owed when the log moved past it (a rolled-back entry, or a sync,
        # moves the log but not the step); its state is rewritten only if a step changed it.
        self._snapshot_log_id = snapshot_log_id
        self._state_changed = False
        self._snapshot = _Schedule(
            settings.SNAPSHOT_EVERY_STEPS, settings.SNAPSHOT_EVERY_SECONDS, snapshot_step
        )
        self._stats = _Schedule(settings.STATS_EVERY_STEPS, settings.STATS_EVERY_SECONDS, snapshot_step)
        self._sample_seconds: float | None = None  # a moving average of this model's steps
        self._lanes = executors.of(model)  # this model's own threads: its slowness stays its own

    @property
    def last_id(self) -> str:
        """Id of the last log entry applied to the live model."""
        return self._last_id

    @property
    def snapshot_log_id(self) -> str:
        return self._snapshot_log_id

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer:{self.model.name}")
        self._bell_task = asyncio.create_task(self._listen_bell(), name=f"bell:{self.model.name}")

    def submit(self, job: LearnJob) -> None:
        """Queue a validated request (only while :attr:`accepting`); its future resolves
        once applied (or refused)."""
        assert self.accepting, "the writer is stopping: send the request the remote way"
        self._queue.append(job)
        self._wake.set()

    def lose(self, reason: str) -> None:
        """The lease was lost (seen by the renewer): stop before the next write."""
        self.accepting = False
        if self._stop_reason not in LOST:
            self._stop_reason = reason
        self._wake.set()

    async def stop(self, reason: str, *, discard: ServiceError | None = None) -> None:
        """Stop writing. ``handover``/``shutdown``: apply what is queued, write a last
        snapshot and release the lease. ``deleted``: refuse what is queued with ``discard``."""
        self.accepting = False
        if self._stop_reason is None:
            self._stop_reason = reason
            self._discard = discard
        self._wake.set()
        await self._exited.wait()

    async def record_replay(self, applied: list[Applied]) -> None:
        """After a takeover's replay: record its new rollbacks, publish the outcomes
        other replicas wait for, answer this replica's own waiters. Raises
        :class:`FencedError` if the lease was lost meanwhile."""
        for a in applied:
            outcome = a.answer.outcome
            if outcome is not None and outcome.changed_state and not a.answer.replayed:
                self._state_changed = True
        try:
            await self._record(applied, {})
        except _Stop as stop:
            raise FencedError(self.model.name, stop.reason) from stop

    # ----------------------------------------------------------------- main loop
    async def _run(self) -> None:
        exit_ = WriterExit("handover")
        try:
            await self._loop()
            exit_.reason = self._stop_reason or "handover"
            await self._finish(exit_)
        except _Stop as stop:
            exit_.reason = stop.reason
        except Exception:  # a bug: rebuild from Redis, keep the requests answerable
            logger.exception("model %s: writer failed", self.model.name)
            exit_.reason = REBUILD
        finally:
            self.accepting = False  # before any await: no request may join a queue nobody drains
            exit_.unanswered = [j for j in self._logged if not j.future.done()]
            exit_.answers, self._computed = self._computed, {}
            exit_.unlogged = [j for j in (*self._followers, *self._queue) if not j.future.done()]
            self._logged, self._followers = [], []
            self._queue.clear()
            self._exiting = True
            if self._bell_task is not None:
                self._bell_task.cancel()  # a blocked BLPOP may swallow it: the flag ends the loop
                await asyncio.wait([self._bell_task], timeout=_BELL_BLOCK_SECONDS + 1)
            self._exited.set()
            self._on_exit(self, exit_)

    async def _loop(self) -> None:
        while True:
            if self._stop_reason in LOST:
                raise _Stop(self._stop_reason)
            if self._stop_reason == "deleted":
                _fail(list(self._queue), self._discard or UnavailableError("the model is being deleted"))
                self._queue.clear()
                return
            draining = self._stop_reason is not None  # handover/shutdown: finish what is queued here
            if self._queue or (self._remote_pending and not draining and self.health.up):
                await self._cycle()  # while Redis is down it refuses what is queued
            elif draining:
                return
            else:
                self._wake.clear()
                timeout = self._seconds_until_due()
                if self._remote_pending:  # Redis is down: look again soon
                    timeout = min(timeout or _RETRY_FIRST, _RETRY_FIRST)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            try:
                await self._persist_if_due()
            except FencedError as exc:
                raise _Stop(exc.reason) from exc

    async def _finish(self, exit_: WriterExit) -> None:
        """Graceful end (handover, shutdown): a last snapshot, then release the lease."""
        if exit_.reason not in ("handover", "shutdown") or not self.health.up:
            return
        try:
            if exit_.reason == "handover" or self.settings.SNAPSHOT_ON_SHUTDOWN:
                await self._write_snapshot(time.monotonic(), final=True)
            write = FencedWrite(self.fence)
            write.command("DEL", keys.lease_key(self._prefix, self.model.name))
            await write.run(self.redis)
        except FencedError as exc:
            exit_.reason = exc.reason
        except (*UNREACHABLE, RedisError) as exc:
            logger.warning("model %s: could not hand over cleanly: %s", self.model.name, exc)

    # -------------------------------------------------------------------- cycles
    def _take_group(self) -> list[LearnJob]:
        if not self._queue:
            return []
        group = [self._queue.popleft()]
        samples = group[0].size
        while self._queue and samples + self._queue[0].size <= self.settings.MAX_GROUP_SAMPLES:
            job = self._queue.popleft()
            samples += job.size
            group.append(job)
        return group

    async def _cycle(self) -> None:
        if not self.health.up:
            self._refuse_unavailable(list(self._queue))
            self._queue.clear()
            return
        to_log, followers = self._answer_known_keys(self._take_group())
        self._followers = [f for fs in followers.values() for f in fs]
        self._remote_pending = False
        rung, self._bell_items = self._bell_items, []
        started = time.perf_counter()
        try:
            if to_log:
                pending, ids = await self._append(to_log)
            else:
                pending, ids = await self._read_remote(rung), []
            self._must_read = False
        except FencedError as exc:
            self._queue.extendleft(reversed(to_log))  # not logged: left to be answered elsewhere
            raise _Stop(exc.reason) from exc
        except (*UNREACHABLE, RedisError) as exc:
            self._remote_pending = self._must_read = True  # the write may have landed: read the log
            if isinstance(exc, UNREACHABLE):
                self.health.mark_down(exc)
            else:
                if is_out_of_memory(exc):  # readiness, /metrics and the answers say so now
                    self.health.note_refusal(exc)
                logger.warning("model %s: log write refused by Redis: %s", self.model.name, exc)
            self._refuse_unavailable(to_log + self._followers)
            self._followers = []
            return
        self._logged = to_log
        if to_log:
            self.telemetry.log_append_seconds.observe(time.perf_counter() - started)
            self.telemetry.group_samples.observe(sum(j.size for j in to_log))
        own = dict(zip(ids, to_log, strict=True))
        entries = pending.entries + [self._own_entry(entry_id, job) for entry_id, job in own.items()]
        applied_at = time.perf_counter()
        samples = sum(j.size for j in to_log)
        # A group this replica received whose steps are quick is applied right here: a
        # worker thread's hop (and its fight for the GIL) costs more than such steps. A
        # longer one, or entries to parse from the log, runs off the loop.
        if self._inline(samples, bool(pending.entries)):
            applied, corrupted = self._apply_all(entries, pending.rollbacks, own)
        else:
            applied, corrupted = await self._lanes.write(self._apply_all, entries, pending.rollbacks, own)
        self.telemetry.apply_seconds.observe(time.perf_counter() - applied_at)
        self._last_id = log.later(self._last_id, pending.last_id)
        if corrupted:
            # Record the rollbacks (the failed entry's included), then rebuild from Redis:
            # the replay answers this group, and everything after the failed entry.
            await self._record(applied, own, rollbacks_only=True)
            raise _Stop(REBUILD)
        if applied:
            self._last_id = log.later(self._last_id, applied[-1].entry.id)
        try:
            await self._record(applied, own)
        except _Stop as stop:
            if stop.reason == "gone":  # if Redis lost the model, these answers hold: keep them
                self._computed = {own[a.entry.id].req: a.answer for a in applied if a.entry.id in own}
            raise
        for a in applied:
            job = own.get(a.entry.id)
            if job is not None:
                _resolve(job, a.answer)
                for follower in followers.get(job.idempotency_key or "", []):
                    self._answer_follower(follower, a.answer, job)
        self._logged, self._followers = [], []

    async def _read_remote(self, rung: list[log.BellItem]) -> log.LogRead:
        """What other replicas appended after ``last_id``: straight from their bell items
        when those follow ``last_id`` without a gap (no round trip), else from the log."""
        entries = None if self._must_read else log.follow_bell(rung, self._last_id)
        if entries is None:
            return await log.read_after(self.redis, self._log_key, self._last_id)
        return log.LogRead(entries, {}, entries[-1].id if entries else "")

    def _own_entry(self, entry_id: str, job: LearnJob) -> log.LogEntry:
        return log.LogEntry(
            entry_id, log.LEARN, job.kind, job.samples_json, job.idempotency_key, self.replica, job.req
        )

    async def _append(self, jobs: list[LearnJob]) -> tuple[log.LogRead, list[str]]:
        """One fenced call: the entries others appended since ``last_id``, then ours."""
        write = FencedWrite(self.fence)
        write.command("XRANGE", self._log_key, f"({self._last_id}", "+")
        for job in jobs:
            write.xadd(
                self._log_key,
                log.learn_fields(job.samples_json, job.kind, job.idempotency_key, self.replica, job.req),
            )
        replies = await write.run(self.redis)
        now_ms = int(time.time() * 1000)
        for job in jobs:
            job.logged_at_ms = now_ms
        pending = log.parse_raw_entries(replies[0])
        return pending, [i.decode() if isinstance(i, bytes) else str(i) for i in replies[1:]]

    def _apply_all(
        self, entries: list[log.LogEntry], rollbacks: dict[str, log.Rollback], own: dict[str, LearnJob]
    ) -> tuple[list[Applied], bool]:
        """Blocking (torch work): apply each entry in log order (one lock hold per request, so
        predictions can interleave between requests but never inside a step). Stops at
        an entry whose optimizer update failed: ``(applied, True)``."""
        out: list[Applied] = []
        evicted = self.records.evicted_early
        started = time.perf_counter()
        try:
            return self._apply_each(entries, rollbacks, own, out)
        finally:
            if self.records.evicted_early != evicted:
                self.telemetry.idempotency_evicted.inc(self.records.evicted_early - evicted)
            self._count(out)
            samples = sum(j.size for j in own.values())
            if samples and len(own) == len(entries):  # this model's own speed, no parsing
                self._timed((time.perf_counter() - started) / samples)

    def _inline(self, samples: int, parsed: bool) -> bool:
        """Apply on the event loop? Only a group this replica received (nothing to parse),
        of a model whose steps have been timed short enough, whose lock is free (a forward
        pass of a big batch holding it would stall the loop for every model)."""
        average = self._sample_seconds
        if parsed or average is None or samples * average > _INLINE_SECONDS:
            return False
        return not self.model.lock.locked()

    def _timed(self, per_sample: float) -> None:
        """Fold one group's seconds per sample into the moving average. A step that got
        several times dearer (a model that changed, a huge batch) counts at once; the
        jitter of a shared machine (a preempted group) moves it only gently, so one slow
        group does not send a quick model's groups off the event loop for long."""
        average = self._sample_seconds
        if average is None or per_sample >= _JUMP * average:
            self._sample_seconds = per_sample
        else:
            self._sample_seconds = average + _AVERAGE_WEIGHT * (per_sample - average)

    def _apply_each(
        self,
        entries: list[log.LogEntry],
        rollbacks: dict[str, log.Rollback],
        own: dict[str, LearnJob],
        out: list[Applied],
    ) -> tuple[list[Applied], bool]:
        for entry in entries:
            job = own.get(entry.id)
            try:
                a = apply_entry(
                    self.model,
                    self.records,
                    entry,
                    rollbacks.get(entry.id),
                    job.xs if job is not None else None,
                    job.ys if job is not None else None,
                )
            except LearnerCorruptedError as exc:
                logger.error("model %s: %s; rebuilding it from Redis", self.model.name, exc)
                # The samples before the failing one were applied cleanly: replay keeps them.
                out.append(Applied(entry, Answer(), log.Rollback(exc.index, f"the step failed ({exc})")))
                return out, True
            outcome = a.answer.outcome
            if outcome is not None and outcome.changed_state and not a.answer.replayed:
                self._state_changed = True
            out.append(a)
        return out, False

    async def _record(
        self, applied: list[Applied], own: dict[str, LearnJob], rollbacks_only: bool = False
    ) -> None:
        """Make durable what must be before anything after it is acknowledged: rollbacks,
        the outcomes other replicas wait for, and the snapshot a sync asked for."""
        write = FencedWrite(self.fence)
        for a in applied:
            if a.rollback is not None:
                write.xadd(self._log_key, log.rollback_fields(a.entry.id, a.rollback))
                logger.warning(
                    "model %s: log entry %s rolled back: %s", self.model.name, a.entry.id, a.rollback.error
                )
        syncs = [a for a in applied if a.entry.op == log.SYNC] if not rollbacks_only else []
        snapshot_log_id = await self._add_snapshot(write) if syncs else ""
        answers = [
            (
                a.entry,
                Answer(sync=SyncReply(snapshot_log_id, a.entry.id)) if a.entry.op == log.SYNC else a.answer,
            )
            for a in applied
            if a.entry.id not in own
        ]
        if not rollbacks_only:
            results.add_results(
                write, [(e.req, answer.to_bytes()) for e, answer in answers if e.origin != self.replica]
            )
        if len(write):
            try:
                await write.run(self.redis)
            except FencedError as exc:
                raise _Stop(exc.reason) from exc
            except (*UNREACHABLE, RedisError) as exc:
                # What must precede the answers did not land: whoever applies this log
                # next (this replica once Redis answers, or a new owner) answers them.
                if isinstance(exc, UNREACHABLE):
                    self.health.mark_down(exc)
                logger.warning("model %s: could not record a group's outcome: %s", self.model.name, exc)
                raise _Stop(REBUILD) from exc
            if syncs:
                self._snapshot_written(snapshot_log_id)
        if not rollbacks_only:
            for entry, answer in answers:  # this replica's own waiters (a sync, a handed-over learn)
                if entry.origin == self.replica:
                    self._deliver(entry.req, answer)

    # ---------------------------------------------------------------- idempotency
    def _answer_known_keys(self, group: list[LearnJob]) -> tuple[list[LearnJob], dict[str, list[LearnJob]]]:
        """Answer retries of applied requests from their records; a key repeated within
        the group follows its first use. Returns the jobs to log, and the followers."""
        to_log: list[LearnJob] = []
        followers: dict[str, list[LearnJob]] = {}
        now_ms = int(time.time() * 1000)
        for job in group:
            key = job.idempotency_key
            if key is None:
                to_log.append(job)
                continue
            record = self.records.lookup(key, now_ms)
            if record is not None:
                if record.matches(job.kind, job.samples_json):
                    self.telemetry.idempotent_replays.inc()
                    _resolve(job, Answer(record.outcome, replayed=True))
                else:
                    _reject(job, _key_reused(key))
            elif key in followers:
                followers[key].append(job)
            else:
                followers[key] = []
                to_log.append(job)
        return to_log, followers

    def _answer_follower(self, follower: LearnJob, answer: Answer, first: LearnJob) -> None:
        if answer.error is not None:
            _reject(follower, answer.error)
        elif (follower.kind, follower.samples_json) != (first.kind, first.samples_json):
            _reject(follower, _key_reused(follower.idempotency_key or ""))
        else:
            self.telemetry.idempotent_replays.inc()
            _resolve(follower, Answer(answer.outcome, replayed=True))

    # --------------------------------------------------------------- persistence
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

    async def _add_snapshot(self, write: FencedWrite) -> str:
        """Queue a snapshot as of ``last_id`` on ``write``; returns its log id. The state
        itself is rewritten only if a step changed it since the last snapshot."""
        log_id = self._last_id
        if log_id == self._snapshot_log_id:
            return log_id
        prefix, name = self._prefix, self.model.name
        if not self._state_changed:  # only the log moved: move the snapshot's log id, trim
            write.hset(
                keys.snapshot_key(prefix, name), {b"log_id": log_id, b"snapshot_at": repr(time.time())}
            )
            write.command("XTRIM", self._log_key, "MINID", log.next_id(log_id))
            return log_id
        step, state = await self._lanes.write(self.model.state_bytes)
        snap = snapshots.Snapshot(
            state=state,
            step=step,
            log_id=log_id,
            created_at=self.model.created_at,
            updated_at=self.model.updated_at,
            snapshot_at=time.time(),
        )
        added, removed = self.records.changes()
        snapshots.add_snapshot(write, snap, added, removed)
        return log_id

    def _snapshot_written(self, log_id: str) -> None:
        self.records.mark_persisted()
        self._state_changed = False
        self._snapshot_log_id = log_id
        self.telemetry.snapshots.labels("ok").inc()
        self._snapshot.done(self.model.step, time.monotonic())

    async def _write_snapshot(self, now: float, final: bool = False) -> None:
        write = FencedWrite(self.fence)
        log_id = await self._add_snapshot(write)
        if not len(write):
            return
        try:
            await write.run(self.redis)
        except (*UNREACHABLE, RedisError) as exc:
            self.telemetry.snapshots.labels("error").inc()
            self._snapshot.failed(now)
            self._snapshot_refused(exc)
            if final:
                raise
            return
        self._snapshot_written(log_id)

    def _snapshot_refused(self, exc: BaseException) -> None:
        """Say whose problem a failed snapshot is. A lost connection may be an outage (the
        health monitor confirms it with a ping of its own: a value too big resets only its
        own connection); out of memory is Redis's; any other refusal is this model's
        alone: its log grows until a snapshot is accepted, the other models carry on."""
        name, retry = self.model.name, self._snapshot.retry_at - time.monotonic()
        if isinstance(exc, UNREACHABLE):
            self.health.mark_down(exc)
            logger.warning("model %s: snapshot failed (%s); retrying in %.1f s", name, exc, retry)
        elif is_out_of_memory(exc):
            self.health.note_refusal(exc)
            logger.warning(
                "model %s: snapshot refused, Redis is out of memory; retrying in %.1f s", name, retry
            )
        else:
            logger.warning(
                "model %s: Redis refused this model's snapshot (%s): a problem of this model only, "
                "the others are unaffected; its log grows until a snapshot is accepted; retrying in %.1f s",
                name,
                exc,
                retry,
            )

    async def _publish_stats(self, now: float) -> None:
        # Only this task applies steps, so both reads see the same step.
        (step, layers), (_, metrics) = await self._lanes.write(
            lambda: (self.model.read_stats(), self.model.read_metrics())
        )
        write = FencedWrite(self.fence)
        summaries = stats.add_stats(write, step, layers, self.settings.STATS_HISTORY, metrics)
        try:
            await write.run(self.redis)
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

    # --------------------------------------------------------------------- bell
    async def _listen_bell(self) -> None:
        """Wake the writer when another replica appends to the log."""
        backoff = _RETRY_FIRST
        while not self._exiting:
            try:
                # One item per call (BLMPOP would take many, but needs Redis 7): when more
                # are queued the next call returns at once, while the writer works.
                rang = await self.redis.blpop([self._bell_key], timeout=_BELL_BLOCK_SECONDS)
                backoff = _RETRY_FIRST
            except (*UNREACHABLE, RedisError):
                self._must_read = True  # items may have been popped and lost
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                continue
            if rang is None:
                continue
            try:
                self._bell_items.append(log.parse_bell_item(rang[1]))
            except (ValueError, TypeError, KeyError, AssertionError):
                self._must_read = True  # not an item this version understands: read the log
            self._remote_pending = True
            self._wake.set()

    # ------------------------------------------------------------------ answers
    def _count(self, applied: list[Applied]) -> None:
        """Count a group's steps and rolled-back steps: once per group, not per request."""
        learned = nonfinite = 0
        for a in applied:
            outcome = a.answer.outcome
            if outcome is not None and not a.answer.replayed:
                learned += outcome.applied
                nonfinite += outcome.error is not None
        if learned:
            self.telemetry.samples_learned.inc(learned)
        if nonfinite:
            self.telemetry.nonfinite_steps.inc(nonfinite)
        if learned or nonfinite:
            self.telemetry.watch.count_learned(self.model.name, learned, nonfinite)

    def _refuse_unavailable(self, jobs: list[LearnJob]) -> None:
        self.telemetry.learn_unavailable.inc(len(jobs))
        self.telemetry.watch.count_unavailable(self.model.name, len(jobs))
        _fail(
            jobs, UnavailableError("Redis is unreachable: the sample was not logged, so it was not applied")
        )


def _key_reused(key: str) -> InvalidInputError:
    return InvalidInputError(f"Idempotency-Key {key!r} was already used for a different request")


def _fail(jobs: list[LearnJob], error: ServiceError) -> None:
    for job in jobs:
        _reject(job, error)


def _resolve(job: LearnJob, answer: Answer) -> None:
    if not job.future.done():
        job.future.set_result(answer)


def _reject(job: LearnJob, error: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(error)
