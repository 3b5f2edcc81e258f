"""Fixtures for integration tests: real `yanzi up` processes driven by raw aiohttp clients.

Nothing here uses the SDK: the point is to exercise the wire protocol (docs/protocol.md) the way
any third-party client would. `RawWs` goes one level lower still (a bare TCP socket speaking
RFC 6455 by hand) for cases aiohttp's client would refuse to produce or would buffer for us.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import b64decode, b64encode
from tests.helpers import NodeProcess, eventually

PASSWORD = "correct horse battery"
Frame = dict[str, Any]


def device_keys() -> dict[str, str]:
    return {
        "ed25519": b64encode(bytes(SigningKey.generate().verify_key)),
        "x25519": b64encode(bytes(PrivateKey.generate().public_key)),
    }


def body_of(text: str) -> str:
    return b64encode(text.encode())


def text_of(op: Frame) -> str:
    """The body of an op in wire form (a `sync` op or the `op` of a live frame), as text."""
    return b64decode(op["content"]["body"]).decode()


# -- nodes ---------------------------------------------------------------------------------


class Nodes:
    """Starts node processes in a test's tmp dir and stops every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[NodeProcess] = []
        self._names = itertools.count(1)

    def start(
        self, env: dict[str, str] | None = None, *, data_dir: Path | None = None
    ) -> NodeProcess:
        data_dir = data_dir or self.root / f"node{next(self._names)}"
        node = NodeProcess(data_dir, env=env).start()
        self.started.append(node)
        return node

    def restart(self, node: NodeProcess) -> NodeProcess:
        """Start again on the same data dir and port (after kill or stop)."""
        node.stop()
        node.start()
        return node

    def stop_all(self) -> None:
        for node in self.started:
            node.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    found = Nodes(tmp_path)
    try:
        yield found
    finally:
        found.stop_all()


@pytest.fixture
def node(nodes: Nodes) -> NodeProcess:
    return nodes.start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


# -- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    user: str
    device: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """Raw HTTP calls against one node; every helper returns the decoded JSON."""

    def __init__(self, http: aiohttp.ClientSession, node: NodeProcess) -> None:
        self.http = http
        self.node = node
        self._cmids = itertools.count(1)

    @property
    def url(self) -> str:
        return self.node.url

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: Login | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or text) for one request; never raises on a 4xx/5xx."""
        all_headers = {**(who.headers if who else {}), **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body)
            all_headers.setdefault("Content-Type", "application/json")
        async with self.http.request(
            method, self.url + path, data=data, params=params, headers=all_headers
        ) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode(errors="replace")

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert 200 <= status < 300, (method, path, status, body)
        return body

    async def register(self, user: str) -> None:
        await self.ok("POST", "/v1/register", json_body={"username": user, "password": PASSWORD})

    async def login(self, user: str, device: str = "d1") -> Login:
        body = await self.ok(
            "POST",
            "/v1/login",
            json_body={
                "username": user,
                "password": PASSWORD,
                "device": device,
                "keys": device_keys(),
            },
        )
        return Login(body["user"], body["device"], body["token"])

    async def user(self, name: str, device: str = "d1") -> Login:
        await self.register(name)
        return await self.login(name, device)

    async def users(self, *names: str) -> list[Login]:
        return list(await asyncio.gather(*(self.user(n) for n in names)))

    async def direct(self, who: Login, peer: str) -> str:
        body = await self.ok("POST", "/v1/direct", who=who, json_body={"user": peer})
        return str(body["conv"])

    async def send(self, who: Login, conv: str, kind: str = "message", **fields: Any) -> Frame:
        """POST /v1/ops; returns the ack (op_id, conv, hlc, dot)."""
        fields.setdefault("cmid", f"http-{next(self._cmids)}")
        result: Frame = await self.ok(
            "POST", "/v1/ops", who=who, json_body={"conv": conv, "kind": kind, **fields}
        )
        return result

    async def message(self, who: Login, conv: str, text: str, **fields: Any) -> Frame:
        return await self.send(who, conv, "message", body=body_of(text), **fields)

    async def group(self, owner: Login, conv: str, members: list[str], title: str = "") -> str:
        attrs: dict[str, Any] = {"type": "group", "members": members}
        if title:
            attrs["title"] = title
        await self.send(owner, conv, "create", attrs=attrs)
        return conv

    async def sync(self, who: Login, cursor: str = "", limit: int | None = None) -> Frame:
        params: dict[str, Any] = {"cursor": cursor}
        if limit is not None:
            params["limit"] = limit
        result: Frame = await self.ok("GET", "/v1/sync", who=who, params=params)
        return result

    async def sync_all(
        self, who: Login, cursor: str = "", limit: int | None = None
    ) -> tuple[list[Frame], str, int]:
        """Follow `more` to the end: (every op, the final cursor, pages fetched)."""
        ops: list[Frame] = []
        pages = 0
        while True:
            page = await self.sync(who, cursor, limit)
            pages += 1
            ops += page["ops"]
            cursor = page["cursor"]
            if not page["more"]:
                return ops, cursor, pages
            assert page["ops"], "a page with more=true must not be empty"

    async def history(
        self, who: Login, conv: str, before: str | None = None, limit: int | None = None
    ) -> Frame:
        params: dict[str, Any] = {}
        if before:
            params["before"] = before
        if limit is not None:
            params["limit"] = limit
        result: Frame = await self.ok(
            "GET", f"/v1/conversations/{conv}/messages", who=who, params=params
        )
        return result

    async def conversations(self, who: Login) -> list[Frame]:
        body = await self.ok("GET", "/v1/conversations", who=who)
        return list(body["conversations"])

    async def metric(self, name: str) -> float:
        """Sum of every sample of a Prometheus metric (0 if absent)."""
        async with self.http.get(self.url + "/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def ws(self, who: Login) -> Ws:
        """An authenticated WebSocket session (the `ready` frame already consumed)."""
        raw = await self.http.ws_connect(self.node.ws_url, max_msg_size=0, autoping=True)
        ws = Ws(raw, who)
        await ws.send({"type": "auth", "token": who.token})
        ready = await ws.expect(lambda f: f["type"] in ("ready", "error"))
        assert ready["type"] == "ready", ready
        ws.ready = ready
        return ws


@pytest.fixture
def api(http: aiohttp.ClientSession, node: NodeProcess) -> Api:
    return Api(http, node)


# -- WebSocket (aiohttp) ---------------------------------------------------------------------


class Closed(Exception):
    """The server closed the WebSocket; `code` is its close code."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class Ws:
    """One client WebSocket. Frames that an `expect` skipped stay in `backlog` for later."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, who: Login | None = None) -> None:
        self.ws = ws
        self.who = who
        self.backlog: list[Frame] = []
        self.ready: Frame = {}
        self._ids = itertools.count(1)
        self._cmids = itertools.count(1)

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> Frame:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame: Frame = json.loads(msg.data)
            return frame
        if msg.type == aiohttp.WSMsgType.CLOSE:
            # msg.data is the server's code; close_code turns 1006 if our reply cannot be sent.
            raise Closed(msg.data, str(msg.extra or ""))
        if msg.type == aiohttp.WSMsgType.CLOSING:
            raise Closed(self.ws.close_code, str(msg.extra or ""))
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise Closed(self.ws.close_code, str(msg.extra or ""))
        raise AssertionError(f"unexpected message {msg!r}")

    async def expect(self, pred: Callable[[Frame], bool], timeout: float = 10.0) -> Frame:
        """The first frame (backlog first) matching `pred`; others are kept in the backlog."""
        for i, frame in enumerate(self.backlog):
            if pred(frame):
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if pred(frame):
                    return frame
                self.backlog.append(frame)

    async def request(self, frame: Frame, timeout: float = 10.0) -> Frame:
        """Send a frame with a fresh id; the reply carrying that id (ack, ok, pong or error)."""
        rid = next(self._ids)
        await self.send({**frame, "id": rid})
        return await self.expect(lambda f: f.get("id") == rid, timeout)

    def next_cmid(self) -> str:
        return f"ws-{self.who.device if self.who else 'x'}-{next(self._cmids)}"

    async def message(self, conv: str, text: str, cmid: str | None = None) -> Frame:
        """Send one message and return the reply (an ack, or an error frame)."""
        return await self.request(
            {
                "type": "send",
                "cmid": cmid or self.next_cmid(),
                "conv": conv,
                "kind": "message",
                "body": body_of(text),
            }
        )

    async def expect_op(self, conv: str, text: str | None = None, timeout: float = 10.0) -> Frame:
        """The next live op of `conv` (with body `text` if given); returns the op object."""

        def match(f: Frame) -> bool:
            if f["type"] != "op" or f["op"]["content"]["conv"] != conv:
                return False
            return text is None or text_of(f["op"]) == text

        frame = await self.expect(match, timeout)
        op: Frame = frame["op"]
        return op

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; the close code."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.backlog.append(await self.recv(timeout))
                except Closed as closed:
                    return closed.code

    async def close(self) -> None:
        await self.ws.close()


# -- a WebSocket client written by hand on a bare socket ---------------------------------------


class RawWs:
    """RFC 6455 over a plain socket: frames of any opcode/size, and real TCP back-pressure.

    aiohttp's client keeps reading into its own buffers; this one reads only when asked, and
    its receive buffer can be made tiny, so a test can play a consumer that stopped reading.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, node: NodeProcess, *, rcvbuf: int | None = None) -> RawWs:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
        # A small limit: the StreamReader stops pulling from the socket once this much is buffered.
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_frame(self, payload: bytes, opcode: int = 0x1, *, fin: bool = True) -> None:
        mask = os.urandom(4)
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def send_json(self, frame: Frame) -> None:
        await self.send_frame(json.dumps(frame).encode())

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers do not mask)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_json(self, timeout: float = 10.0) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.read_frame()
                if opcode == 0x1:
                    frame: Frame = json.loads(payload)
                    return frame
                if opcode == 0x8:
                    raise Closed(*_close_payload(payload))

    async def read_until_close(self, timeout: float = 30.0) -> tuple[int | None, list[Frame]]:
        """Drain every frame up to the server's close frame: (close code, text frames seen)."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except asyncio.IncompleteReadError:
                    return None, frames
                if opcode == 0x1:
                    frames.append(json.loads(payload))
                elif opcode == 0x8:
                    return _close_payload(payload)[0], frames

    def close(self) -> None:
        self.writer.close()


def _close_payload(payload: bytes) -> tuple[int | None, str]:
    if len(payload) < 2:
        return None, ""
    return struct.unpack(">H", payload[:2])[0], payload[2:].decode(errors="replace")


__all__ = [
    "PASSWORD",
    "Api",
    "Closed",
    "Login",
    "Nodes",
    "RawWs",
    "Ws",
    "body_of",
    "device_keys",
    "eventually",
    "text_of",
]
