"""Becoming a model's owner: with its lease just acquired, load the snapshot and the
Idempotency-Key records of the same moment, replay the log after it exactly as it was
applied (the recorded rollbacks honoured), answer whoever waits on the replayed
entries, and start the writer where the replay ended.

The same procedure recovers a model at start-up, takes it over from a dead or paused
owner, and rebuilds it after its live state could not be trusted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from model.learner import LearnerCorruptedError
from service import executors
from service.answers import Answer
from service.applier import Applied, apply_entry
from service.config import Settings
from service.idempotency import IdempotencyRecords
from service.live import LiveModel
from service.registry import ModelHandle
from service.store import keys, log, snapshots
from service.store.connection import RedisHealth
from service.store.fencing import Fence, FencedError, FencedWrite
from service.store.leases import ModelGone
from service.telemetry import Telemetry
from service.writer import ModelWriter, WriterExit

logger = logging.getLogger(__name__)

_ATTEMPTS = 3


class Unrecoverable(Exception):
    """The model's persisted state cannot be loaded (a corrupt or foreign snapshot)."""


@dataclass(frozen=True)
class Context:
    redis: Redis
    health: RedisHealth
    settings: Settings
    telemetry: Telemetry

    def writer(
        self,
        handle: ModelHandle,
        fence: Fence,
        records: IdempotencyRecords,
        last_id: str,
        snapshot_step: int,
        snapshot_log_id: str,
        on_exit: Callable[[ModelWriter, WriterExit], None],
    ) -> ModelWriter:
        """The writer of ``handle``'s model under ``fence``, from log entry ``last_id`` on."""
        return ModelWriter(
            handle.model,
            fence=fence,
            redis=self.redis,
            health=self.health,
            settings=self.settings,
            telemetry=self.telemetry,
            records=records,
            last_id=last_id,
            snapshot_step=snapshot_step,
            snapshot_log_id=snapshot_log_id,
            deliver=handle.remote.deliver,
            on_exit=on_exit,
        )


def records_of(fields: dict[bytes, bytes], settings: Settings) -> IdempotencyRecords:
    window = int(settings.IDEMPOTENCY_SECONDS * 1000)
    return IdempotencyRecords.loads(fields, window, settings.IDEMPOTENCY_MAX_BYTES)


def _replay(
    model: LiveModel, snap: snapshots.Snapshot, read: log.LogRead, records: IdempotencyRecords
) -> tuple[list[Applied], bool]:
    """Worker thread: load the snapshot, apply the log after it. Stops at an entry whose
    optimizer update failed: ``(applied, True)``, the last one carrying its rollback."""
    try:
        model.load_state(snap.state, snap.updated_at)
    except ValueError as exc:
        raise Unrecoverable(f"its snapshot cannot be loaded: {exc}") from exc
    out: list[Applied] = []
    for entry in read.entries:
        try:
            out.append(apply_entry(model, records, entry, read.rollbacks.get(entry.id)))
        except LearnerCorruptedError as exc:
            out.append(Applied(entry, Answer(), log.Rollback(exc.index, f"the step failed ({exc})")))
            return out, True
    return out, False


async def take_over(
    handle: ModelHandle,
    fence: Fence,
    ctx: Context,
    on_exit: Callable[[ModelWriter, WriterExit], None],
) -> ModelWriter:
    """Rebuild ``handle``'s model from Redis under ``fence`` and return its writer (to start).
    Raises :class:`ModelGone`, :class:`Unrecoverable` or :class:`FencedError`."""
    prefix, name = fence.prefix, fence.name
    started = time.perf_counter()
    for _ in range(_ATTEMPTS):
        snap = await snapshots.read_snapshot(ctx.redis, prefix, name)
        if snap is None:
            raise ModelGone(name)
        records = records_of(await snapshots.read_records(ctx.redis, prefix, name), ctx.settings)
        read = await log.read_after(ctx.redis, keys.log_key(prefix, name), snap.log_id)
        model = handle.model
        applied, corrupted = await executors.of(model).write(_replay, model, snap, read, records)
        if corrupted:  # record where it failed, and replay again from the snapshot
            write = FencedWrite(fence)
            for a in applied:
                if a.rollback is not None:
                    write.xadd(keys.log_key(prefix, name), log.rollback_fields(a.entry.id, a.rollback))
            await write.run(ctx.redis)
            continue
        writer = ctx.writer(
            handle, fence, records, log.later(snap.log_id, read.last_id), snap.step, snap.log_id, on_exit
        )
        await writer.record_replay(applied)
        logger.info(
            "model %s: owned by this replica (token %s) at step %d, %d log entries replayed, in %.2f s",
            name,
            fence.token,
            model.step,
            len(read.entries),
            time.perf_counter() - started,
        )
        return writer
    raise Unrecoverable(f"its log kept failing to replay after {_ATTEMPTS} attempts")


__all__ = ["Context", "FencedError", "ModelGone", "Unrecoverable", "take_over"]
