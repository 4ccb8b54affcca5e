"""When to retry a failed call, and how long to wait first: pure decisions, no I/O.

A retry must never apply a learn twice. So a call is retried after a failure only if
the service certainly did nothing (the connection was never made; 429 and 503 are
answered before anything is logged), or if re-sending it is harmless: reads,
predictions, and learns that carry an ``Idempotency-Key`` the service remembers.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

#: Retries after the first attempt.
DEFAULT_MAX_RETRIES = 3
#: Backoff before the first retry (seconds); doubles each retry...
INITIAL_RETRY_DELAY = 0.5
#: ...up to this cap (seconds).
MAX_RETRY_DELAY = 8.0
#: A server's ``Retry-After`` is honoured up to this many seconds.
MAX_RETRY_AFTER = 60.0
#: Each delay is shortened by up to this fraction at random, so clients spread out.
RETRY_JITTER = 0.25

#: Answers that say the request was refused before any work: safe to re-send anything.
RETRY_STATUSES = frozenset({429, 503})
#: A proxy lost the answer, so the request may have been applied: re-send only if harmless.
AMBIGUOUS_STATUSES = frozenset({502, 504})
#: Transport failures before the request left: the service never saw it.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
#: Transport failures after (part of) the request may have arrived.
AMBIGUOUS_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how patiently to retry; ``max_retries=0`` disables retries."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    max_retry_after: float = MAX_RETRY_AFTER
    jitter: float = RETRY_JITTER

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (got {self.max_retries})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1] (got {self.jitter})")

    def should_retry_status(self, status: int, *, resend_safe: bool) -> bool:
        return status in RETRY_STATUSES or (resend_safe and status in AMBIGUOUS_STATUSES)

    def should_retry_error(self, exc: Exception, *, resend_safe: bool) -> bool:
        if isinstance(exc, NOT_SENT_ERRORS):
            return True
        return resend_safe and isinstance(exc, AMBIGUOUS_ERRORS)

    def backoff(self, retries_done: int, rand: Callable[[], float] = random.random) -> float:
        """Capped exponential backoff with jitter: ``initial * 2**n``, at most ``max_delay``."""
        base = min(self.max_delay, self.initial_delay * (2.0**retries_done))
        return base * (1.0 - self.jitter * rand())

    def delay(
        self,
        retries_done: int,
        response: httpx.Response | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The wait before the next try: the server's ``Retry-After`` if it gave one
        (capped at ``max_retry_after``), else the backoff."""
        if response is not None:
            after = parse_retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_retry_after)
        return self.backoff(retries_done, rand)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
