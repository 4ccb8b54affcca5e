"""The published OpenAPI is true: Schemathesis (PyPI) generates requests from the app's
``/openapi.json`` and checks every answer of the live service against it (no 5xx,
documented status codes, headers and content types, bodies that match their schemas,
invalid requests refused). A fixed seed (``derandomize``) and a bounded number of
examples per operation and mode keep it quick and repeatable; requests address a real
model about half of the time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from service.app import create_app
from service.config import Settings
from tests.service.conftest import create, delete_prefix, spec
from tests.service.servers import ThreadServer

MAX_EXAMPLES = 8
MODEL = "m"
#: An endless event stream: its contract is tested in test_stream.py.
SKIPPED = {"GET /v1/models/{name}/stats/stream"}
#: Every check but one: a sample's shape and range depend on the model it is sent to,
#: which no JSON schema of the route can say, so schema-valid samples may be refused (422).
EXCLUDED = [positive_data_acceptance]
_SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(REDIS_URL="redis://unused")).openapi())
OPERATIONS = {
    op.label: op for op in (result.ok() for result in _SCHEMA.get_all_operations()) if op.label not in SKIPPED
}


@pytest.fixture(scope="module")
def live(standalone_url: str) -> Iterator[ThreadServer]:
    prefix = f"test-{uuid.uuid4().hex}"
    config = Settings(
        REDIS_URL=standalone_url,
        KEY_PREFIX=prefix,
        DEVICE="cpu",
        SNAPSHOT_EVERY_SECONDS=3600,
        STATS_EVERY_SECONDS=3600,
        MAX_BATCH_SAMPLES=20,
        MAX_MODEL_BYTES=64 * 1024 * 1024,
    )
    try:
        with ThreadServer(config) as srv:
            with srv.client() as c:
                create(c, spec(MODEL))
            yield srv
    finally:
        client = redis.Redis.from_url(standalone_url)
        delete_prefix(client, prefix)
        client.close()


def _address_the_model(case: Any) -> None:
    """Half of the requests (by a hash of the case: deterministic) name the real model,
    never a DELETE of it."""
    params = case.path_parameters
    if params and "name" in params and case.method.upper() != "DELETE" and sum(repr(case.body).encode()) % 2:
        params["name"] = MODEL


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_the_api_keeps_its_published_contract(live: ThreadServer, label: str, mode: GenerationMode) -> None:
    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        _address_the_model(case)
        case.call_and_validate(base_url=live.url, excluded_checks=EXCLUDED)

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip(f"{label}: nothing in its schema can be made invalid")
