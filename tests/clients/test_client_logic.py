"""Client-only logic against a mock transport: requests built to the contract,
learn_many/predict_many chunking, conversion of numpy arrays and torch tensors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from clients import DEFAULT_BATCH_SIZE, Client
from clients._convert import to_json_value
from tests.clients.mocks import BASE, LEARNED, MODEL, learn_batch_echo, mock_async_client, mock_client


def _body(request: httpx.Request) -> dict:
    return json.loads(request.content)


def test_default_batch_size_is_the_services_default_limit() -> None:
    """Kept equal to ``ONLINENORM_MAX_BATCH_SAMPLES``' default, read without importing service/."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parents[2] / "service" / "config.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MAX_BATCH_SAMPLES":
            assert isinstance(node.value, ast.Call)
            assert ast.literal_eval(node.value.args[0]) == DEFAULT_BATCH_SIZE
            return
    pytest.fail("service/config.py has no MAX_BATCH_SAMPLES")


def test_every_endpoint_uses_the_contract_path_and_method() -> None:
    answers = {
        ("POST", "/v1/models"): httpx.Response(201, json=MODEL),
        ("GET", "/v1/models"): httpx.Response(200, json={"models": [MODEL]}),
        ("GET", "/v1/models/m"): httpx.Response(200, json=MODEL),
        ("DELETE", "/v1/models/m"): httpx.Response(204),
        ("POST", "/v1/models/m/learn"): httpx.Response(200, json=LEARNED),
        ("POST", "/v1/models/m/predict"): httpx.Response(200, json={"prediction": 2, "step": 1}),
        ("POST", "/v1/models/m/predict/batch"): httpx.Response(
            200, json={"step": 1, "predictions": [{"prediction": 2}]}
        ),
        ("GET", "/v1/models/m/stats"): httpx.Response(200, json={"step": 1, "layers": []}),
        ("GET", "/v1/models/m/metrics"): httpx.Response(
            200, json={"step": 1, "samples_seen": 1, "loss": 0.1}
        ),
        ("GET", "/healthz"): httpx.Response(200, json={"status": "ok"}),
        ("GET", "/readyz"): httpx.Response(503, json={"status": "unavailable", "redis": "down"}),
    }
    client, rec = mock_client(lambda r: answers[(r.method, r.url.path)])
    assert client.create_model(name="m", task="classification", input_shape=[4], num_classes=3).layers == [
        "input_norm"
    ]
    assert _body(rec.requests[-1]) == {
        "name": "m",
        "task": "classification",
        "input_shape": [4],
        "num_classes": 3,
    }
    assert [m.name for m in client.list_models()] == ["m"]
    info = client.get_model("m")
    assert info.task == "classification" and info.created_at is not None and info.created_at.year == 2025
    assert client.delete_model("m") is None
    assert client.learn_one("m", [1, 2, 3, 4], 2).prediction == 3
    assert _body(rec.requests[-1]) == {"x": [1, 2, 3, 4], "y": 2}
    assert client.predict_one("m", [1, 2, 3, 4]).prediction == 2
    assert [p.prediction for p in client.predict_many("m", [[1, 2, 3, 4]])] == [2]
    assert _body(rec.requests[-1]) == {"samples": [{"x": [1, 2, 3, 4]}]}
    assert client.stats("m").layers == []
    assert client.metrics("m").samples_seen == 1
    assert client.health().ok is True
    ready = client.health(ready=True)
    assert ready.ok is False and ready.redis == "down"
    assert len(rec.requests) == 11  # readyz's 503 is an answer, not retried


def test_spec_dict_and_keyword_fields_merge() -> None:
    client, rec = mock_client(lambda r: httpx.Response(201, json=MODEL))
    client.create_model(
        {"name": "a", "task": "classification", "norm": {"kind": "layer"}}, name="m", seed=None
    )
    assert _body(rec.requests[0]) == {"name": "m", "task": "classification", "norm": {"kind": "layer"}}


def test_model_names_are_quoted_into_one_path_segment() -> None:
    client, rec = mock_client(lambda r: httpx.Response(404, json={"detail": "no"}))
    with pytest.raises(Exception, match="no"):
        client.get_model("../../healthz")
    assert rec.requests[0].url.raw_path == b"/v1/models/..%2F..%2Fhealthz"


def test_headers_auth_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    client, rec = mock_client(lambda r: httpx.Response(200, json={"models": []}), api_key="k-123")
    client.list_models()
    headers = rec.requests[0].headers
    assert headers["Authorization"] == "Bearer k-123"
    assert headers["User-Agent"].startswith("onlinenorm-python/")
    assert "Idempotency-Key" not in headers

    monkeypatch.setenv("ONLINENORM_URL", "http://env-host:9999/")
    monkeypatch.setenv("ONLINENORM_API_KEY", "from-env")
    env_client = Client()
    assert env_client.base_url == "http://env-host:9999"
    assert env_client.api_key == "from-env"
    env_client.close()

    monkeypatch.delenv("ONLINENORM_API_KEY")
    client, rec = mock_client(lambda r: httpx.Response(200, json={"models": []}))
    client.list_models()
    assert "Authorization" not in rec.requests[0].headers
    assert str(rec.requests[0].url).startswith(BASE)


def test_learn_many_sends_chunks_in_order_and_concatenates_results() -> None:
    client, rec = mock_client(learn_batch_echo)
    xs = [[float(i)] for i in range(2500)]
    ys = list(range(2500))
    results = client.learn_many("m", xs, ys)
    assert [len(_body(r)["samples"]) for r in rec.requests] == [1000, 1000, 500]
    assert all(r.url.path == "/v1/models/m/learn/batch" for r in rec.requests)
    assert [r.prediction for r in results] == ys
    sent = [s["x"][0] for r in rec.requests for s in _body(r)["samples"]]
    assert sent == [float(i) for i in range(2500)]


def test_learn_many_chunk_size_configurable_and_lazy_over_generators() -> None:
    client, rec = mock_client(learn_batch_echo, batch_size=7)
    pulled: list[int] = []

    def xs() -> Iterator[list[float]]:
        for i in range(20):
            pulled.append(i)
            yield [float(i)]

    batches = client.iter_learn_many("m", xs(), iter(range(20)))
    first = next(batches)
    assert len(first.results) == 7
    assert len(pulled) <= 8  # only the first chunk (and one look-ahead at most) was read
    rest = list(batches)
    assert [len(b.results) for b in rest] == [7, 6]
    assert [len(_body(r)["samples"]) for r in rec.requests] == [7, 7, 6]
    assert [len(_body(r)["samples"]) for r in client_requests(learn_batch_echo, batch_size=3)] == [3, 3, 3, 1]


def client_requests(handler, batch_size: int) -> list[httpx.Request]:  # type: ignore[no-untyped-def]
    client, rec = mock_client(handler)
    client.learn_many("m", [[0.0]] * 10, [0] * 10, batch_size=batch_size)
    return rec.requests


def test_learn_many_of_nothing_sends_nothing() -> None:
    client, rec = mock_client(learn_batch_echo)
    assert client.learn_many("m", [], []) == []
    assert rec.requests == []


def test_mismatched_lengths_raise_before_anything_is_sent() -> None:
    client, rec = mock_client(learn_batch_echo, batch_size=2)
    with pytest.raises(ValueError, match="3 inputs but 2 targets"):
        client.learn_many("m", [[0.0]] * 3, [0, 1])
    assert rec.requests == []
    with pytest.raises(ValueError, match="different lengths"):
        client.learn_many("m", iter([[0.0]] * 3), iter([0, 1]))


def test_invalid_batch_size_is_refused() -> None:
    with pytest.raises(ValueError):
        Client(BASE, batch_size=0)


def test_numpy_and_torch_inputs_are_sent_as_json_lists() -> None:
    client, rec = mock_client(learn_batch_echo, batch_size=2)
    xs = np.arange(10, dtype=np.float32).reshape(5, 2)
    ys = np.array([0, 1, 2, 1, 0], dtype=np.int64)
    results = client.learn_many("m", xs, ys)
    bodies = [_body(r)["samples"] for r in rec.requests]
    assert bodies[0] == [{"x": [0.0, 1.0], "y": 0}, {"x": [2.0, 3.0], "y": 1}]
    assert [len(b) for b in bodies] == [2, 2, 1]
    assert [r.prediction for r in results] == [0, 1, 2, 1, 0]

    client, rec = mock_client(learn_batch_echo, batch_size=4)
    tx = torch.arange(12, dtype=torch.float64, requires_grad=True).reshape(6, 2)
    client.learn_many("m", tx, torch.tensor([1, 0, 1, 0, 1, 0]))
    assert _body(rec.requests[1])["samples"] == [{"x": [8.0, 9.0], "y": 1}, {"x": [10.0, 11.0], "y": 0}]

    client, rec = mock_client(lambda r: httpx.Response(200, json=LEARNED))
    client.learn_one("m", torch.ones(2, 2, requires_grad=True), torch.tensor(2))
    client.learn_one("m", np.zeros((2,), dtype=np.float16), np.int32(1))
    assert _body(rec.requests[0]) == {"x": [[1.0, 1.0], [1.0, 1.0]], "y": 2}
    assert _body(rec.requests[1]) == {"x": [0.0, 0.0], "y": 1}


def test_to_json_value_mixed_containers() -> None:
    value = [np.float32(1.5), (np.int64(2), torch.tensor([3.0])), "s", None]
    assert to_json_value(value) == [1.5, [2, [3.0]], "s", None]
    assert json.dumps(to_json_value(np.eye(2))) == "[[1.0, 0.0], [0.0, 1.0]]"


def test_predict_many_chunks_and_keeps_order() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        samples = _body(request)["samples"]
        return httpx.Response(
            200, json={"step": 0, "predictions": [{"prediction": s["x"][0]} for s in samples]}
        )

    client, rec = mock_client(handler, batch_size=4)
    predictions = client.predict_many("m", np.arange(10).reshape(10, 1))
    assert [p.prediction for p in predictions] == list(range(10))
    assert [len(_body(r)["samples"]) for r in rec.requests] == [4, 4, 2]


def test_async_client_chunks_and_converts_like_the_sync_one() -> None:
    async def run() -> None:
        client, rec = mock_async_client(learn_batch_echo, batch_size=3)
        async with client:
            results = await client.learn_many("m", np.ones((7, 2)), np.arange(7))
            batches = [b async for b in client.iter_learn_many("m", [[0.0]] * 4, [1] * 4, batch_size=2)]
        assert [r.prediction for r in results] == list(range(7))
        assert [len(_body(r)["samples"]) for r in rec.requests] == [3, 3, 1, 2, 2]
        assert len(batches) == 2
        assert len({r.headers["Idempotency-Key"] for r in rec.requests}) == 5

    asyncio.run(run())


def test_wait_until_ready_polls_until_ready() -> None:
    answers = iter(
        [
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"status": "unavailable"}),
            httpx.Response(200, json={"status": "ready", "redis": "up"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client, rec = mock_client(handler, max_retries=0)
    assert client.wait_until_ready(timeout=5, interval=0.01).status == "ready"
    assert len(rec.requests) == 3
    assert rec.sleeps == [0.01, 0.01]
