"""The load generator of bench.node_bench; it runs in worker processes (multiprocessing, spawn).

A worker opens its share of WebSockets, authenticates each with the first frame, reports
"ready" through a pipe, waits for "go" (carrying a CLOCK_MONOTONIC start instant shared by all
workers), then drives sends and records what comes back. The same code drives Yanzi and the raw
relay (bench.raw_relay speaks the same frame shapes).

Timing: every send carries its timestamp inside the (opaque) body — 8 bytes of
`time.monotonic_ns()` plus a 4-byte tag, base64url — so the receiving socket computes the
latency without a lookup. CLOCK_MONOTONIC is system-wide on Linux, so instants compare across
processes. Open-loop sends carry their *intended* instant, not the actual one, so a stalled
node is charged for the queue it causes (no coordinated omission).

The hot path avoids json.loads: server frames start with a fixed `{"type":"..."` prefix
(compact JSON), the request id of an ack is its last field, and an op frame's only "body" key
holds the timestamp.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import struct
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

import aiohttp

_STAMP = struct.Struct(">qI")  # send instant (ns, CLOCK_MONOTONIC), tag; 12 bytes = 16 b64 chars
_OP = '{"type":"op"'
_ACK = '{"type":"ack"'
_ERROR = '{"type":"error"'
_READY = '{"type":"ready"'
_BODY = '"body":"'


def raise_nofile_limit() -> int:
    """Lift the soft open-files limit to the hard one (10k sockets need more than 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketSpec:
    token: str
    send_to: str | None = None  # conv id (Yanzi) or user name (raw relay) this socket sends into
    measure: bool = False  # record op deliveries (count and latency) arriving on this socket
    tag: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    ws_url: str
    sockets: tuple[SocketSpec, ...]
    mode: Literal["closed", "open", "idle"]
    window: int = 16  # closed loop: unacked sends per sending socket
    rate: float = 0.0  # open loop: sends/s from this worker, spread over its senders
    warmup_s: float = 2.0
    measure_s: float = 10.0
    drain_s: float = 3.0
    body_bytes: int = 128
    cmid_prefix: str = "b"
    connect_concurrency: int = 100


@dataclass(slots=True)
class LoadResult:
    connected: int = 0
    sent_in_window: int = 0  # sends whose (intended) instant fell in the measurement window
    acked_in_window: int = 0  # acks that arrived within the window
    deliveries_in_window: int = 0  # op frames that arrived within the window on measured sockets
    latencies: array[int] = field(default_factory=lambda: array("q"))  # send -> op frame, ns
    ack_latencies: array[int] = field(default_factory=lambda: array("q"))  # send -> ack, ns
    errors: int = 0
    first_error: str = ""
    closed_early: int = 0  # sockets the server closed during the run (e.g. slow consumer)
    cpu_s: float = 0.0  # this worker's CPU seconds during the window
    unacked_at_end: int = 0

    def merge(self, other: LoadResult) -> None:
        self.connected += other.connected
        self.sent_in_window += other.sent_in_window
        self.acked_in_window += other.acked_in_window
        self.deliveries_in_window += other.deliveries_in_window
        self.latencies.extend(other.latencies)
        self.ack_latencies.extend(other.ack_latencies)
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.closed_early += other.closed_early
        self.cpu_s += other.cpu_s
        self.unacked_at_end += other.unacked_at_end


class _Window:
    """The measurement window [m0, m1) in monotonic ns; `stop` ends sending."""

    def __init__(self, start: int, warmup_s: float, measure_s: float) -> None:
        self.start = start
        self.m0 = start + int(warmup_s * 1e9)
        self.m1 = self.m0 + int(measure_s * 1e9)


class _Socket:
    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, spec: SocketSpec, load: LoadSpec, idx: int
    ) -> None:
        self.ws = ws
        self.spec = spec
        self.pending: dict[int, int] = {}  # request id -> send instant
        self.next_id = 1
        self.credits = asyncio.Semaphore(load.window)
        pad = bytes(max(0, load.body_bytes - _STAMP.size))
        # 12 is a multiple of 3, so b64(stamp + pad) == b64(stamp) + b64(pad).
        self.pad_b64 = base64.urlsafe_b64encode(pad).rstrip(b"=").decode()
        self.prefix = (
            f'{{"type":"send","id":%d,"cmid":"{load.cmid_prefix}{idx}-%d",'
            f'"conv":"{spec.send_to}","kind":"message","body":"%s{self.pad_b64}"}}'
        )

    async def send(self, instant: int, window: _Window, result: LoadResult) -> None:
        n = self.next_id
        self.next_id += 1
        self.pending[n] = instant
        stamp = base64.urlsafe_b64encode(_STAMP.pack(instant, self.spec.tag)).decode()
        if window.m0 <= instant < window.m1:
            result.sent_in_window += 1
        await self.ws.send_str(self.prefix % (n, n, stamp))


async def _open(
    http: aiohttp.ClientSession, url: str, spec: SocketSpec, load: LoadSpec, idx: int
) -> _Socket:
    ws = await http.ws_connect(url, autoping=True, max_msg_size=0)
    await ws.send_str(json.dumps({"type": "auth", "token": spec.token}))
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket {idx}: closed during auth ({msg.type!r}, {msg.data!r})")
        if msg.data.startswith(_READY):
            return _Socket(ws, spec, load, idx)
        if msg.data.startswith(_ERROR):
            raise RuntimeError(f"socket {idx}: auth refused: {msg.data}")


async def _connect_all(http: aiohttp.ClientSession, load: LoadSpec) -> list[_Socket]:
    gate = asyncio.Semaphore(load.connect_concurrency)

    async def one(idx: int, spec: SocketSpec) -> _Socket:
        async with gate:
            return await _open(http, load.ws_url, spec, load, idx)

    return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(load.sockets))))


async def _reader(
    sock: _Socket, window: _Window, result: LoadResult, stopping: asyncio.Event
) -> None:
    ws = sock.ws
    measure = sock.spec.measure
    lat, ack_lat = result.latencies, result.ack_latencies
    m0, m1 = window.m0, window.m1
    now_ns = time.monotonic_ns
    b64decode, unpack = base64.urlsafe_b64decode, _STAMP.unpack
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            if not stopping.is_set():
                result.closed_early += 1
                result.first_error = result.first_error or f"socket closed: {ws.close_code}"
            return
        text: str = msg.data
        now = now_ns()
        if text.startswith(_OP):
            if measure:
                i = text.find(_BODY) + len(_BODY)
                sent, _ = unpack(b64decode(text[i : i + 16]))
                if m0 <= now < m1:
                    result.deliveries_in_window += 1
                if m0 <= sent < m1:
                    lat.append(now - sent)
        elif text.startswith(_ACK) or text.startswith(_ERROR):
            i = text.rfind('"id":')
            sent = sock.pending.pop(int(text[i + 5 : -1]), None) if i >= 0 else None
            if text.startswith(_ERROR):
                result.errors += 1
                result.first_error = result.first_error or text[:300]
            else:
                if m0 <= now < m1:
                    result.acked_in_window += 1
                if sent is not None and m0 <= sent < m1:
                    ack_lat.append(now - sent)
            if sent is not None:
                sock.credits.release()


async def _drain_frames(ws: aiohttp.ClientWebSocketResponse) -> None:
    while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
        pass


async def _closed_sender(sock: _Socket, window: _Window, result: LoadResult) -> None:
    now_ns = time.monotonic_ns
    while True:
        await sock.credits.acquire()
        now = now_ns()
        if now >= window.m1:
            return
        await sock.send(now, window, result)


async def _open_scheduler(
    senders: list[_Socket], rate: float, window: _Window, result: LoadResult
) -> None:
    """Open loop: message k is due at start + k/rate, whatever the node is doing."""
    interval = 1e9 / rate
    k = 0
    while True:
        now = time.monotonic_ns()
        if now >= window.m1:
            return
        due = int((now - window.start) / interval) + 1
        while k < due:
            await senders[k % len(senders)].send(window.start + int(k * interval), window, result)
            k += 1
        await asyncio.sleep(0.0005)


async def _run(load: LoadSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            socks = await _connect_all(http, load)
        except Exception as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(socks)))
        idle_readers = []
        if load.mode == "idle":  # keep reading: answers the node's heartbeat pings
            idle_readers = [loop.create_task(_drain_frames(s.ws)) for s in socks]
        command = await loop.run_in_executor(None, conn.recv)
        result = LoadResult(connected=len(socks))
        if load.mode == "idle" or command[0] != "go":
            result.closed_early = sum(1 for t in idle_readers if t.done())
            for task in idle_readers:
                task.cancel()
            await asyncio.gather(*idle_readers, return_exceptions=True)
            await asyncio.gather(*(s.ws.close() for s in socks), return_exceptions=True)
            conn.send(("result", result))
            return
        window = _Window(command[1], load.warmup_s, load.measure_s)
        stopping = asyncio.Event()
        readers = [
            loop.create_task(_reader(s, window, result, stopping), name=f"reader-{i}")
            for i, s in enumerate(socks)
        ]
        await asyncio.sleep(max(0.0, (window.start - time.monotonic_ns()) / 1e9))
        senders = [s for s in socks if s.spec.send_to is not None]
        if load.mode == "closed":
            driving = [loop.create_task(_closed_sender(s, window, result)) for s in senders]
        else:
            driving = [loop.create_task(_open_scheduler(senders, load.rate, window, result))]
        await asyncio.sleep(max(0.0, (window.m0 - time.monotonic_ns()) / 1e9))
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, (window.m1 - time.monotonic_ns()) / 1e9))
        result.cpu_s = time.process_time() - cpu0
        await asyncio.gather(*driving, return_exceptions=True)
        # Drain: wait for outstanding acks, then a little longer for their deliveries.
        deadline = time.monotonic() + load.drain_s
        while any(s.pending for s in socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
        result.unacked_at_end = sum(len(s.pending) for s in socks)
        stopping.set()
        await asyncio.gather(*(s.ws.close() for s in socks), return_exceptions=True)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        conn.send(("result", result))


def worker_main(load: LoadSpec, conn: Connection) -> None:
    """multiprocessing entry point (spawn): one event loop driving this worker's sockets."""
    raise_nofile_limit()
    try:
        asyncio.run(_run(load, conn))
    finally:
        conn.close()
