"""The load of bench.fed_bench; every entry point runs in its own process (multiprocessing, spawn).

- `ws_worker_main`: bench._load's WebSocket load (same frames, same send-instant stamps, same
  open and closed loops), except that it keeps reading after the window until deliveries stop
  arriving: the receivers of the cross-node runs sit in another process and on another node than
  the senders, so "every ack is in" says nothing about the deliveries at B.
- `writer_main`: a fixed number of sends into one conversation, as fast as `window` unacked
  sends per socket allow; for the partition, where what matters is the count, not a window.
- `nats_pub_main` / `nats_sub_main`: the ceiling. Raw nats-py publish -> subscribe through the
  same nats-server, same body size and stamp, same open loop; the closed loop is a window of
  unreceived messages kept by cumulative counts the subscriber publishes back every
  `ack_every` messages (core NATS has no acks of its own).

CLOCK_MONOTONIC is system-wide on Linux, so a stamp taken in the sending process can be
subtracted from the receiving process's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

import aiohttp
import nats

from bench._load import (
    _STAMP,
    LoadResult,
    LoadSpec,
    SocketSpec,
    _closed_sender,
    _connect_all,
    _open_scheduler,
    _reader,
    _Window,
    raise_nofile_limit,
)

QUIET_S = 1.0  # after the window: stop reading once nothing has arrived for this long


async def _sleep_until(instant_ns: int) -> None:
    await asyncio.sleep(max(0.0, (instant_ns - time.monotonic_ns()) / 1e9))


async def _until_quiet(count: Any, deadline: float) -> None:
    """Wait until `count()` stops growing for QUIET_S, or the deadline (monotonic s)."""
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now_count = count()
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif time.monotonic() - since >= QUIET_S:
            return


# -- Yanzi over WebSockets -------------------------------------------------------------------------


async def _ws_run(load: LoadSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            socks = await _connect_all(http, load)
        except Exception as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(socks)))
        command = await loop.run_in_executor(None, conn.recv)
        result = LoadResult(connected=len(socks))
        if command[0] != "go":
            await asyncio.gather(*(s.ws.close() for s in socks), return_exceptions=True)
            conn.send(("result", result))
            return
        window = _Window(command[1], load.warmup_s, load.measure_s)
        stopping = asyncio.Event()
        readers = [loop.create_task(_reader(s, window, result, stopping)) for s in socks]
        await _sleep_until(window.start)
        senders = [s for s in socks if s.spec.send_to is not None]
        driving = []
        if senders and load.mode == "closed":
            driving = [loop.create_task(_closed_sender(s, window, result)) for s in senders]
        elif senders:
            driving = [loop.create_task(_open_scheduler(senders, load.rate, window, result))]
        await _sleep_until(window.m0)
        cpu0 = time.process_time()
        await _sleep_until(window.m1)
        result.cpu_s = time.process_time() - cpu0
        await asyncio.gather(*driving, return_exceptions=True)
        deadline = time.monotonic() + load.drain_s
        while any(s.pending for s in socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await _until_quiet(lambda: len(result.latencies), deadline)
        result.unacked_at_end = sum(len(s.pending) for s in socks)
        stopping.set()
        await asyncio.gather(*(s.ws.close() for s in socks), return_exceptions=True)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        conn.send(("result", result))


def ws_worker_main(load: LoadSpec, conn: Connection) -> None:
    raise_nofile_limit()
    try:
        asyncio.run(_ws_run(load, conn))
    finally:
        conn.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterSpec:
    ws_url: str
    tokens: tuple[str, ...]  # one socket each
    conv: str
    per_socket: int  # sends per socket
    window: int = 16
    body_bytes: int = 128
    cmid_prefix: str = "w"


async def _write(spec: WriterSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    socks_spec = tuple(SocketSpec(token=t, send_to=spec.conv) for t in spec.tokens)
    load = LoadSpec(
        ws_url=spec.ws_url, sockets=socks_spec, mode="closed", window=spec.window,
        body_bytes=spec.body_bytes, cmid_prefix=spec.cmid_prefix,
    )  # fmt: skip
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            socks = await _connect_all(http, load)
        except Exception as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(socks)))
        await loop.run_in_executor(None, conn.recv)
        result = LoadResult(connected=len(socks))
        window = _Window(time.monotonic_ns(), 0.0, 1e6)  # every send and ack counts
        stopping = asyncio.Event()
        readers = [loop.create_task(_reader(s, window, result, stopping)) for s in socks]
        t0, cpu0 = time.monotonic(), time.process_time()

        async def drive(sock: Any) -> None:
            for _ in range(spec.per_socket):
                await sock.credits.acquire()
                await sock.send(time.monotonic_ns(), window, result)

        await asyncio.gather(*(drive(s) for s in socks))
        deadline = time.monotonic() + 120
        while any(s.pending for s in socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seconds = time.monotonic() - t0
        result.cpu_s = time.process_time() - cpu0
        result.unacked_at_end = sum(len(s.pending) for s in socks)
        stopping.set()
        await asyncio.gather(*(s.ws.close() for s in socks), return_exceptions=True)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        conn.send(("result", result, seconds))


def writer_main(spec: WriterSpec, conn: Connection) -> None:
    try:
        asyncio.run(_write(spec, conn))
    finally:
        conn.close()


# -- raw nats-py: the ceiling ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsSpec:
    url: str
    mode: Literal["closed", "open"]
    subjects: int = 32  # like the 32 pairs' conversations: one subject each, round robin
    window: int = 128  # closed loop: published but not yet received
    ack_every: int = 16
    rate: float = 0.0  # open loop, msgs/s
    warmup_s: float = 2.0
    measure_s: float = 10.0
    drain_s: float = 10.0
    body_bytes: int = 128
    prefix: str = "fedbench.raw"


async def _connect(url: str, name: str) -> Any:
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, connect_timeout=5)


async def _publish(spec: NatsSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    nc = await _connect(spec.url, "fed-bench-pub")
    received = 0
    progress = asyncio.Event()

    async def on_ack(msg: Any) -> None:
        nonlocal received
        received = max(received, int(msg.data))
        progress.set()

    if spec.mode == "closed":
        await nc.subscribe(spec.prefix + "-ack", cb=on_ack)
    await nc.flush()
    conn.send(("ready", 1))
    command = await loop.run_in_executor(None, conn.recv)
    result = LoadResult(connected=1)
    window = _Window(command[1], spec.warmup_s, spec.measure_s)
    subjects = [f"{spec.prefix}.{i}" for i in range(spec.subjects)]
    pad = bytes(max(0, spec.body_bytes - _STAMP.size))
    sent = 0

    async def publish(instant: int) -> None:
        nonlocal sent
        await nc.publish(subjects[sent % len(subjects)], _STAMP.pack(instant, sent) + pad)
        sent += 1
        if window.m0 <= instant < window.m1:
            result.sent_in_window += 1

    await _sleep_until(window.start)
    cpu0 = time.process_time()
    in_window = False
    interval = 1e9 / spec.rate if spec.mode == "open" else 0.0
    while (now := time.monotonic_ns()) < window.m1:
        if not in_window and now >= window.m0:
            in_window, cpu0 = True, time.process_time()
        if spec.mode == "closed":
            if sent - received >= spec.window:
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), 1.0)
                continue
            await publish(now)
        else:
            due = int((now - window.start) / interval) + 1
            while sent < due:
                await publish(window.start + int(sent * interval))
            await asyncio.sleep(0.0005)
    result.cpu_s = time.process_time() - cpu0
    await nc.flush()
    await nc.drain()
    conn.send(("result", result))


async def _subscribe(spec: NatsSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    nc = await _connect(spec.url, "fed-bench-sub")
    result = LoadResult(connected=1)
    window: _Window | None = None
    received = 0
    now_ns, unpack = time.monotonic_ns, _STAMP.unpack_from
    ack_subject = spec.prefix + "-ack"  # outside the data wildcard

    async def on_msg(msg: Any) -> None:
        nonlocal received
        now = now_ns()
        sent, _ = unpack(msg.data)
        received += 1
        if window is not None:
            if window.m0 <= now < window.m1:
                result.deliveries_in_window += 1
            if window.m0 <= sent < window.m1:
                result.latencies.append(now - sent)
        if spec.mode == "closed" and received % spec.ack_every == 0:
            await nc.publish(ack_subject, str(received).encode())

    await nc.subscribe(spec.prefix + ".*", cb=on_msg, pending_msgs_limit=1 << 20)
    await nc.flush()
    conn.send(("ready", 1))
    command = await loop.run_in_executor(None, conn.recv)
    window = _Window(command[1], spec.warmup_s, spec.measure_s)
    await _sleep_until(window.m0)
    cpu0 = time.process_time()
    await _sleep_until(window.m1)
    result.cpu_s = time.process_time() - cpu0
    await _until_quiet(lambda: received, time.monotonic() + spec.drain_s)
    await nc.drain()
    conn.send(("result", result))


def nats_pub_main(spec: NatsSpec, conn: Connection) -> None:
    try:
        asyncio.run(_publish(spec, conn))
    finally:
        conn.close()


def nats_sub_main(spec: NatsSpec, conn: Connection) -> None:
    try:
        asyncio.run(_subscribe(spec, conn))
    finally:
        conn.close()
