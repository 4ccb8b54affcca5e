"""What a learn request is answered with, wherever it was applied: the owner builds an
:class:`Answer` and either resolves its own request with it or publishes it (as bytes)
for the replica whose client waits, which answers with exactly the same body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.errors import ServiceError
from service.live import Outcome


class RelayedError(ServiceError):
    """An error the owner answered a request with, as the receiving replica re-raises it."""

    def __init__(self, status_code: int, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.status_code = status_code


@dataclass(frozen=True)
class SyncReply:
    """The owner applied a sync entry: its state is in the snapshot at ``log_id`` (which
    includes every entry up to ``through``, the sync entry itself)."""

    log_id: str
    through: str


@dataclass(frozen=True)
class Answer:
    outcome: Outcome | None = None
    replayed: bool = False  # answered from an Idempotency-Key record, not applied again
    error: ServiceError | None = None
    sync: SyncReply | None = None

    def to_bytes(self) -> bytes:
        if self.error is not None:
            e = self.error
            return orjson.dumps({"error": {"status": e.status_code, "detail": e.detail, "extra": e.extra}})
        if self.sync is not None:
            return orjson.dumps({"sync": [self.sync.log_id, self.sync.through]})
        assert self.outcome is not None
        return orjson.dumps({"outcome": self.outcome.to_json(), "replayed": self.replayed})

    @classmethod
    def from_bytes(cls, data: bytes) -> Answer:
        body = orjson.loads(data)
        if "error" in body:
            e = body["error"]
            return cls(error=RelayedError(e["status"], e["detail"], **e.get("extra", {})))
        if "sync" in body:
            return cls(sync=SyncReply(*body["sync"]))
        return cls(outcome=Outcome.from_json(body["outcome"]), replayed=bool(body["replayed"]))
