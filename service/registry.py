"""The models this process serves: created, recovered at start-up, deleted, and found
by name. Each is a :class:`LiveModel` with its :class:`ModelWriter`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch
from redis.asyncio import Redis
from redis.exceptions import RedisError

from model.learner import OnlineLearner
from model.spec import ModelSpec
from service.config import Settings
from service.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from service.idempotency import IdempotencyRecords
from service.live import LiveModel
from service.store import catalog, keys, log, snapshots
from service.store.connection import UNREACHABLE, RedisHealth
from service.telemetry import Telemetry
from service.writer import ModelWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelHandle:
    model: LiveModel
    writer: ModelWriter


class Registry:
    """Name -> model. Creation and deletion are serialized; lookups are plain dict reads."""

    def __init__(
        self,
        redis: Redis,
        health: RedisHealth,
        settings: Settings,
        telemetry: Telemetry,
        device: torch.device,
    ) -> None:
        self.redis = redis
        self.health = health
        self.settings = settings
        self.telemetry = telemetry
        self.device = device
        self._prefix = settings.KEY_PREFIX
        self._handles: dict[str, ModelHandle] = {}
        self._changing = asyncio.Lock()

    def get(self, name: str) -> ModelHandle:
        handle = self._handles.get(name)
        if handle is None:
            raise NotFoundError(f"no model named {name!r}")
        return handle

    def handles(self) -> list[ModelHandle]:
        return [self._handles[name] for name in sorted(self._handles)]

    def _add(self, handle: ModelHandle) -> None:
        self._handles[handle.model.name] = handle
        handle.writer.start()
        self.telemetry.models.set(len(self._handles))

    def _writer(
        self, model: LiveModel, last_id: str, records: IdempotencyRecords, snap: snapshots.Snapshot
    ) -> ModelWriter:
        return ModelWriter(
            model,
            redis=self.redis,
            health=self.health,
            settings=self.settings,
            telemetry=self.telemetry,
            last_id=last_id,
            records=records,
            snapshot_step=snap.step,
            snapshot_log_id=snap.log_id,
        )

    # ------------------------------------------------------------------ recovery
    async def load_all(self) -> None:
        """Bring back every model: its snapshot, then the log entries after it, in order."""
        for name in await catalog.list_names(self.redis, self._prefix):
            started = time.perf_counter()
            try:
                handle, replayed = await self._load(name)
            except (*UNREACHABLE, RedisError):
                raise
            except Exception:
                logger.exception("model %s could not be recovered and is not served", name)
                continue
            self._add(handle)
            logger.info(
                "model %s recovered at step %d (%d log entries replayed) in %.2f s",
                name,
                handle.model.step,
                replayed,
                time.perf_counter() - started,
            )

    async def _load(self, name: str) -> tuple[ModelHandle, int]:
        spec_json = await catalog.read_spec(self.redis, self._prefix, name)
        if spec_json is None:
            raise ValueError(f"model {name} is listed but has no spec")
        snap = await snapshots.read_snapshot(self.redis, self._prefix, name)
        if snap is None:
            raise ValueError(f"model {name} has no snapshot")
        entries, rollbacks = await log.read_after(self.redis, keys.log_key(self._prefix, name), snap.log_id)

        def rebuild() -> tuple[LiveModel, list]:
            learner = OnlineLearner.from_state_bytes(snap.state, device=self.device)
            model = LiveModel(name, learner, snap.created_at, snap.updated_at)
            return model, model.replay(entries, rollbacks)

        model, outcomes = await asyncio.to_thread(rebuild)
        records = IdempotencyRecords.loads(snap.idempotency, self.settings.IDEMPOTENCY_KEYS)
        records.put_replayed(entries, outcomes)
        last_id = entries[-1].id if entries else snap.log_id
        return ModelHandle(model, self._writer(model, last_id, records, snap)), len(entries)

    # ------------------------------------------------------------- create/delete
    async def create(self, spec: ModelSpec) -> ModelHandle:
        """Build the learner, persist spec and initial snapshot, start its writer."""
        async with self._changing:
            if spec.name in self._handles:
                raise ConflictError(f"a model named {spec.name!r} already exists")
            self._require_redis()
            try:
                learner = await asyncio.to_thread(OnlineLearner, spec, self.device)
            except ValueError as exc:
                raise InvalidInputError(f"invalid spec: {exc}") from exc
            now = time.time()
            state = await asyncio.to_thread(learner.state_bytes)
            snap = snapshots.Snapshot(state, 0, log.START_ID, now, None, now, b"[]")
            spec_json = spec.model_dump_json().encode()
            try:
                created = await catalog.create_model(
                    self.redis, self._prefix, spec.name, spec_json, snap, learner.layer_names()
                )
            except (*UNREACHABLE, RedisError) as exc:
                self._redis_failed(exc)
                raise UnavailableError(f"Redis failed ({exc}): the model was not created") from exc
            if not created:
                raise ConflictError(f"a model named {spec.name!r} already exists")
            model = LiveModel(spec.name, learner, created_at=now)
            handle = ModelHandle(
                model,
                self._writer(model, log.START_ID, IdempotencyRecords(self.settings.IDEMPOTENCY_KEYS), snap),
            )
            self._add(handle)
            return handle

    async def delete(self, name: str) -> None:
        """Stop the model's writer (queued learns get 404), then remove all its keys."""
        async with self._changing:
            handle = self.get(name)
            self._require_redis()
            await handle.writer.stop(
                discard=NotFoundError(f"model {name!r} was deleted"), final_snapshot=False
            )
            try:
                await catalog.delete_model(self.redis, self._prefix, name, handle.model.layers)
            except (*UNREACHABLE, RedisError) as exc:
                handle.writer.start()
                self._redis_failed(exc)
                raise UnavailableError(f"Redis failed ({exc}): the model was not deleted") from exc
            del self._handles[name]
            self.telemetry.models.set(len(self._handles))
            self.telemetry.watch.forget_model(name)

    def _redis_failed(self, exc: Exception) -> None:
        if isinstance(exc, UNREACHABLE):
            self.health.mark_down(exc)

    def _require_redis(self) -> None:
        if not self.health.up:
            raise UnavailableError("Redis is unreachable; try again when it is back")

    async def close(self) -> None:
        """Apply what is queued and write a last snapshot of every model."""
        for handle in list(self._handles.values()):
            try:
                await handle.writer.stop(final_snapshot=self.settings.SNAPSHOT_ON_SHUTDOWN)
            except Exception:
                logger.exception("model %s: stopping its writer failed", handle.model.name)
        self._handles.clear()
