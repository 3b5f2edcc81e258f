"""The WebSocket endpoint `/v1/ws`: authenticate with the first frame, then a read loop.

Every task a session starts is owned by the session's TaskGroup: the writer, and each in-flight
send (sends run concurrently so one client can pipeline; acks carry the request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from node.accounts import Accounts
from node.accounts import Identity as TokenIdentity
from node.config import NodeConfig
from node.errors import ClientError
from node.hub import Hub, Identity
from node.metrics import Metrics
from node.protocol import (
    Auth,
    Ping,
    Read,
    RequestId,
    Send,
    ServerConnection,
    Typing,
    encode,
)
from node.sessions import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_IDLE,
    CLOSE_PROTOCOL,
    CLOSE_TOO_MANY_ERRORS,
    Session,
    Sessions,
)

log = logging.getLogger(__name__)
MAX_INFLIGHT_SENDS = 256


class WsEndpoint:
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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        # Frames up to 4x the limit are read and refused with `too_large` (the session lives);
        # beyond that aiohttp closes with 1009 (RFC 6455 §7.4.1) before we see them.
        ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s, max_msg_size=cfg.max_frame_bytes * 4)
        await ws.prepare(request)
        conn = ServerConnection(
            max_frame_bytes=cfg.max_frame_bytes,
            max_errors=cfg.max_errors_per_session,
            max_body_bytes=cfg.max_body_bytes,
        )
        authenticated = await self._authenticate(ws, conn)
        if authenticated is None:
            return ws
        token, auth_id = authenticated
        who = Identity(user=token.user, device=token.device)
        session = Session(
            ws,
            who.user,
            who.device,
            queue_size=cfg.send_queue,
            token_id=token.token_id,
            transport=request.transport,
        )
        ready: dict[str, Any] = {
            "type": "ready",
            "user": who.user,
            "device": who.device,
            "node": self.hub.node_id,
            "session": session.id,
            "limits": {
                "max_frame_bytes": cfg.max_frame_bytes,
                "max_body_bytes": cfg.max_body_bytes,
                "idle_timeout_s": cfg.idle_timeout_s,
            },
        }
        if auth_id is not None:  # like every reply: the client matches it to its auth frame
            ready["id"] = auth_id
        session.push(encode(ready))
        self.sessions.add(session)
        log.info("session %d open for %s/%s", session.id, who.user, who.device)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(session.run_writer(self.metrics))
                watchdog = tasks.create_task(self._watchdog(session, token.expires_ms))
                await self._read_loop(ws, conn, session, who, tasks)
                session.stop()
                watchdog.cancel()
        finally:
            self.sessions.remove(session)
            log.info("session %d closed (%s)", session.id, ws.close_code)
        return ws

    async def _authenticate(
        self, ws: web.WebSocketResponse, conn: ServerConnection
    ) -> tuple[TokenIdentity, RequestId] | None:
        """Who the first frame's token speaks for, and that frame's `id`; None once refused."""
        try:
            msg = await ws.receive(timeout=self.config.auth_timeout_s)
        except TimeoutError:
            await ws.close(code=CLOSE_AUTH_TIMEOUT, message=b"no auth frame in time")
            return None
        if msg.type != WSMsgType.TEXT:
            await ws.close(code=CLOSE_AUTH_FAILED, message=b"the first frame must be auth")
            return None
        event: Auth | None = None
        try:
            parsed = conn.receive(msg.data)
            assert isinstance(parsed, Auth)
            event = parsed
            identity = self.accounts.authenticate(event.token)
        except ClientError as err:
            if event is not None:  # a well-formed auth frame: echo its id in the refusal
                err.request_id = event.id
            self._count_error(err)
            await ws.send_str(encode(err.to_json()))
            await ws.close(code=CLOSE_AUTH_FAILED, message=err.code.encode())
            return None
        conn.authenticated()
        return identity, event.id

    async def _read_loop(
        self,
        ws: web.WebSocketResponse,
        conn: ServerConnection,
        session: Session,
        who: Identity,
        tasks: asyncio.TaskGroup,
    ) -> None:
        inflight = asyncio.Semaphore(MAX_INFLIGHT_SENDS)
        while session.close_code is None:
            # No receive timeout: aiohttp restarts it on every pong it swallows, so a client
            # that answers pings was never idle. The watchdog times application frames instead.
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            session.last_frame = time.monotonic()
            if msg.type != WSMsgType.TEXT:
                self._reply_error(session, ClientError("bad_frame", "only text frames are used"))
                conn.errors += 1  # a bad frame like any other: binary garbage hits the limit too
                if conn.too_many_errors():
                    session.stop(CLOSE_TOO_MANY_ERRORS)
                    return
                continue
            try:
                event = conn.receive(msg.data)
                self.metrics.frame_in(type(event).__name__.lower())
                # Typing fans out to every member too: unthrottled, one client could fill
                # (and so close as slow) the queues of everyone it shares a conversation with.
                if isinstance(event, Send | Typing) and not self.sessions.allow(
                    who.user, who.device
                ):
                    raise ClientError(
                        "rate_limited",
                        f"more than {self.config.rate_per_s:g} sends/typing frames a second",
                        request_id=event.id,
                    )
                if isinstance(event, Send):
                    await inflight.acquire()
                    tasks.create_task(
                        self._send(session, who, event, inflight, time.perf_counter())
                    )
                else:
                    await self._other(session, who, event)
            except ClientError as err:
                self._reply_error(session, err)
                if conn.too_many_errors():
                    session.stop(CLOSE_TOO_MANY_ERRORS)
                    return
                if not err.session_survives:
                    session.stop(CLOSE_PROTOCOL)
                    return

    async def _watchdog(self, session: Session, expires_ms: int) -> None:
        """Close the session after `idle_timeout_s` without a client frame (4010; protocol
        pings and pongs do not count), or when its token expires (4001 token_expired)."""
        idle_s = self.config.idle_timeout_s
        while session.close_code is None:
            idle_left = session.last_frame + idle_s - time.monotonic()
            token_left = (expires_ms - time.time_ns() // 1_000_000) / 1000
            if token_left <= 0:
                self._reply_error(
                    session, ClientError("token_expired", "the token has expired; log in again")
                )
                session.stop(CLOSE_AUTH_FAILED, b"token_expired")
                log.info("session %d closed: token expired", session.id)
            elif idle_left <= 0:
                session.stop(CLOSE_IDLE)
            else:
                await asyncio.sleep(min(idle_left, token_left))

    async def _send(
        self,
        session: Session,
        who: Identity,
        event: Send,
        inflight: asyncio.Semaphore,
        started: float,
    ) -> None:
        try:
            ack = await self.hub.submit(who, event)
            self.metrics.ack_latency.observe(time.perf_counter() - started)
            session.push(encode(ack.to_json(event.id)))
        except ClientError as err:
            err.request_id = event.id
            self._reply_error(session, err)
        finally:
            inflight.release()

    async def _other(self, session: Session, who: Identity, event: Any) -> None:
        if isinstance(event, Ping):
            frame: dict[str, Any] = {"type": "pong"}
            if event.id is not None:
                frame["id"] = event.id
            session.push(encode(frame))
        elif isinstance(event, Read):
            try:
                await self.hub.mark_read(who.user, event.conv, event.op_id)
            except ClientError as err:
                err.request_id = event.id
                raise
            if event.id is not None:
                session.push(encode({"type": "ok", "id": event.id}))
        elif isinstance(event, Typing):
            try:
                self.hub.typing(who.user, event.conv, event.active)
            except ClientError as err:
                err.request_id = event.id
                raise

    def _reply_error(self, session: Session, err: ClientError) -> None:
        self._count_error(err)
        session.push(encode(err.to_json()))

    def _count_error(self, err: ClientError) -> None:
        self.metrics.errors.labels(err.code).inc()
