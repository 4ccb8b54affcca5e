"""The models this replica serves (all of those in the catalog): created, found by name,
deleted, and kept in step with the catalog in Redis. Each is a :class:`ModelHandle`,
whose learns go to its writer while this replica owns it and through the log otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
import torch
from redis.asyncio import Redis
from redis.exceptions import RedisError

from model.budget import estimate_memory, format_bytes
from model.learner import OnlineLearner
from model.spec import ModelSpec
from model.stream_state import StreamLayout
from service import executors
from service.answers import Answer
from service.config import Settings
from service.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError, UnavailableError
from service.follower import FollowerCopy
from service.label_telemetry import label_telemetry
from service.live import LiveModel
from service.remote import RemoteLearns
from service.store import catalog, events, log, snapshots
from service.store.connection import UNREACHABLE, RedisHealth
from service.store.pending import LabelCounts
from service.telemetry import Telemetry
from service.writer import LearnJob, ModelWriter

logger = logging.getLogger(__name__)

#: Redis refuses a single value (the snapshot's state) above 512 MiB.
REDIS_VALUE_LIMIT = 512 * 1024 * 1024


class ModelHandle:
    """One model on this replica: its learner (authoritative while this replica owns the
    model, a follower copy otherwise), its writer while owned, its non-owner path."""

    def __init__(
        self,
        incarnation: str,
        layers: list[str],
        model: LiveModel,
        remote: RemoteLearns,
        follower: FollowerCopy,
    ) -> None:
        self.name = model.name
        self.incarnation = incarnation
        self.layers = layers  # the ON layers, as the model's meta lists them (its norm keys)
        self.model = model
        self.remote = remote
        self.follower = follower
        self.writer: ModelWriter | None = None
        self.unrecoverable: str | None = None  # why it cannot be served, if so
        self.spec_valid = True  # False: ``model`` is a placeholder, the spec itself is unreadable
        self.state_lock = asyncio.Lock()  # a takeover and a follower refresh never overlap
        self.label_counts: LabelCounts | None = None  # the delayed labels' figures last read

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def owned(self) -> bool:
        return self.writer is not None and self.writer.accepting

    def require_usable(self) -> None:
        if self.unrecoverable is not None:
            raise ConflictError(
                f"model {self.name!r} could not be recovered ({self.unrecoverable}); "
                "DELETE it to free the name"
            )

    async def submit(self, job: LearnJob) -> Answer:
        """Apply a validated learn here if this replica owns the model, else through the
        log; either way the answer is the owner's."""
        writer = self.writer
        if writer is not None and writer.accepting:
            writer.submit(job)
            return await job.future
        return await self.remote.learn(job)

    async def readable(self, max_age: float) -> None:
        """Make the learner fit to read: the owner's is current; a copy is refreshed
        when older than ``max_age``."""
        if self.owned:
            return
        async with self.state_lock:
            if not self.owned:
                await self.follower.ensure(max_age)


class Registry:
    """Name -> model, for every model in the catalog."""

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
        self.prefix = settings.KEY_PREFIX
        self.replica = settings.replica_id
        self._handles: dict[str, ModelHandle] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        # Set by the replica: claim a model placed here, and react to an unowned log.
        self.on_created: Callable[[ModelHandle], Awaitable[None]] | None = None
        self.on_unowned: Callable[[], None] = lambda: None
        self.keep_missing_until = 0.0  # after a data loss, models missing from the catalog stay a while

    # ------------------------------------------------------------------- lookups
    def handles(self) -> list[ModelHandle]:
        return [self._handles[name] for name in sorted(self._handles)]

    def local(self, name: str) -> ModelHandle | None:
        return self._handles.get(name)

    async def get(self, name: str) -> ModelHandle:
        """The model, also one created through another replica a moment ago; 404 if none."""
        handle = self._handles.get(name)
        if handle is not None:
            return handle
        try:
            incarnation = await catalog.listed_incarnation(self.redis, self.prefix, name)
        except (*UNREACHABLE, RedisError) as exc:
            raise UnavailableError(f"Redis is unreachable: cannot look model {name!r} up ({exc})") from exc
        if incarnation is None:
            raise NotFoundError(f"no model named {name!r}")
        handle = await self.open(name, incarnation)
        if handle is None:
            raise NotFoundError(f"no model named {name!r}")
        return handle

    async def open(self, name: str, incarnation: str) -> ModelHandle | None:
        """Add (or replace, for a new incarnation) the handle of a listed model."""
        lock = self._opening.setdefault(name, asyncio.Lock())
        async with lock:
            current = self._handles.get(name)
            if current is not None and current.incarnation == incarnation:
                return current
            if current is not None and current.writer is not None:
                return current  # owned: its writer finds out about the new incarnation itself
            handle = await self._build(name, incarnation)
            if handle is None:
                return None
            if current is not None:
                await self._close(current, NotFoundError(f"model {name!r} was deleted and created again"))
            self._handles[name] = handle
            self.telemetry.models.set(len(self._handles))
            return handle

    async def _build(self, name: str, incarnation: str) -> ModelHandle | None:
        meta = await catalog.read_meta(self.redis, self.prefix, name)
        spec_json = await catalog.read_spec(self.redis, self.prefix, name)
        if meta.get("inc") != incarnation or spec_json is None:
            return None
        created_at = float(meta.get("created_at") or time.time())
        layers = [str(x) for x in orjson.loads(meta.get("layers") or "[]")]
        try:
            spec = ModelSpec.from_stored(spec_json)
        except ValueError as exc:
            logger.error("model %s cannot be served: its spec is invalid here: %s", name, exc)
            return self._broken(name, incarnation, layers, created_at, f"its spec is invalid: {exc}")
        try:  # the limits may have been lowered since it was created: never allocate the impossible
            self.check_budget(spec)
        except InvalidInputError as exc:
            logger.error("model %s cannot be served here: %s", name, exc.detail)
            return self._broken(name, incarnation, layers, created_at, f"it is too big here: {exc.detail}")
        try:
            learner = await asyncio.to_thread(OnlineLearner, spec, self.device)
        except ValueError as exc:
            logger.error("model %s cannot be served: its spec is invalid here: %s", name, exc)
            return self._broken(name, incarnation, layers, created_at, f"its spec is invalid: {exc}")
        return self._handle(incarnation, layers, self._live(name, learner, created_at))

    def _live(self, name: str, learner: OnlineLearner, created_at: float) -> LiveModel:
        return LiveModel(
            name,
            learner,
            created_at,
            stream_ttl_seconds=self.settings.STREAM_TTL_SECONDS,
            max_streams=self.settings.MAX_STREAMS,
            label_ttl_seconds=self.settings.LABEL_TTL_SECONDS,
            max_pending_stream_labels=self.settings.MAX_PENDING_STREAM_LABELS,
        )

    def _handle(self, incarnation: str, layers: list[str], model: LiveModel) -> ModelHandle:
        name = model.name
        remote = RemoteLearns(
            name,
            incarnation,
            redis=self.redis,
            health=self.health,
            prefix=self.prefix,
            replica=self.replica,
            timeout=self.settings.REMOTE_TIMEOUT_SECONDS,
            on_gone=lambda: self.gone_error(name),
            on_unowned=lambda: self.on_unowned(),
        )
        follower = FollowerCopy(model, remote, self.redis, self.prefix)
        return ModelHandle(incarnation, layers, model, remote, follower)

    def _broken(
        self, name: str, incarnation: str, layers: list[str], created_at: float, why: str
    ) -> ModelHandle:
        """A handle for a model that cannot be served: GET says why, DELETE removes it."""
        placeholder = OnlineLearner({"name": name, "task": "regression", "input_shape": [1]})
        handle = self._handle(incarnation, layers, LiveModel(name, placeholder, created_at))
        handle.unrecoverable = why
        handle.spec_valid = False
        return handle

    async def gone_error(self, name: str) -> ServiceError:
        """What to answer when a model's keys vanished: deleted (404), or lost by Redis
        and about to be re-persisted by its owner (503: retry)."""
        try:
            listed = await catalog.listed_incarnation(self.redis, self.prefix, name)
        except (*UNREACHABLE, RedisError):
            listed = None
        if listed is None and time.monotonic() > self.keep_missing_until:
            await self.drop(name, NotFoundError(f"model {name!r} was deleted"))
            return NotFoundError(f"no model named {name!r}")
        return UnavailableError(f"model {name!r} is missing from Redis (it lost data?); retry shortly")

    # ------------------------------------------------------------- the catalog
    async def sync_catalog(self) -> dict[str, str]:
        """Follow the catalog: open models created elsewhere, drop models deleted elsewhere."""
        listing = await catalog.list_models(self.redis, self.prefix)
        for name, incarnation in listing.items():
            handle = self._handles.get(name)
            if handle is None or handle.incarnation != incarnation:
                await self.open(name, incarnation)
        if time.monotonic() > self.keep_missing_until:
            for name in [n for n, h in self._handles.items() if n not in listing and h.writer is None]:
                await self.drop(name, NotFoundError(f"model {name!r} was deleted"))
        return listing

    # ------------------------------------------------------------- create/delete
    def check_budget(self, spec: ModelSpec) -> None:
        """Refuse a spec whose learner cannot exist here, before anything is logged for it."""
        est = estimate_memory(spec)
        limit = self.settings.MAX_MODEL_BYTES
        streams = 0
        windows = self.settings.MAX_STREAMS + self.settings.MAX_PENDING_STREAM_LABELS
        if spec.network.stateful:  # every live stream's window is held, and snapshotted, and
            # so is the window of every step that waits for a late label
            streams = windows * StreamLayout.of(spec).max_nbytes
        if est.training_bytes + streams > limit:
            raise InvalidInputError(
                f"the model needs about {format_bytes(est.training_bytes)} to train (weights "
                f"{format_bytes(est.parameters)}, optimizer state {format_bytes(est.optimizer_state)}, "
                f"one step's activations {format_bytes(est.activations)}, the largest "
                f"{format_bytes(est.largest_activation)}); the limit is {format_bytes(limit)} "
                "(ONLINENORM_MAX_MODEL_BYTES)"
                + (
                    f", and its {self.settings.MAX_STREAMS} streams and "
                    f"{self.settings.MAX_PENDING_STREAM_LABELS} steps waiting for labels up to "
                    f"{format_bytes(streams)}"
                    if streams
                    else ""
                )
            )
        if est.state_bytes + streams > REDIS_VALUE_LIMIT:
            raise InvalidInputError(
                f"the model's state would be about {format_bytes(est.state_bytes + streams)}"
                + (
                    f" with {windows} full stream windows (ONLINENORM_MAX_STREAMS streams and "
                    "ONLINENORM_MAX_PENDING_STREAM_LABELS steps waiting for labels)"
                    if streams
                    else ""
                )
                + f", over the {format_bytes(REDIS_VALUE_LIMIT)} one Redis value can hold"
            )

    async def create(self, spec: ModelSpec) -> ModelHandle:
        """Build the learner, persist spec and first snapshot, list it, then claim it if
        it is placed on this replica."""
        if not self.health.up:
            raise UnavailableError("Redis is unreachable; try again when it is back")
        self.check_budget(spec)
        try:
            learner = await asyncio.to_thread(OnlineLearner, spec, self.device)
        except ValueError as exc:
            raise InvalidInputError(f"invalid spec: {exc}") from exc
        now = time.time()
        state = await asyncio.to_thread(learner.state_bytes)
        snap = snapshots.Snapshot(state, 0, log.START_ID, now, None, now)
        incarnation = uuid.uuid4().hex
        try:
            existing = await catalog.create_model(
                self.redis,
                self.prefix,
                spec.name,
                incarnation,
                spec.model_dump_json().encode(),
                snap,
                learner.layer_names(),
            )
        except (*UNREACHABLE, RedisError) as exc:
            self._redis_failed(exc)
            raise UnavailableError(f"Redis failed ({exc}): the model may not have been created") from exc
        if existing is not None:
            raise ConflictError(f"a model named {spec.name!r} already exists")
        layers = learner.layer_names()
        handle = self._handle(incarnation, layers, self._live(spec.name, learner, now))
        handle.follower.set_current(log.START_ID, log.START_ID)
        previous = self._handles.get(spec.name)
        if previous is not None:
            await self._close(previous, NotFoundError(f"model {spec.name!r} was deleted"))
        self._handles[spec.name] = handle
        self.telemetry.models.set(len(self._handles))
        await self._publish(events.CREATED, spec.name)
        if self.on_created is not None:
            await self.on_created(handle)
        return handle

    async def delete(self, name: str) -> None:
        """Stop the model's writer here (queued learns get 404), remove its keys, unlist it."""
        handle = await self.get(name)
        if not self.health.up:
            raise UnavailableError("Redis is unreachable; try again when it is back")
        if handle.writer is not None:
            await handle.writer.stop("deleted", discard=NotFoundError(f"model {name!r} was deleted"))
        try:
            await catalog.delete_model(self.redis, self.prefix, name, handle.incarnation, handle.layers)
        except (*UNREACHABLE, RedisError) as exc:
            self._redis_failed(exc)
            self.on_unowned()  # its writer is stopped: let the replica take it back
            raise UnavailableError(f"Redis failed ({exc}): the model was not deleted") from exc
        await self.drop(name, NotFoundError(f"model {name!r} was deleted"))
        await self._publish(events.DELETED, name)

    async def drop(self, name: str, error: ServiceError) -> None:
        """Forget a model that no longer exists; whoever waits on it gets ``error``."""
        handle = self._handles.pop(name, None)
        if handle is None:
            return
        await self._close(handle, error)
        self.telemetry.models.set(len(self._handles))
        self.telemetry.watch.forget_model(name)
        label_telemetry(self.telemetry).remove(name)

    async def _close(self, handle: ModelHandle, error: ServiceError) -> None:
        if handle.writer is not None:
            await handle.writer.stop("deleted", discard=error)
        await handle.remote.close(error)
        executors.close(handle.model)  # its threads end once what is queued has run

    async def _publish(self, kind: str, subject: str) -> None:
        await events.announce(self.redis, self.prefix, kind, subject, self.replica)

    def _redis_failed(self, exc: Exception) -> None:
        if isinstance(exc, UNREACHABLE):
            self.health.mark_down(exc)
