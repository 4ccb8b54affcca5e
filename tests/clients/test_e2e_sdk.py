"""The SDK against the REAL service (subprocess) and a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import torch

from clients import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ValidationError,
)
from tests.clients.conftest import READ_KEY, WRITE_KEY, LiveService


def _spec(name: str, **overrides: object) -> dict:
    spec = {
        "name": name,
        "task": "classification",
        "input_shape": [4],
        "num_classes": 3,
        "network": {"hidden": [16]},
    }
    spec.update(overrides)
    return spec


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, 4)).astype(np.float32)
    ys = (xs[:, 0] > 0).astype(np.int64) + (xs[:, 1] > 1)
    return xs, ys


def test_model_lifecycle(client: Client, model_name: str) -> None:
    created = client.create_model(_spec(model_name))
    assert created.name == model_name and created.step == 0 and created.layers
    assert created.spec["num_classes"] == 3 and created.task == "classification"
    with pytest.raises(ConflictError, match="already exists"):
        client.create_model(_spec(model_name, seed=1))  # another spec under the name
    assert client.create_model(_spec(model_name)).name == model_name  # a retried create is no conflict
    assert model_name in [m.name for m in client.list_models()]
    assert client.get_model(model_name).spec["network"]["hidden"] == [16]
    client.delete_model(model_name)
    with pytest.raises(NotFoundError, match=model_name):
        client.get_model(model_name)
    with pytest.raises(NotFoundError):
        client.delete_model(model_name)


def test_learn_many_matches_one_step_per_sample_in_order(client: Client, model_name: str) -> None:
    """Chunked learn_many == learn_one after learn_one on an identical model."""
    twin = model_name + "-twin"
    client.create_model(_spec(model_name))
    client.create_model(_spec(twin))
    try:
        xs, ys = _data(23)
        many = client.learn_many(model_name, xs, ys, batch_size=5)
        ones = [client.learn_one(twin, x, y) for x, y in zip(torch.from_numpy(xs), ys.tolist(), strict=True)]
        assert [r.step for r in many] == list(range(1, 24))
        assert [r.prediction for r in many] == [r.prediction for r in ones]
        assert [r.loss for r in many] == pytest.approx([r.loss for r in ones], rel=1e-5)
        assert client.get_model(model_name).step == 23
        assert client.metrics(model_name).samples_seen == 23
    finally:
        client.delete_model(twin)


def test_predictions_stats_and_metrics(client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    xs, ys = _data(200)
    client.learn_many(model_name, xs, ys)
    one = client.predict_one(model_name, xs[0])
    assert one.prediction in (0, 1, 2) and one.probabilities is not None
    assert sum(one.probabilities) == pytest.approx(1.0, abs=1e-4)
    many = client.predict_many(model_name, xs[:7], batch_size=3)
    assert many[0].prediction == one.prediction and len(many) == 7
    stats = client.stats(model_name)
    assert stats.step == 200
    layer = stats.layers[0]
    assert layer.num_features == len(layer.mu) == len(layer.var) and layer.summary
    metrics = client.metrics(model_name)
    assert metrics.samples_seen == 200 and metrics.accuracy is not None and 0 <= metrics.accuracy <= 1


def test_server_messages_reach_the_exceptions(client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    with pytest.raises(ValidationError, match="x") as info:
        client.learn_one(model_name, [1.0, 2.0], 0)
    assert info.value.status_code == 422
    with pytest.raises(ValidationError, match="y"):
        client.learn_one(model_name, [1.0, 2.0, 3.0, 4.0], 7)
    with pytest.raises(ValidationError, match="num_classes"):
        client.create_model(_spec(model_name + "x", num_classes=None))
    with pytest.raises(PayloadTooLargeError, match="limit"):
        client.learn_many(model_name, np.zeros((1001, 4)), np.zeros(1001, dtype=int), batch_size=1001)
    with pytest.raises(NotFoundError):
        client.learn_one("no-such-model", [0, 0, 0, 0], 0)
    assert client.get_model(model_name).step == 0  # nothing of that was applied


def test_idempotency_key_replays_instead_of_applying_twice(client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    key = str(uuid.uuid4())
    first = client.learn_one(model_name, [0.1, 0.2, 0.3, 0.4], 1, idempotency_key=key)
    again = client.learn_one(model_name, [0.1, 0.2, 0.3, 0.4], 1, idempotency_key=key)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.step == first.step == 1 and again.loss == first.loss
    assert client.get_model(model_name).step == 1
    with pytest.raises(ValidationError, match="different request"):
        client.learn_one(model_name, [9.0, 9.0, 9.0, 9.0], 0, idempotency_key=key)


def test_api_keys(live_service: LiveService, client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    with (
        Client(live_service.url, api_key="") as anonymous,
        pytest.raises(AuthenticationError, match="Authorization"),
    ):
        anonymous.list_models()
    with Client(live_service.url, "wrong") as wrong, pytest.raises(AuthenticationError, match="invalid"):
        wrong.list_models()
    with Client(live_service.url, READ_KEY) as reader:
        assert reader.get_model(model_name).step == 0
        assert reader.predict_one(model_name, [0, 0, 0, 0]).prediction in (0, 1, 2)
        with pytest.raises(PermissionDeniedError, match="read-only"):
            reader.learn_one(model_name, [0, 0, 0, 0], 0)


def test_async_client_end_to_end(live_service: LiveService, model_name: str) -> None:
    async def run() -> None:
        async with AsyncClient(live_service.url, WRITE_KEY, batch_size=4) as client:
            assert (await client.health()).ok
            await client.create_model(_spec(model_name))
            xs, ys = _data(10)
            results = await client.learn_many(model_name, xs, ys)
            assert [r.step for r in results] == list(range(1, 11))
            assert len(await client.predict_many(model_name, xs)) == 10
            assert (await client.metrics(model_name)).samples_seen == 10
            assert (await client.stats(model_name)).step == 10
            await client.delete_model(model_name)
            with pytest.raises(NotFoundError):
                await client.get_model(model_name)

    asyncio.run(run())
