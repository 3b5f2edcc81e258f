"""The long connection: one authenticated WebSocket at a time, reconnected with backoff.

`Link` owns the socket and the task that reads it (the supervisor), matches replies to requests
by id, and reports everything else to its `LinkHandler` (the client). When the socket drops it
fails the requests in flight with `ConnectionLost` (their callers retry with the same cmid) and
reconnects with exponential backoff and full jitter until `close()` or a dead token. Before
each attempt it tells the handler (`link_reconnecting`), which may point `api` at another edge:
that is how the client fails over (yanzi.edges).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import aiohttp

from yanzi.config import Backoff, ClientConfig
from yanzi.errors import (
    AckTimeout,
    ConnectionLost,
    ConnectTimeout,
    ProtocolError,
    ServerError,
    YanziTimeout,
)
from yanzi.events import Disconnected
from yanzi.protocol import ErrorFrame, Ready, Reply, ServerFrame, auth_frame, decode_frame
from yanzi.transport import HttpApi

log = logging.getLogger(__name__)

# node/sessions.py close codes after which reconnecting cannot help: log in again.
CLOSE_AUTH_FAILED: Final = 4001
CLOSE_LOGGED_OUT: Final = 4011
FATAL_CLOSE_CODES: Final = frozenset({CLOSE_AUTH_FAILED, CLOSE_LOGGED_OUT})
CLOSE_REASONS: Final[Mapping[int, str]] = {
    1000: "closed normally",
    1001: "the node is going away",
    1006: "connection lost",
    4000: "protocol error",
    4001: "authentication failed",
    4002: "no auth frame in time",
    4008: "slow consumer",
    4009: "too many errors",
    4010: "idle timeout",
    4011: "logged out",
}

Socket = aiohttp.ClientWebSocketResponse


class LinkHandler(Protocol):
    def link_up(self, ready: Ready, *, reconnected: bool) -> None: ...
    def link_down(self, event: Disconnected) -> None: ...
    def link_frame(self, frame: ServerFrame) -> None: ...
    def link_reconnecting(self, attempt: int) -> None: ...


class Link:
    def __init__(
        self,
        *,
        api: Callable[[], HttpApi],
        token: Callable[[], str],
        config: ClientConfig,
        uniform: Callable[[float, float], float],
        handler: LinkHandler,
    ) -> None:
        self._api = api
        self._token = token
        self._config = config
        self._backoff = Backoff(config.backoff_base_s, config.backoff_max_s)
        self._uniform = uniform
        self._handler = handler
        self._ws: Socket | None = None
        self._online = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._rids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._close_reason = ("disconnected by the application", False)

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def running(self) -> bool:
        return self._supervisor is not None and not self._supervisor.done()

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> bool:
        """Connect and authenticate now (errors propagate), then keep the link up in the
        background. Returns False if it was already running."""
        async with self._open_lock:  # two concurrent callers open one socket
            if self.running:
                return False
            ws, ready = await self._connect()
            self._up(ws, ready, reconnected=False)
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(ws), name="yanzi-link"
            )
            self._supervisor.add_done_callback(log_crash)
            return True

    async def close(
        self, reason: str = "disconnected by the application", *, will_retry: bool = False
    ) -> None:
        """Close the socket and stop reconnecting (cancels and awaits the supervisor). The
        Disconnected event carries `reason` and `will_retry` (True when the caller reopens at
        once, as a move to another edge does)."""
        task, self._supervisor = self._supervisor, None
        if task is not None:
            self._close_reason = (reason, will_retry)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- requests -----------------------------------------------------------------------------

    async def request(self, encode: Callable[[int], str], timeout: float) -> Reply:
        """Send one frame carrying a fresh request id and wait for the reply with that id."""
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        rid = next(self._rids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._write(ws, encode(rid))
            try:
                async with asyncio.timeout(timeout):
                    reply = await future
            except TimeoutError:
                raise AckTimeout(f"no reply to request {rid} within {timeout:.1f} s") from None
        finally:
            self._pending.pop(rid, None)
        error = reply.error
        if error is not None:
            raise ServerError(*error)
        return reply

    async def send(self, text: str) -> bool:
        """Send a frame that expects no reply; False if there is no socket to send it on."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await self._write(ws, text)
        except ConnectionLost:
            return False
        return True

    async def wait_online(self, delay: float) -> None:
        """Sleep `delay`, but wake as soon as the socket comes back if it is down now."""
        if self._ws is not None:
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await self._online.wait()
        except TimeoutError:
            pass

    async def _write(self, ws: Socket, text: str) -> None:
        try:
            async with self._write_lock:
                await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ConnectionLost(f"the socket closed while sending: {exc}") from exc

    # -- the socket ---------------------------------------------------------------------------

    async def _connect(self) -> tuple[Socket, Ready]:
        """Open the socket and authenticate with the first frame; returns it ready."""
        cfg = self._config
        token = self._token()
        ws = await self._api().open_ws(
            timeout_s=cfg.connect_timeout_s,
            heartbeat_s=cfg.heartbeat_s,
            close_timeout_s=cfg.close_timeout_s,
        )
        try:
            try:
                async with asyncio.timeout(cfg.connect_timeout_s):
                    await ws.send_str(auth_frame(token))
                    msg = await ws.receive()
            except TimeoutError:
                raise ConnectTimeout("the node did not answer the auth frame in time") from None
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise ConnectionLost(f"the socket closed during auth: {exc}") from exc
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = decode_frame(msg.data)
                if isinstance(frame, Ready):
                    return ws, frame
                if isinstance(frame, ErrorFrame):
                    raise ServerError(frame.code, frame.message)
                raise ProtocolError(f"expected a ready frame, got {type(frame).__name__}")
            if ws.close_code in FATAL_CLOSE_CODES:
                raise ServerError("auth_failed", "the node closed the socket at authentication")
            raise ConnectionLost(f"the socket closed during auth (code {ws.close_code})")
        except BaseException:
            await ws.close()
            raise

    def _up(self, ws: Socket, ready: Ready, *, reconnected: bool) -> None:
        self._ws = ws
        self._online.set()
        log.info("connected to node %s as %s/%s", ready.node, ready.user, ready.device)
        self._handler.link_up(ready, reconnected=reconnected)

    def _down(self, code: int | None, reason: str, *, will_retry: bool) -> None:
        if self._ws is None:
            return
        self._ws = None
        self._online.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"the connection closed ({reason})"))
        log.info("disconnected (code %s, %s); will retry: %s", code, reason, will_retry)
        self._handler.link_down(Disconnected(code, reason, will_retry))

    async def _supervise(self, ws: Socket) -> None:
        """Read frames until the socket closes, then reconnect with backoff; runs until
        cancelled by close() or the token is refused."""
        loop = asyncio.get_running_loop()
        current: Socket | None = ws
        attempt = 0
        try:
            while current is not None:
                opened = loop.time()
                await self._read(current)
                code = current.close_code
                current = None
                fatal = code in FATAL_CLOSE_CODES
                reason = CLOSE_REASONS.get(code or 1006, f"closed with code {code}")
                self._down(code, reason, will_retry=not fatal)
                if fatal:
                    return
                if loop.time() - opened >= self._config.backoff_reset_s:
                    attempt = 0  # that connection was stable: start the backoff afresh
                current, attempt = await self._reconnect(attempt)
        finally:
            if current is not None:
                await current.close()
            reason, will_retry = self._close_reason
            self._close_reason = ("disconnected by the application", False)
            self._down(None, reason, will_retry=will_retry)

    async def _reconnect(self, attempt: int) -> tuple[Socket | None, int]:
        while True:
            await asyncio.sleep(self._backoff.delay(attempt, self._uniform))
            attempt += 1
            self._handler.link_reconnecting(attempt)
            try:
                ws, ready = await self._connect()
            except ServerError as err:
                if err.needs_login:
                    log.warning("reconnect refused (%s): log in again", err.code)
                    self._handler.link_down(Disconnected(CLOSE_AUTH_FAILED, err.message, False))
                    return None, attempt
                log.info("reconnect attempt %d refused: %s", attempt, err.code)
            except (ConnectionLost, YanziTimeout, ProtocolError) as err:
                log.info("reconnect attempt %d failed: %s", attempt, err)
            else:
                self._up(ws, ready, reconnected=True)
                return ws, attempt

    async def _read(self, ws: Socket) -> None:
        # The node closes sessions that send no application frame for its idle timeout
        # (WebSocket pongs do not count), so the link pings at the protocol level while open.
        pinger = asyncio.get_running_loop().create_task(self._ping_loop(ws), name="yanzi-ping")
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    log.info("socket error: %s", ws.exception())
                    break
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping_loop(self, ws: Socket) -> None:
        """Owned by `_read`: a `ping` frame every `app_ping_s`; its `pong` is ignored."""
        while True:
            await asyncio.sleep(self._config.app_ping_s)
            try:
                await self._write(ws, json.dumps({"type": "ping", "id": next(self._rids)}))
            except ConnectionLost:
                return

    def _on_text(self, text: str) -> None:
        try:
            frame = decode_frame(text)
        except ProtocolError as exc:
            log.warning("ignored a frame: %s", exc)
            return
        if isinstance(frame, Reply):
            future = self._pending.get(frame.id)
            if future is not None and not future.done():
                future.set_result(frame)
                return
            if frame.error is None:
                return  # a late reply to a request that timed out
            frame = ErrorFrame(*frame.error)
        self._handler.link_frame(frame)


def log_crash(task: asyncio.Task[None]) -> None:
    """Done-callback for owned tasks: a crash is logged, never silently lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
