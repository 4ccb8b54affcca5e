"""The SDK's delayed labels against the REAL service: predict with label_later, label
later (one and many, sync and async), and the errors a user meets."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from clients import AsyncClient, Client, ConflictError, NotFoundError, ValidationError
from tests.clients.conftest import WRITE_KEY, LiveService


def _spec(name: str) -> dict:
    return {"name": name, "task": "classification", "input_shape": [4], "num_classes": 3}


def test_predict_now_label_later(client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    xs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    first = client.predict_one(model_name, xs[0], label_later=True)
    assert first.prediction_id and first.step == 0
    mine = client.predict_one(model_name, xs[1], prediction_id="evt-2")
    assert mine.prediction_id == "evt-2"
    rest = client.predict_many(model_name, xs[2:], label_later=True)
    assert all(p.prediction_id for p in rest)
    learned = client.label(model_name, first.prediction_id, 1)
    assert learned.step == 1 and learned.prediction == first.prediction
    many = client.label_many(model_name, {"evt-2": 0, **{p.prediction_id: 2 for p in rest}})
    assert [r.step for r in many] == [2, 3, 4, 5]
    assert [r.prediction for r in many] == [mine.prediction] + [p.prediction for p in rest]
    with pytest.raises(ConflictError, match="labelled already"):
        client.label(model_name, "evt-2", 0)
    with pytest.raises(NotFoundError, match="unknown"):
        client.label(model_name, "never", 0)
    with pytest.raises(ConflictError):
        client.predict_one(model_name, xs[0], prediction_id="evt-2")
    assert client.metrics(model_name).model_extra["labels_received"] == 5


def test_non_finite_values_are_refused_before_sending(client: Client, model_name: str) -> None:
    client.create_model(_spec(model_name))
    with pytest.raises(ValidationError, match=r"x\[2\] is nan"):
        client.learn_one(model_name, [0.0, 1.0, math.nan, 2.0], 1)
    with pytest.raises(ValidationError, match=r"y is inf"):
        client.learn_one(model_name, [0.0, 1.0, 1.0, 2.0], math.inf)
    with pytest.raises(ValidationError, match=r"samples\[1\]\.x\[0\]"):
        client.learn_many(model_name, [[0.0] * 4, [math.inf, 0, 0, 0]], [0, 1])
    with pytest.raises(ValidationError, match=r"x\[3\]"):
        client.predict_one(model_name, np.array([0, 0, 0, np.nan]))
    with pytest.raises(ValidationError, match=r"labels\[0\]\.y"):
        client.label_many(model_name, [("a", math.nan)])
    assert client.get_model(model_name).step == 0


def test_async_labels(live_service: LiveService, model_name: str) -> None:
    async def run() -> None:
        async with AsyncClient(live_service.url, api_key=WRITE_KEY) as client:
            await client.create_model(_spec(model_name))
            try:
                p = await client.predict_one(model_name, [1.0, 2.0, 3.0, 4.0], label_later=True)
                assert p.prediction_id
                r = await client.label(model_name, p.prediction_id, 2)
                assert r.step == 1 and r.prediction == p.prediction
                ps = await client.predict_many(model_name, [[0.0] * 4, [1.0] * 4], label_later=True)
                rs = await client.label_many(model_name, [(q.prediction_id, 0) for q in ps])
                assert [x.step for x in rs] == [2, 3]
            finally:
                await client.delete_model(model_name)

    asyncio.run(run())


def test_stream_steps_sync_and_async(live_service: LiveService, client: Client, model_name: str) -> None:
    client.create_model(
        name=model_name,
        task="regression",
        input_shape=[1],
        network={"kind": "rnn", "stateful": True, "hidden": [4], "bptt": 3},
    )
    first = client.stream_step(model_name, "s-1", [0.5], 1.0)
    assert first.stream == "s-1" and first.t == 0 and first.step == 1 and first.loss is not None
    quiet = client.stream_step(model_name, "s-2", [0.1])
    assert quiet.loss is None and quiet.step == 1
    batch = client.stream_steps(
        model_name, [{"stream": "s-1", "x": [0.2], "y": 0.5}, {"stream": "s-2", "x": [0.3]}]
    )
    assert [(r.stream, r.t) for r in batch] == [("s-1", 1), ("s-2", 1)]
    assert client.stream_info(model_name, "s-1").t == 2
    client.reset_stream(model_name, "s-1")
    with pytest.raises(NotFoundError):
        client.stream_info(model_name, "s-1")
    with pytest.raises(ValidationError, match="x"):
        client.stream_step(model_name, "s-1", [math.nan])
    # Late labels: the step's window waits in the service until its label comes.
    waiting = client.stream_step(model_name, "s-2", [0.4], label_later=True)
    mine = client.stream_step(model_name, "s-2", [0.6], prediction_id="sdk-late-1")
    batch_later = client.stream_steps(model_name, [{"stream": "s-4", "x": [0.1], "label_later": True}])
    assert waiting.prediction_id and mine.prediction_id == "sdk-late-1" and batch_later[0].prediction_id
    learned = client.label(model_name, waiting.prediction_id, 0.25)
    assert learned.prediction == waiting.prediction and learned.loss is not None
    both = client.label_many(model_name, [("sdk-late-1", 0.5), (batch_later[0].prediction_id, 0.0)])
    assert [r.prediction for r in both] == [mine.prediction, batch_later[0].prediction]
    with pytest.raises(ConflictError):
        client.label(model_name, "sdk-late-1", 0.5)

    async def run() -> None:
        async with AsyncClient(live_service.url, api_key=WRITE_KEY) as aclient:
            r = await aclient.stream_step(model_name, "s-1", [0.5], 1.0)
            assert r.t == 0  # after the reset
            rs = await aclient.stream_steps(model_name, [{"stream": "s-3", "x": [1.0]}])
            assert rs[0].t == 0
            late = await aclient.stream_step(model_name, "s-3", [0.2], label_later=True)
            assert late.prediction_id is not None
            assert (await aclient.label(model_name, late.prediction_id, 1.0)).prediction == late.prediction
            assert {s.stream for s in await aclient.list_streams(model_name)} == {"s-1", "s-2", "s-3", "s-4"}
            await aclient.reset_stream(model_name, "s-3")
            assert (await aclient.stream_info(model_name, "s-2")).t == 4

    asyncio.run(run())
