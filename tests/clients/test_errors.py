"""Every status maps to its exception, carrying the server's message and body."""

from __future__ import annotations

import httpx
import pytest

from clients import (
    APIError,
    AuthenticationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    ValidationError,
)
from clients.errors import error_for_response
from tests.clients.mocks import mock_client


def _response(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://x/v1/models/m"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ValidationError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, ValidationError),
        (429, RateLimitError),
        (503, ServiceUnavailableError),
        (500, InternalServerError),
        (502, InternalServerError),
        (418, APIError),
    ],
)
def test_status_maps_to_its_exception(status: int, cls: type[APIError]) -> None:
    error = error_for_response(_response(status, json={"detail": f"server says {status}"}))
    assert type(error) is cls
    assert isinstance(error, APIError)
    assert error.status_code == status
    assert error.message == f"server says {status}"
    assert str(error) == f"{status}: server says {status}"


def test_extra_fields_of_the_body_are_kept() -> None:
    body = {"detail": "non-finite loss", "step": 7, "index": 2, "results": []}
    error = error_for_response(_response(422, json=body))
    assert error.body == body


def test_fastapi_list_detail_is_flattened() -> None:
    detail = [{"loc": ["body", "input_shape"], "msg": "Field required", "type": "missing"}]
    error = error_for_response(_response(422, json={"detail": detail}))
    assert error.message == "input_shape: Field required"


def test_non_json_body_becomes_the_message() -> None:
    error = error_for_response(_response(502, text="<html>Bad Gateway</html>"))
    assert error.message == "<html>Bad Gateway</html>"
    assert error.body is None


def test_client_raises_mapped_error_with_server_message() -> None:
    client, _ = mock_client(lambda r: httpx.Response(404, json={"detail": "no model named 'm'"}))
    with pytest.raises(NotFoundError) as info:
        client.get_model("m")
    assert info.value.message == "no model named 'm'"
    assert info.value.response is not None and info.value.response.status_code == 404


def test_malformed_success_answer_is_an_api_error() -> None:
    client, _ = mock_client(lambda r: httpx.Response(200, json={"unexpected": True}))
    with pytest.raises(APIError, match="unexpected answer"):
        client.learn_one("m", [0.0], 0)
