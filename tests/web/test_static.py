"""node/static.py without a browser: what the node serves for the page, and what it refuses."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.http_api import error_middleware
from node.metrics import Metrics
from node.static import WEB_ROOT, StaticSite


async def _client(site: StaticSite) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    with warnings.catch_warnings():  # the node keys its app by strings (node/app.py does too)
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["metrics"] = Metrics()
    app.router.add_routes(site.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    c = await _client(StaticSite())
    yield c
    await c.close()


async def test_the_page_and_its_assets_have_their_content_types(client: TestClient) -> None:
    expected = {
        "/": "text/html",
        "/app/app.js": "text/javascript",
        "/app/app.css": "text/css",
        "/app/icon.svg": "image/svg+xml",
        "/sdk/index.js": "text/javascript",
        "/sdk/client.js": "text/javascript",
        "/sdk/tweetnacl.js": "text/javascript",
    }
    for path, content_type in expected.items():
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == content_type, path
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_csp_allows_exactly_the_inline_import_map(client: TestClient) -> None:
    resp = await client.get("/")
    html = await resp.read()
    found = re.search(rb'<script type="importmap">(.*?)</script>', html, re.DOTALL)
    assert found is not None
    digest = base64.b64encode(hashlib.sha256(found.group(1)).digest()).decode()
    policy = resp.headers["Content-Security-Policy"]
    assert f"script-src 'self' 'sha256-{digest}'" in policy
    assert "'unsafe-inline'" not in policy


@pytest.mark.parametrize(
    "path",
    [
        "/app/../node/app.py",
        "/app/%2e%2e/pyproject.toml",
        "/sdk/..%2fpackage.json",
        "/app/.hidden.js",
        "/app/vendor/tweetnacl-LICENSE",  # no known suffix
        "/app/missing.js",
        "/sdk/",
    ],
)
async def test_nothing_outside_the_roots_or_unlisted_is_served(
    client: TestClient, path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_tweetnacl_without_npm_comes_from_the_vendored_copy(tmp_path: Path) -> None:
    root = tmp_path / "web"
    shutil.copytree(WEB_ROOT / "app", root / "app")
    client = await _client(StaticSite(root))
    try:
        resp = await client.get("/sdk/tweetnacl.js")
        assert resp.status == 200
        text = await resp.text()
        vendored = (root / "app" / "vendor" / "nacl-fast.js").read_text()
        assert vendored in text
        assert "export default nacl;" in text
        (root / "app" / "vendor" / "nacl-fast.js").unlink()
        resp = await client.get("/sdk/tweetnacl.js")
        assert resp.status == 404
        assert (await client.get("/sdk/index.js")).status == 404  # no web/src here either
    finally:
        await client.close()


async def test_without_a_source_tree_the_page_is_a_clear_404(tmp_path: Path) -> None:
    client = await _client(StaticSite(tmp_path / "nowhere"))
    try:
        resp = await client.get("/")
        assert resp.status == 404
        assert "source tree" in await resp.text()
    finally:
        await client.close()
