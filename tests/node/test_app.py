"""The app as built, before start-up: what answers while the node starts and stops."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from node.app import build_app
from node.config import NodeConfig
from node.http_api import HEALTH

# build_app still stores a few collaborators under plain string keys.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def _get(app: web.Application, path: str) -> web.Response:
    request = make_mocked_request("GET", path, app=app)
    match = await app.router.resolve(request)
    assert match.http_exception is None, f"{path} is not routed"
    response = await match.handler(request)
    assert isinstance(response, web.Response)
    return response


async def test_health_answers_from_build_time_and_readiness_follows_the_lifecycle(
    tmp_path: Path,
) -> None:
    app = build_app(NodeConfig(data_dir=tmp_path / "data", region="eu"))
    # Routed before start-up has run (nothing loaded yet): not ready, but alive.
    assert (await _get(app, "/readyz")).status == 503
    alive = await _get(app, "/healthz")
    assert alive.status == 200 and alive.text is not None and '"region": "eu"' in alive.text
    app[HEALTH].ready = True  # what the end of start-up does
    assert (await _get(app, "/readyz")).status == 200
    # Shutdown starts with readiness off, before sessions are closed and the store flushed.
    app.freeze()
    await app.on_shutdown.send(app)
    assert (await _get(app, "/readyz")).status == 503
