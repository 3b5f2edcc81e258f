"""Live sessions: who is connected, bounded per-connection send queues, rate limits, presence."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from node.metrics import Metrics
from node.protocol import encode

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 §7.4.2: 4000-4999 are for applications). docs/protocol.md.
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOO_MANY_ERRORS = 4009
CLOSE_IDLE = 4010
CLOSE_LOGGED_OUT = 4011

# How long a closing session may take to get its last frames and close frame out. A client that
# stopped reading keeps them behind a full socket buffer forever (and the writer blocked in
# aiohttp's drain); after this the connection is aborted without them.
CLOSE_GRACE_S = 2.0

_ids = itertools.count(1)
# How node.protocol.encode starts an `op` frame ({"type": "op", "op": ...}): deliver() tells op
# frames (yanzi_deliveries_total) from read/typing/presence ones by it, without widening the
# hub's Fanout port.
OP_FRAME_PREFIX = '{"type":"op",'


class TokenBucket:
    """`rate` tokens per second up to `burst`; time is passed in so tests stay deterministic."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _corker(transport: asyncio.Transport | None) -> Callable[[int], None] | None:
    """setsockopt(TCP_CORK, on) for this connection's socket; None where there is none."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_CORK") or sock.family not in _TCP_FAMILIES:
        return None

    def cork(on: int) -> None:
        with contextlib.suppress(OSError):  # the peer may be gone: the write will say so
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)

    return cork


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class Session:
    """One authenticated WebSocket. `push` never blocks; a full queue marks the session slow."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user: str,
        device: str,
        *,
        queue_size: int,
        token_id: str = "",
        transport: asyncio.Transport | None = None,
    ):
        self.id = next(_ids)
        self.ws = ws
        self.user = user
        self.device = device
        self.token_id = token_id  # hex SHA-256 of the token it authenticated with: logout closes it
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=queue_size)
        self.slow = False
        self.close_code: int | None = None
        self.close_reason = b""
        # time.monotonic() of the last frame the client sent (protocol pings and pongs aside).
        self.last_frame = time.monotonic()
        self.transport = transport  # the TCP connection, to abort one that will not drain
        self._abort_timer: asyncio.TimerHandle | None = None
        self._cork = _corker(transport)

    def push(self, frame: str) -> bool:
        if self.slow or self.close_code is not None:
            return False
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.slow = True
            self.close_code = CLOSE_SLOW_CONSUMER
            # Wake the writer so it closes the socket promptly; the queue holds at most a few.
            self._drain_and_stop()
            self._abort_after_grace()
            return False

    def stop(self, code: int | None = None, reason: bytes = b"") -> None:
        if self.close_code is None and code is not None:
            self.close_code, self.close_reason = code, reason
        if code is not None:
            self._abort_after_grace()
        # What is already queued (acks, the error that explains the close) goes out before
        # the close frame; only a full queue is dropped.
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self._drain_and_stop()

    def _abort_after_grace(self) -> None:
        """Bound the close: if the close frame has not gone out within CLOSE_GRACE_S (the
        client stopped reading), drop the connection. Harmless once it has closed."""
        if self.transport is not None and self._abort_timer is None:
            loop = asyncio.get_running_loop()
            self._abort_timer = loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    async def _write(self, frames: list[str]) -> None:
        send = self.ws.send_str
        if len(frames) == 1 or self._cork is None:
            for frame in frames:
                await send(frame)
            return
        # aiohttp writes each frame with its own transport.write(), i.e. its own send(2). With
        # TCP_CORK the kernel queues them and transmits once, at the uncork (on loopback a
        # transmit is the receiver's whole TCP receive path): many frames, few segments.
        self._cork(1)
        try:
            for frame in frames:
                await send(frame)
        finally:
            self._cork(0)

    def _drain_and_stop(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        self.queue.put_nowait(None)

    async def run_writer(self, metrics: Metrics) -> None:
        """Send queued frames until stopped; then close the socket with the recorded code.

        Each wake-up takes everything queued (a fan-out or a group commit queues several
        frames at once) and writes it back to back: one task switch and one metrics update per
        batch, not per frame.
        """
        queue = self.queue
        while True:
            frames: list[str] = []
            item = await queue.get()
            while item is not None:  # None: stop, after what was queued before it
                frames.append(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            try:
                await self._write(frames)
            except (ConnectionError, RuntimeError):
                break
            if frames:
                metrics.frames_out.inc(len(frames))
            if item is None:
                break
        if self.close_code is not None and not self.ws.closed:
            message = self.close_reason or {
                CLOSE_SLOW_CONSUMER: b"slow consumer: catch up with GET /v1/sync",
                CLOSE_GOING_AWAY: b"server shutting down",
                CLOSE_LOGGED_OUT: b"logged out",
            }.get(self.close_code, b"")
            try:  # the close handshake: our frame out, the client's back (aiohttp waits 10 s)
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await self.ws.close(code=self.close_code, message=message)
            except TimeoutError:
                if self.transport is not None:
                    self.transport.abort()


class Sessions:
    """The registry of live sessions, and the hub's `Fanout` port."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        rate_per_s: float,
        rate_burst: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.by_user: dict[str, set[Session]] = {}
        self.rate_per_s, self.rate_burst = rate_per_s, rate_burst
        self.monotonic = monotonic
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.contacts: Callable[[str], Iterable[str]] = lambda user: ()
        self.on_first_session: list[Callable[[str], None]] = []

    def __len__(self) -> int:
        return sum(len(s) for s in self.by_user.values())

    def add(self, session: Session) -> None:
        first = session.user not in self.by_user
        self.by_user.setdefault(session.user, set()).add(session)
        self.metrics.connections.inc()
        if first:
            self._presence(session.user, online=True)
            for callback in self.on_first_session:
                callback(session.user)

    def remove(self, session: Session) -> None:
        sessions = self.by_user.get(session.user)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        self.metrics.connections.dec()
        if not sessions:
            del self.by_user[session.user]
            self._presence(session.user, online=False)

    def online(self, user: str) -> bool:
        return user in self.by_user

    def deliver(self, users: Iterable[str], frame: str) -> None:
        queued = 0
        for user in users:
            for session in tuple(self.by_user.get(user, ())):
                was_slow = session.slow
                if session.push(frame):
                    queued += 1
                elif session.slow and not was_slow:  # count and log the close once
                    self.metrics.slow_consumers.inc()
                    log.warning("session %d of %s closed: slow consumer", session.id, user)
        if queued:  # one inc per fan-out, not per session: each takes the counter's lock
            op = frame.startswith(OP_FRAME_PREFIX)
            (self.metrics.deliveries if op else self.metrics.notices).inc(queued)

    def allow(self, user: str, device: str) -> bool:
        """Per-device rate limit, shared by all of that device's sessions."""
        now = self.monotonic()
        bucket = self._buckets.get((user, device))
        if bucket is None:
            bucket = self._buckets[(user, device)] = TokenBucket(
                self.rate_per_s, self.rate_burst, now
            )
        return bucket.take(now)

    def close_user(self, user: str, code: int) -> None:
        for session in tuple(self.by_user.get(user, ())):
            session.stop(code)

    def close_token(self, user: str, token_id: str, code: int) -> int:
        """Stop the sessions that authenticated with one token (a single-token logout)."""
        closing = [s for s in self.by_user.get(user, ()) if s.token_id == token_id]
        for session in closing:
            session.stop(code)
        return len(closing)

    def close_all(self, code: int) -> None:
        for sessions in tuple(self.by_user.values()):
            for session in tuple(sessions):
                session.stop(code)

    def _presence(self, user: str, *, online: bool) -> None:
        frame = encode({"type": "presence", "user": user, "online": online})
        self.deliver(set(self.contacts(user)) - {user}, frame)
