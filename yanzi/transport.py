"""The I/O edge of the SDK: the node's HTTP API and opening its WebSocket, over aiohttp.

Every failure leaves here as a `YanziError`: `ServerError` for a refusal the node explained,
`ConnectionLost` when it could not be reached, a `YanziTimeout` when it did not answer in time.
Tokens travel only in the `Authorization` header or the WebSocket's first frame, never in a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from yanzi.errors import (
    ConnectionLost,
    ConnectTimeout,
    ProtocolError,
    RequestTimeout,
    ServerError,
)

log = logging.getLogger(__name__)


def ws_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :] + "/v1/ws"
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :] + "/v1/ws"
    raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")


def _path_part(value: str) -> str:
    # Ids may contain "/" (crdt.check_id allows it): escape everything in a path segment.
    return quote(value, safe="")


class HttpApi:
    """Thin async wrappers over the node's `/v1` endpoints; the caller owns `session`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, timeout_s: float):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                headers=headers,
                timeout=self.timeout,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is a TimeoutError too
            raise RequestTimeout(f"{method} {path} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLost(f"{method} {path} failed: {exc}") from exc
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProtocolError(f"{method} {path} answered {status} without a JSON object")
        if status >= 400:
            error = data.get("error")
            if isinstance(error, dict):
                raise ServerError(
                    str(error.get("code", "internal")), str(error.get("message", "")), status=status
                )
            raise ServerError("internal", f"HTTP {status}", status=status)
        return data

    # -- accounts -----------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> dict[str, Any]:
        return await self.call(
            "POST", "/v1/register", body={"username": username, "password": password}
        )

    async def login(
        self,
        username: str,
        password: str,
        *,
        device: str,
        device_name: str,
        keys: dict[str, str],
        keys_sig: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "username": username,
            "password": password,
            "device": device,
            "device_name": device_name,
            "keys": keys,
        }
        if keys_sig is not None:  # the device's self-signature (docs/e2ee.md §1)
            body["keys_sig"] = keys_sig
        return await self.call("POST", "/v1/login", body=body)

    async def logout(self, token: str, *, all_devices: bool = False) -> None:
        await self.call("POST", "/v1/logout_all" if all_devices else "/v1/logout", token=token)

    async def devices(self, token: str, user: str) -> list[dict[str, Any]]:
        data = await self.call("GET", f"/v1/users/{_path_part(user)}/devices", token=token)
        return list(data.get("devices", []))

    # -- conversations ------------------------------------------------------------------------

    async def direct(self, token: str, user: str) -> str:
        data = await self.call("POST", "/v1/direct", token=token, body={"user": user})
        return str(data["conv"])

    async def post_op(self, token: str, draft_json: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1/ops", token=token, body=draft_json)

    async def conversations(self, token: str) -> list[dict[str, Any]]:
        data = await self.call("GET", "/v1/conversations", token=token)
        return list(data.get("conversations", []))

    async def messages(
        self, token: str, conv: str, *, before: str | None, limit: int
    ) -> dict[str, Any]:
        params = {"limit": str(limit)}
        if before:
            params["before"] = before
        path = f"/v1/conversations/{_path_part(conv)}/messages"
        return await self.call("GET", path, token=token, params=params)

    async def mark_read(self, token: str, conv: str, op_id: str) -> bool:
        path = f"/v1/conversations/{_path_part(conv)}/read"
        data = await self.call("POST", path, token=token, body={"op_id": op_id})
        return bool(data.get("moved"))

    async def sync(self, token: str, cursor: str, *, limit: int | None) -> dict[str, Any]:
        params = {"cursor": cursor}
        if limit is not None:
            params["limit"] = str(limit)
        return await self.call("GET", "/v1/sync", token=token, params=params)

    # -- the mesh ----------------------------------------------------------------------------

    async def edges(self) -> dict[str, Any]:
        """`GET /v1/edges`: the mesh's edge nodes, their URLs and health (no token needed)."""
        return await self.call("GET", "/v1/edges")

    async def healthz(self) -> dict[str, Any]:
        """`GET /healthz`, the cheapest round trip a node answers (RTT probes)."""
        data = await self.call("GET", "/healthz")
        if data.get("ok") is not True:
            raise ProtocolError("GET /healthz did not answer ok")
        return data

    # -- the long connection ------------------------------------------------------------------

    async def open_ws(
        self, *, timeout_s: float, heartbeat_s: float, close_timeout_s: float
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(timeout_s):
                return await self.session.ws_connect(
                    ws_url(self.base_url),
                    heartbeat=heartbeat_s or None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=close_timeout_s),
                    autoclose=True,
                    autoping=True,
                    max_msg_size=4 << 20,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"WebSocket handshake timed out after {timeout_s} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLost(f"cannot open the WebSocket: {exc}") from exc
