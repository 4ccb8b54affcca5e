"""The retry policy: what is retried, how long the client waits, and that a learn is
re-sent only with its original Idempotency-Key."""

from __future__ import annotations

import asyncio
import email.utils
import uuid

import httpx
import pytest

from clients import (
    APIConnectionError,
    APITimeoutError,
    ConflictError,
    InternalServerError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)
from clients.retry import INITIAL_RETRY_DELAY, MAX_RETRY_AFTER, MAX_RETRY_DELAY, parse_retry_after
from tests.clients.mocks import LEARNED, MODEL, mock_async_client, mock_client, sequence

SPEC = {"name": "m", "task": "classification", "input_shape": [4], "num_classes": 3}


def _unavailable(retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json={"detail": "Redis is unreachable"}, headers=headers)


# ----------------------------------------------------------------- the policy itself
def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(jitter=0.0)
    delays = [policy.backoff(n) for n in range(12)]
    assert delays[0] == INITIAL_RETRY_DELAY
    assert delays[1] == 2 * INITIAL_RETRY_DELAY
    assert max(delays) == MAX_RETRY_DELAY
    assert delays[-1] == MAX_RETRY_DELAY
    assert delays == sorted(delays)


def test_jitter_only_shortens_within_its_fraction() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=1.0, jitter=0.25)
    assert policy.backoff(0, rand=lambda: 0.0) == 1.0
    assert policy.backoff(0, rand=lambda: 1.0) == 0.75
    samples = {policy.backoff(0) for _ in range(200)}
    assert all(0.75 <= s <= 1.0 for s in samples)
    assert len(samples) > 100  # really random


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy()
    assert policy.delay(0, _unavailable("3")) == 3.0
    assert policy.delay(5, _unavailable("0.25")) == 0.25
    assert policy.delay(0, _unavailable("86400")) == MAX_RETRY_AFTER
    no_header = policy.delay(0, _unavailable())
    assert no_header <= INITIAL_RETRY_DELAY


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now=lambda: now) == pytest.approx(7.0)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2.0)


# ------------------------------------------------------------ what the client retries
def test_503_is_retried_then_succeeds_with_retry_after() -> None:
    client, rec = mock_client(
        sequence(_unavailable("1"), _unavailable("2"), httpx.Response(200, json=LEARNED))
    )
    result = client.learn_one("m", [1, 2, 3, 4], 1)
    assert result.step == 1
    assert len(rec.requests) == 3
    assert rec.sleeps == [1.0, 2.0]


def test_429_is_retried_even_for_create() -> None:
    limited = httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "4"})
    client, rec = mock_client(sequence(limited, httpx.Response(201, json=MODEL)))
    assert client.create_model(SPEC).name == "m"
    assert rec.sleeps == [4.0]


def test_retries_run_out_with_capped_backoff() -> None:
    client, rec = mock_client(
        sequence(*[_unavailable() for _ in range(7)]),
        retry_policy=RetryPolicy(max_retries=6, initial_delay=1.0, max_delay=4.0, jitter=0.0),
    )
    with pytest.raises(ServiceUnavailableError) as info:
        client.get_model("m")
    assert info.value.message == "Redis is unreachable"
    assert len(rec.requests) == 7
    assert rec.sleeps == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_rate_limit_raised_once_retries_run_out() -> None:
    client, rec = mock_client(
        sequence(*[httpx.Response(429, json={"detail": "too many"}) for _ in range(3)]), max_retries=2
    )
    with pytest.raises(RateLimitError, match="too many"):
        client.stats("m")
    assert len(rec.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 500])
def test_answers_that_are_not_retried(status: int) -> None:
    client, rec = mock_client(lambda r: httpx.Response(status, json={"detail": "no"}))
    with pytest.raises(Exception, match="no"):
        client.learn_one("m", [0.0], 0)
    assert len(rec.requests) == 1
    assert rec.sleeps == []


def test_max_retries_zero_disables_retries() -> None:
    client, rec = mock_client(sequence(_unavailable()), max_retries=0)
    with pytest.raises(ServiceUnavailableError):
        client.metrics("m")
    assert len(rec.requests) == 1


def test_connect_error_is_retried_for_any_call() -> None:
    """The request never left: even a create (not idempotent) is safe to send again."""
    refused = httpx.ConnectError("connection refused")
    client, rec = mock_client(sequence(refused, refused, httpx.Response(201, json=MODEL)))
    assert client.create_model(SPEC).name == "m"
    assert len(rec.requests) == 3


def test_connect_error_raised_as_connection_error_when_retries_run_out() -> None:
    client, rec = mock_client(sequence(*[httpx.ConnectError("refused")] * 4))
    with pytest.raises(APIConnectionError) as info:
        client.list_models()
    assert info.value.status_code is None
    assert len(rec.requests) == 4


def test_read_timeout_on_create_is_not_retried() -> None:
    """The model may exist now: re-sending would answer a confusing 409."""
    client, rec = mock_client(sequence(httpx.ReadTimeout("slow"), httpx.Response(201, json=MODEL)))
    with pytest.raises(APITimeoutError):
        client.create_model(SPEC)
    assert len(rec.requests) == 1


def test_dropped_connection_on_delete_is_not_retried() -> None:
    client, rec = mock_client(sequence(httpx.RemoteProtocolError("dropped"), httpx.Response(204)))
    with pytest.raises(APIConnectionError):
        client.delete_model("m")
    assert len(rec.requests) == 1


def test_read_timeout_on_reads_and_predictions_is_retried() -> None:
    prediction = httpx.Response(200, json={"prediction": 1, "probabilities": [0.2, 0.8], "step": 3})
    client, rec = mock_client(sequence(httpx.ReadTimeout("slow"), prediction))
    assert client.predict_one("m", [0.0]).prediction == 1
    assert len(rec.requests) == 2


def test_ambiguous_learn_is_resent_with_the_same_idempotency_key() -> None:
    client, rec = mock_client(
        sequence(
            httpx.ReadTimeout("slow"),
            httpx.RemoteProtocolError("dropped"),
            httpx.Response(200, json=LEARNED, headers={"Idempotent-Replayed": "true"}),
            httpx.Response(200, json=LEARNED),
        )
    )
    result = client.learn_one("m", [0.0], 0)
    assert result.replayed is True
    keys = [r.headers["Idempotency-Key"] for r in rec.requests]
    assert len(keys) == 3 and len(set(keys)) == 1
    uuid.UUID(keys[0])
    assert rec.requests[0].content == rec.requests[2].content

    client.learn_one("m", [0.0], 0)  # a new request: a new key
    assert rec.requests[-1].headers["Idempotency-Key"] != keys[0]


def test_learn_batch_retry_reuses_its_key_and_each_batch_has_its_own() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow")
        return httpx.Response(200, json={"step": 1, "results": [LEARNED]})

    client, _ = mock_client(handler, batch_size=1)
    client.learn_many("m", [[0.0], [1.0]], [0, 1])
    keys = [r.headers["Idempotency-Key"] for r in calls]
    assert keys[0] == keys[1] != keys[2]
    assert len(calls) == 3


def test_caller_chosen_idempotency_key_is_sent() -> None:
    client, rec = mock_client(lambda r: httpx.Response(200, json=LEARNED))
    client.learn_one("m", [0.0], 0, idempotency_key="order-17")
    assert rec.requests[0].headers["Idempotency-Key"] == "order-17"


def test_retry_learns_false_never_resends_after_ambiguous_failure() -> None:
    client, rec = mock_client(
        sequence(httpx.ReadTimeout("slow"), httpx.Response(200, json=LEARNED)), retry_learns=False
    )
    with pytest.raises(APITimeoutError, match="may have been applied"):
        client.learn_one("m", [0.0], 0)
    assert len(rec.requests) == 1


def test_retry_learns_false_still_retries_what_was_not_applied() -> None:
    client, rec = mock_client(
        sequence(httpx.ConnectError("refused"), _unavailable("0"), httpx.Response(200, json=LEARNED)),
        retry_learns=False,
    )
    assert client.learn_one("m", [0.0], 0).step == 1
    assert len(rec.requests) == 3


@pytest.mark.parametrize("status", [502, 504])
def test_proxy_errors_retried_only_when_resending_is_harmless(status: int) -> None:
    client, rec = mock_client(
        sequence(httpx.Response(status, text="bad gateway"), httpx.Response(200, json=MODEL))
    )
    assert client.get_model("m").name == "m"
    assert len(rec.requests) == 2

    client, rec = mock_client(
        sequence(httpx.Response(status, text="bad gateway"), httpx.Response(201, json=MODEL))
    )
    with pytest.raises(InternalServerError, match="bad gateway"):
        client.create_model(SPEC)
    assert len(rec.requests) == 1


def test_async_client_follows_the_same_policy() -> None:
    async def run() -> None:
        client, rec = mock_async_client(
            sequence(_unavailable("1.5"), httpx.ReadTimeout("slow"), httpx.Response(200, json=LEARNED))
        )
        async with client:
            result = await client.learn_one("m", [0.0], 0)
        assert result.step == 1
        assert rec.sleeps[0] == 1.5 and len(rec.sleeps) == 2
        assert len({r.headers["Idempotency-Key"] for r in rec.requests}) == 1

        client, rec = mock_async_client(sequence(httpx.ReadTimeout("slow")))
        with pytest.raises(APITimeoutError):
            await client.create_model(SPEC)
        client, rec = mock_async_client(sequence(httpx.Response(409, json={"detail": "taken"})))
        with pytest.raises(ConflictError, match="taken"):
            await client.create_model(SPEC)
        assert len(rec.requests) == 1

    asyncio.run(run())
