"""The dashboard: two static pages (a model picker and a model's live charts) and their
assets, plain HTML/CSS/JS with a vendored uPlot. The pages carry no data and need no
key; their scripts call the API with the key the user gives (see README)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from model.spec import NAME_PATTERN
from service.errors import NotFoundError

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_URL = "/dashboard/static"
_NAME_RE = re.compile(NAME_PATTERN)
# Everything from this origin, nothing inline; no referrer, so a ?key= never leaks.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)


def _page(file: str) -> Response:
    return FileResponse(STATIC_DIR / file, media_type="text/html", headers=_HEADERS)


@router.get("", response_class=FileResponse)
async def read_dashboard_index() -> Response:
    """The model picker."""
    return _page("index.html")


@router.get("/{name}", response_class=FileResponse)
async def read_dashboard_model(name: str) -> Response:
    """One model's live charts (the model itself is looked up by the page, with the key)."""
    if not _NAME_RE.match(name):
        raise NotFoundError(f"no dashboard for {name!r}: model names match {NAME_PATTERN}")
    return _page("model.html")


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's scripts, styles and vendored uPlot (with its license)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
