"""``/docs`` works without the internet (api/docs.py): Swagger UI's assets come from an
installed package, and a real headless browser that may reach nothing but the service
renders every operation."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.servers import ThreadServer
from tests.service.test_dashboard import PageErrors, chromium


def test_docs_assets_are_served_locally(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs/assets/swagger-ui-bundle.js" in page.text
    for asset, kind in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")]:
        r = client.get(f"/docs/assets/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    assert "Apache License" in client.get("/docs/assets/LICENSE").text
    assert client.get("/redoc").status_code == 404  # not offered: no package ships it


@pytest.mark.timeout(120)
def test_docs_render_offline_in_a_browser(server: ThreadServer) -> None:
    host = urlsplit(server.url).netloc
    with chromium() as browser:
        page = browser.new_page()
        errors = PageErrors(page)
        outside: list[str] = []

        def only_the_service(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if urlsplit(url).netloc == host:
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(url)
                route.abort()  # type: ignore[attr-defined]

        page.route("**/*", only_the_service)
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".swagger-ui .information-container .title", timeout=30_000)
        assert "onlinenorm" in page.inner_text(".swagger-ui .information-container .title")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() >= 15
        assert not outside, outside
        assert not errors.messages, errors.messages
