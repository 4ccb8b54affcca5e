"""``/docs`` without the internet: Swagger UI from the ``swagger-ui-py`` package (PyPI,
Apache-2.0; its ``static/`` holds the Swagger UI release and its LICENSE), served
under ``/docs/assets`` instead of FastAPI's default CDN. No ReDoc: no maintained
package ships it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"


def assets_dir() -> Path:
    """Where the installed package keeps Swagger UI's files."""
    return Path(str(files("swagger_ui") / "static"))


def mount_docs(app: FastAPI) -> None:
    """``/docs`` and its assets, from the package (the app is built with ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def read_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
