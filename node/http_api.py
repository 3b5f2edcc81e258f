"""The HTTP API: accounts, the short-connection half of sync, history, and operations endpoints.

Every request body is strict JSON validated here; every refusal is `{"error": {"code", "message"}}`
with the status from the error catalogue (node.errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from crdt import DecodeError, b64decode, decode_cursor, encode_cursor, strict_loads
from node.accounts import Accounts, DeviceKeys
from node.accounts import Identity as TokenIdentity
from node.config import NodeConfig
from node.errors import ClientError
from node.hub import Hub, Identity, direct_conv_id
from node.metrics import Metrics
from node.protocol import Send, event_from_json
from node.sessions import CLOSE_LOGGED_OUT, Sessions

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VERSION = "0.1.0"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClientError as err:
        request.app["metrics"].errors.labels(err.code).inc()
        return _json({"error": {"code": err.code, "message": err.message}}, err.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (unknown path, wrong method, no WebSocket upgrade) were
        # text/plain; clients parse one error shape.
        code = "not_found" if exc.status == 404 else "bad_request"
        request.app["metrics"].errors.labels(code).inc()
        detail = " ".join((exc.text or exc.reason).split())
        message = f"{detail} ({request.method} {request.path})"
        response = _json({"error": {"code": code, "message": message}}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        request.app["metrics"].errors.labels("internal").inc()
        return _json({"error": {"code": "internal", "message": "internal error"}}, 500)


class Health:
    """`GET /healthz` and `GET /readyz`. Routed when the app is built, not at start-up, so they
    answer for the node's whole life: `ready` turns true at the end of start-up and false at the
    start of shutdown (node.app), and /readyz says 503 whenever it is false."""

    def __init__(self, *, region: str) -> None:
        self.region = region
        self.node_id: str | None = None  # known once start-up has loaded the node key
        self.ready = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz)]

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "node": self.node_id, "version": VERSION, "region": self.region})

    async def readyz(self, request: web.Request) -> web.Response:
        return _json({"ready": self.ready}, 200 if self.ready else 503)


HEALTH = web.AppKey("health", Health)


class HttpApi:
    def __init__(
        self,
        *,
        config: NodeConfig,
        accounts: Accounts,
        hub: Hub,
        sessions: Sessions,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.hub = hub
        self.sessions = sessions
        self.metrics = metrics
        self.on_login: list[Callable[[str], None]] = []
        # Awaited before a sync is answered (federation: fetch a roaming user's conversations).
        self.before_sync: list[Callable[[str], Awaitable[None]]] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/register", self.register),
            web.post("/v1/login", self.login),
            web.post("/v1/logout", self.logout),
            web.post("/v1/logout_all", self.logout_all),
            web.get("/v1/me", self.me),
            web.get("/v1/users/{user}/devices", self.devices),
            web.post("/v1/direct", self.direct),
            web.post("/v1/ops", self.post_op),
            web.get("/v1/conversations", self.conversations),
            web.get("/v1/conversations/{conv}", self.conversation),
            web.get("/v1/conversations/{conv}/messages", self.messages),
            web.post("/v1/conversations/{conv}/read", self.read),
            web.get("/v1/sync", self.sync),
            web.post("/v1/sync", self.sync_post),
            web.get("/metrics", self.metrics_endpoint),
        ]

    # -- helpers ------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if (
            request.content_length is not None
            and request.content_length > self.config.max_frame_bytes
        ):
            raise ClientError("too_large", f"body larger than {self.config.max_frame_bytes} bytes")
        # StreamReader.read(n) returns what has arrived so far, not n bytes: read to the end.
        raw = b""
        while len(raw) <= self.config.max_frame_bytes:
            chunk = await request.content.read(self.config.max_frame_bytes + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        if len(raw) > self.config.max_frame_bytes:
            raise ClientError("too_large", f"body larger than {self.config.max_frame_bytes} bytes")
        try:
            body = strict_loads(raw, max_bytes=self.config.max_frame_bytes)
        except DecodeError as exc:
            raise ClientError("bad_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ClientError("bad_request", "the body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict[str, Any], name: str, kind: type = str, *, required: bool = True) -> Any:
        if name not in body:
            if required:
                raise ClientError("bad_request", f"missing field {name!r}")
            return None
        value = body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ClientError("bad_request", f"field {name!r} must be {kind.__name__}")
        return value

    def _who(self, request: web.Request) -> tuple[Identity, str]:
        found, token = self._bearer(request)
        return Identity(user=found.user, device=found.device), token

    def _bearer(self, request: web.Request) -> tuple[TokenIdentity, str]:
        """The request's bearer token and whom it speaks for (with its token id and expiry)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ClientError("auth_required", "send Authorization: Bearer <token>")
        return self.accounts.authenticate(token.strip()), token.strip()

    def _int_query(self, request: web.Request, name: str, default: int, maximum: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        # str.isdigit() is true for "²" and other digits int() refuses, and int() refuses
        # strings over 4300 digits: accept short ASCII digit strings only.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 0 < int(raw) <= maximum:
            raise ClientError("bad_request", f"{name} must be an integer from 1 to {maximum}")
        return int(raw)

    # -- accounts -----------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        username = self._field(body, "username")
        await self.accounts.register(username, self._field(body, "password"))
        return _json({"user": username}, 201)

    async def login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        keys_json = self._field(body, "keys", dict)
        try:
            keys = DeviceKeys.from_json(keys_json)
        except DecodeError as exc:
            raise ClientError("bad_request", f"keys: {exc}") from None
        keys_sig_text = self._field(body, "keys_sig", required=False)
        keys_sig = None
        if keys_sig_text is not None:
            try:
                keys_sig = b64decode(keys_sig_text, max_bytes=64)
            except DecodeError:
                raise ClientError("bad_request", "keys_sig must be unpadded base64url") from None
        result = await self.accounts.login(
            self._field(body, "username"),
            self._field(body, "password"),
            device=self._field(body, "device"),
            device_name=self._field(body, "device_name", required=False) or "",
            keys=keys,
            keys_sig=keys_sig,
        )
        for callback in self.on_login:
            callback(result.user)
        return _json(
            {
                "token": result.token,
                "user": result.user,
                "device": result.device,
                "expires_ms": result.expires_ms,
                "node": self.hub.node_id,
            }
        )

    async def logout(self, request: web.Request) -> web.Response:
        found, token = self._bearer(request)
        await self.accounts.logout(token)
        # The token is gone: so are the sessions it opened (the user's others stay).
        self.sessions.close_token(found.user, found.token_id, CLOSE_LOGGED_OUT)
        return _json({"ok": True})

    async def logout_all(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        revoked = await self.accounts.logout_all(who.user)
        self.sessions.close_user(who.user, CLOSE_LOGGED_OUT)
        return _json({"revoked": revoked})

    async def me(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        return _json({"user": who.user, "device": who.device, "node": self.hub.node_id})

    async def devices(self, request: web.Request) -> web.Response:
        self._who(request)
        user = request.match_info["user"]
        if not self.accounts.user_exists(user):
            raise ClientError("not_found", f"no user {user}")
        return _json({"user": user, "devices": [d.to_json() for d in self.accounts.devices(user)]})

    # -- conversations ------------------------------------------------------------------------

    async def direct(self, request: web.Request) -> web.Response:
        """Find or create the direct conversation with another user (idempotent for both)."""
        who, _ = self._who(request)
        body = await self._body(request)
        peer = self._field(body, "user")
        if peer == who.user:
            raise ClientError("bad_request", "a direct conversation needs another user")
        if not self.accounts.user_exists(peer):
            raise ClientError("not_found", f"no user {peer}")
        dsig_text = self._field(body, "dsig", required=False) or ""
        try:
            dsig = b64decode(dsig_text, max_bytes=64)
        except DecodeError:
            raise ClientError("bad_request", "dsig must be unpadded base64url") from None
        if dsig and len(dsig) != 64:  # malformed, not a signature that fails to verify
            raise ClientError("bad_request", "dsig must be a 64-byte Ed25519 signature")
        conv = direct_conv_id(who.user, peer)
        if conv not in self.hub.logs:
            # The create's content is fixed by the pair, so a client can sign it (dsig) ahead.
            send = Send(
                id=None,
                cmid=f"direct:{peer}",
                conv=conv,
                kind="create",
                attrs={"type": "direct", "members": [peer]},
                dsig=dsig,
            )
            try:
                await self.hub.submit(who, send)
            except ClientError as err:
                if err.code != "conflict":  # the peer created it at the same moment
                    raise
        return _json({"conv": conv})

    async def post_op(self, request: web.Request) -> web.Response:
        """The HTTP form of the WebSocket `send` frame (for bots and clients without a socket)."""
        started = time.perf_counter()
        who, _ = self._who(request)
        body = await self._body(request)
        if "type" in body or "id" in body:
            raise ClientError("bad_request", "the body is a send frame without type and id")
        event = event_from_json({**body, "type": "send"}, max_body_bytes=self.config.max_body_bytes)
        assert isinstance(event, Send)
        if not self.sessions.allow(who.user, who.device):
            raise ClientError("rate_limited", f"more than {self.config.rate_per_s:g} sends/s")
        ack = await self.hub.submit(who, event)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        frame = ack.to_json(None)
        del frame["type"]
        return _json(frame)

    async def conversations(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        return _json({"conversations": self.hub.conversation_list(who.user)})

    async def conversation(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        conv = request.match_info["conv"]
        state = self.hub.member_log(who.user, conv).state
        return _json(
            {
                "conv": conv,
                "type": state.conv_type,
                "settings": dict(state.settings),
                "members": dict(state.members),
                "version_vector": self.hub.logs[conv].version_vector.to_json(),  # type: ignore[index]
            }
        )

    async def messages(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        limit = self._int_query(request, "limit", 50, self.config.max_history_page)
        before = request.query.get("before") or None
        page, more = self.hub.history(who.user, request.match_info["conv"], before, limit)
        return _json({"messages": page, "more": more})

    async def read(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        body = await self._body(request)
        moved = await self.hub.mark_read(
            who.user, request.match_info["conv"], self._field(body, "op_id")
        )
        return _json({"moved": moved})

    async def sync(self, request: web.Request) -> web.Response:
        who, _ = self._who(request)
        limit = self._int_query(
            request, "limit", self.config.max_sync_page, self.config.max_sync_page
        )
        for hook in self.before_sync:
            await hook(who.user)
        return self._sync(who, request.query.get("cursor", ""), limit)

    async def sync_post(self, request: web.Request) -> web.Response:
        """The same as GET /v1/sync with the cursor in the body: cursors of many conversations
        outgrow a URL (aiohttp refuses request lines over 8190 bytes)."""
        who, _ = self._who(request)
        body = await self._body(request)
        cursor = self._field(body, "cursor", required=False) or ""
        limit = self._field(body, "limit", int, required=False)
        if limit is None:  # not `or`: a limit of 0 is refused, not read as "the default"
            limit = self.config.max_sync_page
        if not 0 < limit <= self.config.max_sync_page:
            raise ClientError(
                "bad_request", f"limit must be an integer from 1 to {self.config.max_sync_page}"
            )
        for hook in self.before_sync:
            await hook(who.user)
        return self._sync(who, cursor, limit)

    def _sync(self, who: Identity, cursor_text: str, limit: int) -> web.Response:
        try:
            cursor = decode_cursor(cursor_text)
        except DecodeError as exc:
            raise ClientError("bad_request", f"cursor: {exc}") from None
        ops, new_cursor, more = self.hub.sync(who.user, cursor, limit)
        return _json(
            {
                "ops": [op.to_json() for op in ops],
                "cursor": encode_cursor(new_cursor),
                "more": more,
            }
        )

    # -- operations ---------------------------------------------------------------------------

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type}
        )
