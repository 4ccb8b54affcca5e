"""The published OpenAPI, made true to what the service answers.

FastAPI documents its own 422 body (``HTTPValidationError``, a ``detail`` list) on
every operation with parameters, but every error here answers a ``detail`` string
(:mod:`service.errors`); and every body is refused with 415 unless it is JSON
(:mod:`service.api.limits`), which no route declares itself. This rewrites the
generated document once, so every route stays as it is."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.schemas import ErrorBody, ValidationErrorBody

_REF = "#/components/schemas/"
_415 = {
    "description": "the body is not application/json: nothing was read",
    "content": {"application/json": {"schema": {"$ref": f"{_REF}ErrorBody"}}},
}


def _schemas(model: type[Any]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, as OpenAPI components."""
    schema = model.model_json_schema(ref_template=_REF + "{model}")
    defs = schema.pop("$defs", {})
    return {model.__name__: schema, **defs}


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in doc.get("paths", {}).values() for op in path.values() if isinstance(op, dict)]


def _replace_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: (new if k == "$ref" and v == old else _replace_refs(v, old, new)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, old, new) for v in node]
    return node


def true_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the error bodies the service really answers."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ValidationErrorBody):
        components.update(_schemas(model))
    doc = _replace_refs(doc, f"{_REF}HTTPValidationError", f"{_REF}ValidationErrorBody")
    components = doc["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for op in _operations(doc):
        if "requestBody" in op:
            op.setdefault("responses", {}).setdefault("415", _415)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`true_openapi` at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = true_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
