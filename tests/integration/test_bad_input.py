"""Bad input through real sockets (DESIGN.md, "What bad input gets"; issue 3 item 8).

Every case checks three things: the offender gets the documented error code (and, where the
session survives, keeps working); a second, well-behaved pair of users keeps chatting; and no
message acknowledged before or during the garbage is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import ERROR_CODES
from tests.helpers import NodeProcess
from tests.integration.conftest import (
    Api,
    Closed,
    Login,
    Nodes,
    RawWs,
    Ws,
    body_of,
    device_keys,
    eventually,
    text_of,
)

pytestmark = pytest.mark.integration

MAX_FRAME = 16 * 1024  # small limits keep the oversized cases quick
MAX_BODY = 8 * 1024
MAX_ERRORS = 30
RATE_PER_S, RATE_BURST = 20, 20
_names = itertools.count(1)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the whole module; each test uses users of its own."""
    node = NodeProcess(
        tmp_path_factory.mktemp("bad") / "node",
        env={
            "YANZI_MAX_FRAME_BYTES": str(MAX_FRAME),
            "YANZI_MAX_BODY_BYTES": str(MAX_BODY),
            "YANZI_MAX_ERRORS_PER_SESSION": str(MAX_ERRORS),
            "YANZI_RATE_PER_S": str(RATE_PER_S),
            "YANZI_RATE_BURST": str(RATE_BURST),
            "YANZI_AUTH_TIMEOUT_S": "1",
        },
    ).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def api(http: aiohttp.ClientSession, shared_node: NodeProcess) -> Api:
    return Api(http, shared_node)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


class Bystanders:
    """A well-behaved pair chatting on the same node while a test throws garbage at it."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.acked: list[dict[str, Any]] = []

    async def start(self) -> Bystanders:
        self.x, self.y = await self.api.users(fresh("calm"), fresh("calm"))
        self.conv = await self.api.direct(self.x, self.y.user)
        self.wx, self.wy = await self.api.ws(self.x), await self.api.ws(self.y)
        await self.check()
        return self

    async def check(self) -> None:
        """One more live round trip each way, then every acked message is still there once."""
        for sender, receiver in ((self.wx, self.wy), (self.wy, self.wx)):
            text = fresh("calm message ")
            ack = await sender.message(self.conv, text)
            assert ack["type"] == "ack", ack
            self.acked.append(ack)
            await receiver.expect_op(self.conv, text)
        ops, _, _ = await self.api.sync_all(self.y)
        dots = [op["dot"] for op in ops]
        for ack in self.acked:
            assert dots.count(ack["dot"]) == 1, ack


@pytest.fixture
async def others(api: Api) -> AsyncIterator[Bystanders]:
    found = await Bystanders(api).start()
    yield found
    await found.check()


@pytest.fixture
async def pair(api: Api) -> tuple[Login, Login, str]:
    a, b = await api.users(fresh("bad"), fresh("peer"))
    return a, b, await api.direct(a, b.user)


async def assert_alive(ws: Ws, conv: str | None = None) -> None:
    """The session still answers, and (given a conversation) still sends."""
    assert (await ws.request({"type": "ping"}))["type"] == "pong"
    if conv is not None:
        assert (await ws.message(conv, "still fine"))["type"] == "ack"


async def error_for(ws: Ws, raw: str | dict[str, Any]) -> dict[str, Any]:
    await (ws.ws.send_str(raw) if isinstance(raw, str) else ws.send(raw))
    return await ws.expect(lambda f: f["type"] == "error")


# -- WebSocket frames ----------------------------------------------------------------------


MALFORMED = [
    "",
    "{",
    "{not json}",
    '{"type": "ping",}',
    "[1, 2",
    '{"type": "ping", "type": "ping"}',  # duplicate key
    '{"type": "ping", "n": 1.5}',  # floats are refused
    '{"type": "ping", "n": NaN}',
    '{"type": "ping", "n": 123456789012345678901234567890}',
    '"\\ud800"',  # lone surrogate
    "[" * 100 + "]" * 100,  # too deep
]


async def test_malformed_json_gets_bad_json_and_the_session_continues(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    for raw in MALFORMED:
        err = await error_for(ws, raw)
        assert err["code"] == "bad_json", (raw, err)
        assert err["message"]
    for raw in ("null", "123", '"ping"', "[]", "true"):
        assert (await error_for(ws, raw))["code"] == "bad_frame", raw
    await assert_alive(ws, conv)
    await others.check()


async def test_unknown_frame_types(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    err = await error_for(ws, {"type": "teleport", "id": 7})
    assert err == {
        "type": "error",
        "code": "unknown_type",
        "message": err["message"],
        "id": 7,
    }
    assert "teleport" in err["message"]
    for frame in ({"type": 5}, {"id": "x"}, {"type": None}, {"type": "PING"}):
        assert (await error_for(ws, frame))["code"] == "unknown_type", frame
    await assert_alive(ws, conv)


WRONG_TYPES: list[dict[str, Any]] = [
    {"type": "send", "cmid": 1, "conv": "c", "kind": "message"},
    {"type": "send", "cmid": "", "conv": "c", "kind": "message"},
    {"type": "send", "cmid": "x" * 65, "conv": "c", "kind": "message"},
    {"type": "send", "cmid": "c1", "conv": 42, "kind": "message"},
    {"type": "send", "cmid": "c1", "conv": "has space", "kind": "message"},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "shout"},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": ["message"]},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "body": 12},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "body": "not base64!"},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "body": "QQ=="},  # padded
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "attrs": []},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "attrs": {"a": {"b": 1}}},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "dsig": "AAAA"},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "target": 3},
    {"type": "send", "cmid": "c1", "conv": "c", "kind": "message", "extra": True},
    {"type": "send", "cmid": "c1", "conv": "c"},
    {"type": "read", "conv": "c", "op_id": None},
    {"type": "typing", "conv": "c", "active": "yes"},
    {"type": "typing", "conv": "c"},
    {"type": "ping", "id": [1]},
    {"type": "ping", "id": True},
    {"type": "ping", "id": "x" * 65},
    {"type": "auth", "token": "again"},  # already authenticated
]


async def test_wrong_field_types_get_bad_frame_with_the_request_id(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    for i, frame in enumerate(WRONG_TYPES):
        if "id" not in frame:
            frame = {**frame, "id": f"r{i}"}
        err = await error_for(ws, frame)
        assert err["code"] == "bad_frame", (frame, err)
        if isinstance(frame["id"], str) and len(frame["id"]) <= 64:
            assert err.get("id") == frame["id"], (frame, err)
    await assert_alive(ws, conv)
    ops, _, _ = await api.sync_all(a)
    assert [text_of(op) for op in ops if op["content"]["kind"] == "message"] == ["still fine"]


async def test_oversized_frames(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, b, conv = pair
    ws, peer = await api.ws(a), await api.ws(b)
    # Between the limit and 4x the limit: refused with too_large, the session lives.
    for size in (MAX_FRAME + 1, 2 * MAX_FRAME, 4 * MAX_FRAME - 100):
        frame = json.dumps({"type": "ping", "pad": "x" * size})
        err = await error_for(ws, frame)
        assert err["code"] == "too_large", size
    await assert_alive(ws, conv)
    await peer.expect_op(conv, "still fine")

    # Beyond 4x: the server closes this one connection (RFC 6455 1009 "message too big").
    await ws.ws.send_str(json.dumps({"type": "ping", "pad": "x" * (5 * MAX_FRAME)}))
    assert await ws.closed() == 1009
    await assert_alive(peer, conv)  # the peer's session is untouched
    again = await api.ws(a)  # and the offender may simply reconnect
    await assert_alive(again, conv)


async def test_oversized_body_in_a_frame_that_fits(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    ok = await ws.request(
        {
            "type": "send",
            "cmid": "b-ok",
            "conv": conv,
            "kind": "message",
            "body": body_of("x" * MAX_BODY),
        }
    )
    assert ok["type"] == "ack"
    err = await ws.request(
        {
            "type": "send",
            "cmid": "b-big",
            "conv": conv,
            "kind": "message",
            "body": body_of("x" * (MAX_BODY + 1)),
        }
    )
    assert err["type"] == "error" and err["code"] == "too_large", err
    await assert_alive(ws, conv)
    # Over HTTP too.
    status, body = await api.call(
        "POST",
        "/v1/ops",
        who=a,
        json_body={
            "cmid": "b-big2",
            "conv": conv,
            "kind": "message",
            "body": body_of("y" * (MAX_BODY + 1)),
        },
    )
    assert status == 413 and body["error"]["code"] == "too_large"


async def test_unknown_and_foreign_conversations(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    reply = await ws.message("no-such-conv", "hello?")
    assert reply["type"] == "error" and reply["code"] == "not_found", reply

    # The bystanders' conversation exists, but `a` is not in it.
    foreign = others.conv
    reply = await ws.message(foreign, "let me in")
    assert reply["code"] == "not_member", reply
    for frame in (
        {"type": "read", "conv": foreign, "op_id": others.acked[0]["op_id"]},
        {"type": "typing", "conv": foreign, "active": True},
    ):
        reply = await ws.request(frame)
        assert reply["type"] == "error" and reply["code"] == "not_member", (frame, reply)
    reply = await ws.request(
        {"type": "send", "cmid": "edit-foreign", "conv": foreign, "kind": "edit",
         "target": others.acked[0]["op_id"], "body": body_of("mine now")}
    )  # fmt: skip
    assert reply["code"] == "not_member"
    reply = await ws.request(
        {"type": "send", "cmid": "join", "conv": foreign, "kind": "member_add", "target": a.user}
    )
    assert reply["code"] == "not_member"

    for path in (
        f"/v1/conversations/{foreign}",
        f"/v1/conversations/{foreign}/messages",
    ):
        status, body = await api.call("GET", path, who=a)
        assert (status, body["error"]["code"]) == (403, "not_member"), path
    status, body = await api.call(
        "POST",
        f"/v1/conversations/{foreign}/read",
        who=a,
        json_body={"op_id": others.acked[0]["op_id"]},
    )
    assert (status, body["error"]["code"]) == (403, "not_member")
    status, body = await api.call("GET", "/v1/conversations/nope", who=a)
    assert (status, body["error"]["code"]) == (404, "not_found")

    # Sync never leaks foreign ops, whatever the cursor claims.
    ops, _, _ = await api.sync_all(a)
    assert {op["content"]["conv"] for op in ops} == {conv}
    await assert_alive(ws, conv)
    # Nobody but the members heard anything.
    assert (await others.wx.request({"type": "ping"}))["type"] == "pong"
    assert not [f for f in others.wx.backlog if f["type"] == "typing"]


async def test_forbidden_and_missing_targets(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, b, conv = pair
    wa, wb = await api.ws(a), await api.ws(b)
    mine = await wa.message(conv, "mine")
    reply = await wb.request(
        {"type": "send", "cmid": "e1", "conv": conv, "kind": "edit", "target": mine["op_id"],
         "body": body_of("yours?")}
    )  # fmt: skip
    assert reply["code"] == "forbidden", reply
    reply = await wb.request(
        {"type": "send", "cmid": "e2", "conv": conv, "kind": "edit", "target": "nothing-here"}
    )
    assert reply["code"] == "not_found", reply
    reply = await wa.request(
        {"type": "send", "cmid": "e3", "conv": conv, "kind": "member_add", "target": "zed"}
    )
    assert reply["code"] == "forbidden", reply  # direct conversations have fixed members
    reply = await wa.request(
        {"type": "send", "cmid": "e4", "conv": conv, "kind": "create",
         "attrs": {"type": "group", "members": []}}
    )  # fmt: skip
    assert reply["code"] == "conflict", reply
    await assert_alive(wa, conv)


async def closed_with(ws: Ws, timeout: float = 10.0) -> tuple[int | None, str]:
    """Read (into the backlog) until the server closes: its close code and reason."""
    with pytest.raises(Closed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                ws.backlog.append(await ws.recv(timeout))
    return closed.value.code, closed.value.reason


async def test_expired_token_is_refused_with_4001(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    node = nodes.start({"YANZI_TOKEN_TTL_S": "2"})
    api = Api(http, node)
    alice = await api.user("alice")
    others = await Bystanders(api).start()

    async def expired() -> bool:
        status, body = await api.call("GET", "/v1/me", who=alice)
        return status == 401 and body["error"]["code"] == "token_expired"

    await eventually(expired, timeout=5, interval=0.1)
    ws = await http.ws_connect(node.ws_url)
    await ws.send_json({"type": "auth", "token": alice.token})
    err = json.loads((await ws.receive()).data)
    assert err["type"] == "error" and err["code"] == "token_expired"
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4001

    # Sessions open when their token expires are closed too: an error frame, then 4001.
    for ws in (others.wx, others.wy):
        assert await closed_with(ws) == (4001, "token_expired")
        assert [f["code"] for f in ws.backlog if f["type"] == "error"] == ["token_expired"]

    fresh_login = await api.login("alice")  # logging in again works
    assert (await (await api.ws(fresh_login)).request({"type": "ping"}))["type"] == "pong"
    others.x, others.y = await api.login(others.x.user), await api.login(others.y.user)
    old = others.wx, others.wy
    others.wx, others.wy = await api.ws(others.x), await api.ws(others.y)
    # Same devices: continue their cmids (a reused cmid would just return its old ack).
    others.wx._cmids, others.wy._cmids = old[0]._cmids, old[1]._cmids
    await others.check()


async def _auth_refused(api: Api, token: Any) -> tuple[dict[str, Any], int | None]:
    ws = await api.http.ws_connect(api.node.ws_url)
    await ws.send_json({"type": "auth", "token": token})
    err = json.loads((await ws.receive(timeout=5)).data)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    return err, ws.close_code


async def test_revoked_and_bogus_tokens_are_refused_with_4001(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    keep = await api.login(a.user, "other-device")
    same_token = [await api.ws(a), await api.ws(a)]
    kept = await api.ws(keep)
    assert await api.ok("POST", "/v1/logout", who=a) == {"ok": True}
    # The logged-out token's sessions end (4011); the user's other token keeps its own.
    for ws in same_token:
        assert await ws.closed() == 4011
    await assert_alive(kept, conv)
    err, code = await _auth_refused(api, a.token)
    assert (err["code"], code) == ("auth_failed", 4001)
    status, body = await api.call("GET", "/v1/me", who=a)
    assert (status, body["error"]["code"]) == (401, "auth_failed")
    for token in ("x", "A" * 43, "", 12, "A" * 300):
        err, code = await _auth_refused(api, token)
        assert code == 4001 and err["code"] in ("auth_failed", "auth_required"), token
    # The user's other device is unaffected.
    live = await api.ws(keep)
    await assert_alive(live, conv)

    # "Log out everywhere" revokes every token and closes the user's live sessions (4011).
    peer_ws = await api.ws(pair[1])
    assert (await api.ok("POST", "/v1/logout_all", who=keep))["revoked"] >= 1
    assert await live.closed() == 4011
    err, code = await _auth_refused(api, keep.token)
    assert (err["code"], code) == ("auth_failed", 4001)
    await assert_alive(peer_ws, conv)  # the other member is untouched


async def test_ready_and_auth_errors_echo_the_auth_frames_id(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, _ = pair
    ws = await api.http.ws_connect(api.node.ws_url)
    await ws.send_json({"type": "auth", "token": a.token, "id": "hello-1"})
    ready = json.loads((await ws.receive(timeout=5)).data)
    assert ready["type"] == "ready" and ready["id"] == "hello-1"
    await ws.close()
    for token, code in (("A" * 43, "auth_failed"), (12, "auth_required")):
        ws = await api.http.ws_connect(api.node.ws_url)
        await ws.send_json({"type": "auth", "token": token, "id": 7})
        err = json.loads((await ws.receive(timeout=5)).data)
        assert err["code"] == code
        # A well-formed auth frame's id is echoed; a malformed frame's id is not trusted.
        assert err.get("id") == (7 if code == "auth_failed" else None), err
        await ws.close()


async def test_first_frame_must_be_auth(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    for first in (
        json.dumps({"type": "ping"}),
        json.dumps({"type": "send", "cmid": "x", "conv": conv, "kind": "message"}),
        "garbage",
        json.dumps({"type": "auth"}),
    ):
        ws = await api.http.ws_connect(api.node.ws_url)
        await ws.send_str(first)
        err = json.loads((await ws.receive(timeout=5)).data)
        assert err["type"] == "error" and err["code"] == "auth_required", first
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001

    ws = await api.http.ws_connect(api.node.ws_url)
    await ws.send_bytes(json.dumps({"type": "auth", "token": a.token}).encode())
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4001

    ws = await api.http.ws_connect(api.node.ws_url)  # says nothing at all
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4002
    ops, _, _ = await api.sync_all(a)
    assert [op["content"]["kind"] for op in ops] == ["create"]  # nothing got through


async def test_replayed_cmid_gets_the_same_ack_and_no_second_op(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, b, conv = pair
    ws, peer = await api.ws(a), await api.ws(b)
    first = await ws.message(conv, "once", cmid="dup-1")
    again = await ws.message(conv, "once", cmid="dup-1")
    changed = await ws.message(conv, "a different body", cmid="dup-1")
    assert first == {**again, "id": first["id"]} == {**changed, "id": first["id"]}

    # Pipelined replays of a new cmid, all in flight at once: one op, identical acks.
    frames = [
        {"type": "send", "id": f"p{i}", "cmid": "dup-2", "conv": conv, "kind": "message",
         "body": body_of("pipelined")}
        for i in range(5)
    ]  # fmt: skip
    for frame in frames:
        await ws.send(frame)
    acks = [await ws.expect(lambda f, i=i: f.get("id") == f"p{i}") for i in range(5)]
    assert len({(x["op_id"], tuple(x["dot"])) for x in acks}) == 1

    # The HTTP form shares the same de-duplication (same user and device).
    via_http = await api.send(a, conv, body=body_of("once"), cmid="dup-1")
    assert via_http["op_id"] == first["op_id"]

    ops, _, _ = await api.sync_all(b)
    texts = [text_of(op) for op in ops if op["content"]["kind"] == "message"]
    assert texts == ["once", "pipelined"]
    await peer.expect_op(conv, "once")
    await peer.expect_op(conv, "pipelined")
    assert await ws.request({"type": "ping"}) and not [
        f for f in peer.backlog if f["type"] == "op" and text_of(f["op"]) == "once"
    ]


async def test_flood_is_rate_limited_without_touching_others(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, b, conv = pair
    ws = await api.ws(a)
    n = 3 * RATE_BURST
    for i in range(n):
        await ws.send(
            {"type": "send", "id": i, "cmid": f"flood-{i}", "conv": conv, "kind": "message",
             "body": body_of(f"flood {i}")}
        )  # fmt: skip
    replies = [await ws.expect(lambda f, i=i: f.get("id") == i) for i in range(n)]
    acked = [r for r in replies if r["type"] == "ack"]
    limited = [r for r in replies if r["type"] == "error"]
    assert {r["code"] for r in limited} == {"rate_limited"}
    assert RATE_BURST <= len(acked) < n and len(limited) >= n - 2 * RATE_BURST
    await others.check()  # the other users did not notice

    # The bucket refills; the flooder is served again without reconnecting.
    async def sends_again() -> bool:
        return (await ws.message(conv, "calmer now"))["type"] == "ack"

    await eventually(sends_again, timeout=5, interval=0.2)
    ops, _, _ = await api.sync_all(b)
    dots = [op["dot"] for op in ops]
    assert all(dots.count(r["dot"]) == 1 for r in acked)
    assert len([op for op in ops if text_of(op).startswith("flood")]) == len(acked)


async def test_binary_frames_are_refused_and_the_session_continues(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    for payload in (b"\x00\x01\x02", json.dumps({"type": "ping"}).encode(), b""):
        await ws.ws.send_bytes(payload)
        err = await ws.expect(lambda f: f["type"] == "error")
        assert err["code"] == "bad_frame"
    await assert_alive(ws, conv)


async def test_too_many_errors_closes_the_session(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    ws = await api.ws(a)
    for _ in range(MAX_ERRORS + 5):
        try:
            await ws.ws.send_str("{")
        except ConnectionError:
            break
    assert await ws.closed() == 4009
    errors = [f for f in ws.backlog if f["type"] == "error"]
    assert len(errors) == MAX_ERRORS
    await assert_alive(await api.ws(a), conv)

    # Binary garbage counts too.
    ws = await api.ws(a)
    for _ in range(MAX_ERRORS + 5):
        try:
            await ws.ws.send_bytes(b"\x00garbage")
        except ConnectionError:
            break
    assert await ws.closed() == 4009
    assert len([f for f in ws.backlog if f["type"] == "error"]) == MAX_ERRORS
    await assert_alive(await api.ws(a), conv)


async def test_websocket_protocol_violations_on_a_bare_socket(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair

    async def authed() -> RawWs:
        raw = await RawWs.connect(api.node)
        await raw.send_json({"type": "auth", "token": a.token})
        assert (await raw.read_json())["type"] == "ready"
        return raw

    raw = await authed()
    await raw.send_frame(b"\xff\xfe not utf-8")  # RFC 6455 §8.1: invalid UTF-8 in text -> 1007
    code, _ = await raw.read_until_close()
    assert code == 1007
    raw.close()

    raw = await authed()
    await raw.send_frame(b"", opcode=0x3)  # reserved opcode -> 1002
    code, _ = await raw.read_until_close()
    assert code == 1002
    raw.close()

    # A fragmented text frame is legal and reassembled.
    raw = await authed()
    frame = json.dumps({"type": "ping", "id": "frag"}).encode()
    await raw.send_frame(frame[:5], opcode=0x1, fin=False)
    await raw.send_frame(frame[5:], opcode=0x0, fin=True)
    assert await raw.read_json() == {"type": "pong", "id": "frag"}
    raw.close()  # and vanishing without a close frame is fine too

    # A bare socket that drops mid-handshake.
    _, writer = await asyncio.open_connection("127.0.0.1", api.node.port)
    writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    writer.close()
    await assert_alive(await api.ws(a), conv)


# -- HTTP ----------------------------------------------------------------------------------


async def test_bad_http_bodies_get_documented_codes(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    me, peer = {"who": a}, fresh("nodm")  # no direct conversation with `a` yet
    await api.register(peer)
    pw = "x" * 10
    ops, sync = "/v1/ops", "/v1/sync"
    read = f"/v1/conversations/{conv}/read"
    msg = {"cmid": "h", "conv": conv, "kind": "message"}
    login = {"username": a.user, "password": pw, "device": "d"}

    def j(body: Any, **kw: Any) -> dict[str, Any]:
        return {"json_body": body, **kw}

    def cursor(raw: str) -> dict[str, Any]:
        return {**me, "params": {"cursor": raw}}

    def limit(raw: str) -> dict[str, Any]:
        return {**me, "params": {"limit": raw}}

    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/v1/register", {"data": "not json"}, 400, "bad_json"),
        ("POST", "/v1/register", {"data": ""}, 400, "bad_json"),
        ("POST", "/v1/register", {"data": "[1]"}, 400, "bad_request"),
        ("POST", "/v1/register", {"data": '{"username": "z", "username": "y"}'}, 400, "bad_json"),
        ("POST", "/v1/register", j({"username": 5, "password": pw}), 400, "bad_request"),
        ("POST", "/v1/register", j({"username": "ok-name"}), 400, "bad_request"),
        ("POST", "/v1/register", j({"username": "No Caps!", "password": pw}), 400, "bad_request"),
        ("POST", "/v1/register", j({"username": a.user, "password": pw}), 409, "username_taken"),
        ("POST", "/v1/login", j({**login, "keys": device_keys()}), 401, "bad_credentials"),
        ("POST", "/v1/login", j({**login, "keys": "k"}), 400, "bad_request"),
        (
            "POST",
            "/v1/login",
            j({**login, "keys": {"ed25519": "AA", "x25519": "AA"}}),
            400,
            "bad_request",
        ),
        ("POST", ops, {**me, "data": "{"}, 400, "bad_json"),
        ("POST", ops, j({**msg, "type": "send"}, **me), 400, "bad_request"),
        ("POST", ops, j({**msg, "body": 7}, **me), 400, "bad_frame"),
        ("POST", ops, j({**msg, "kind": "nope"}, **me), 400, "bad_frame"),
        ("POST", ops, j({**msg, "conv": "nope"}, **me), 404, "not_found"),
        ("POST", ops, j(msg), 401, "auth_required"),
        ("POST", ops, j({}, headers={"Authorization": "Bearer nope"}), 401, "auth_failed"),
        ("POST", ops, j({}, headers={"Authorization": "Basic abc"}), 401, "auth_required"),
        ("POST", "/v1/direct", j({"user": a.user}, **me), 400, "bad_request"),
        ("POST", "/v1/direct", j({"user": "nobody-here"}, **me), 404, "not_found"),
        ("POST", "/v1/direct", j({"user": ["x"]}, **me), 400, "bad_request"),
        # A dsig of the wrong length is malformed, not a signature that fails to verify.
        ("POST", "/v1/direct", j({"user": peer, "dsig": "AAAA"}, **me), 400, "bad_request"),
        (
            "POST",
            "/v1/direct",
            j({"user": peer, "dsig": body_of("s" * 32)}, **me),
            400,
            "bad_request",
        ),
        ("POST", read, j({"op_id": 3}, **me), 400, "bad_request"),
        ("POST", read, j({"op_id": "nope"}, **me), 404, "not_found"),
        ("GET", sync, cursor("!!!"), 400, "bad_request"),
        ("GET", sync, cursor(body_of("{}")), 400, "bad_request"),
        ("GET", sync, cursor(body_of('{"v":2,"vv":{}}')), 400, "bad_request"),
        ("GET", sync, cursor(body_of('{"v":1,"vv":{"c":{"n":-1}}}')), 400, "bad_request"),
        ("GET", sync, cursor(body_of('{"v":1,"vv":{"c":{"n":1.5}}}')), 400, "bad_request"),
        ("GET", sync, limit("0"), 400, "bad_request"),
        ("GET", sync, limit("-5"), 400, "bad_request"),
        ("GET", sync, limit("ten"), 400, "bad_request"),
        ("GET", sync, limit("²"), 400, "bad_request"),
        ("GET", sync, limit("9" * 5000), 400, "bad_request"),
        ("GET", sync, limit("100000"), 400, "bad_request"),
        ("GET", f"/v1/conversations/{conv}/messages", limit("1e3"), 400, "bad_request"),
        ("GET", "/v1/users/nobody-here/devices", me, 404, "not_found"),
    ]
    cases += [
        ("POST", sync, j({"cursor": 5}, **me), 400, "bad_request"),
        ("POST", sync, j({"cursor": "!!!"}, **me), 400, "bad_request"),
        ("POST", sync, j({"limit": "ten"}, **me), 400, "bad_request"),
        ("POST", sync, j({"limit": 0}, **me), 400, "bad_request"),
        ("POST", sync, j({"limit": 10**6}, **me), 400, "bad_request"),
        ("POST", sync, {**me, "data": "[]"}, 400, "bad_request"),
        ("GET", "/v1/nope", {}, 404, "not_found"),
        ("DELETE", sync, me, 405, "bad_request"),
        ("GET", "/v1/ws", {}, 400, "bad_request"),  # no WebSocket upgrade
    ]
    for method, path, kw, status, code in cases:
        got_status, body = await api.call(method, path, **kw)
        assert (got_status, body.get("error", {}).get("code")) == (status, code), (path, kw, body)
        assert body["error"]["message"]
    await others.check()


async def test_oversized_http_body(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    a, _, conv = pair
    big = json.dumps({"cmid": "big", "conv": conv, "kind": "message", "pad": "x" * MAX_FRAME})
    status, body = await api.call("POST", "/v1/ops", who=a, data=big)
    assert (status, body["error"]["code"]) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the node must count
        for _ in range(8):
            yield b" " * MAX_FRAME

    async with api.http.post(api.url + "/v1/ops", data=chunks(), headers=a.headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "too_large"

    # A valid body that arrives in pieces is read whole (not just its first piece).
    valid = json.dumps(
        {"cmid": "pieces", "conv": conv, "kind": "message", "body": body_of("p" * MAX_BODY)}
    ).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(valid), 1000):
            yield valid[i : i + 1000]
            await asyncio.sleep(0.005)  # shape the input: separate TCP segments

    async with api.http.post(api.url + "/v1/ops", data=pieces(), headers=a.headers) as resp:
        assert resp.status == 200, await resp.text()
    ops, _, _ = await api.sync_all(a)
    assert [text_of(op) for op in ops if op["content"]["kind"] == "message"] == ["p" * MAX_BODY]
    await others.check()


async def test_healthz_metrics_and_errors_are_counted(api: Api, others: Bystanders) -> None:
    health = await api.ok("GET", "/healthz")
    assert health["ok"] is True and health["node"] and health["version"]
    assert await api.metric('yanzi_errors_total{code="bad_json"}') >= 0
    before = await api.metric("yanzi_errors_total")
    await api.call("POST", "/v1/register", data="{")
    assert await api.metric("yanzi_errors_total") == before + 1


async def test_a_typing_flood_does_not_knock_other_members_off(
    api: Api, pair: tuple[Login, Login, str], others: Bystanders
) -> None:
    """Typing frames fan out to every member: unthrottled, one client could fill (and so
    close, as slow consumers) the send queues of everyone it shares a conversation with."""
    a, b, conv = pair
    attacker, victim = await api.ws(a), await api.ws(b)
    frame = json.dumps({"type": "typing", "conv": conv, "active": True})
    started = time.monotonic()  # the node cannot take a flood frame before this
    for _ in range(3000):
        await attacker.ws.send_str(frame)

    # The flooder is told (rate_limited); if it does not read its errors it may be closed as
    # a slow consumer itself: that is its own business. Its pong (or its close) also marks the
    # end of the flood: the node handles a session's frames in order, and stops at a close.
    try:
        assert (await attacker.request({"type": "ping"}, timeout=60))["type"] == "pong"
        slow = False
    except Closed as closed:
        assert closed.code == 4008
        slow = True
    flood_s = time.monotonic() - started
    errors = [f for f in attacker.backlog if f["type"] == "error"]
    assert {f["code"] for f in errors} <= {"rate_limited"}
    # A slow consumer's queue is dropped at its close (sessions.py): it may never see an error.
    assert errors or slow

    # The victim's session survives and still gets real messages.
    again = await api.ws(a)

    async def sends_again() -> bool:  # the flooder's bucket refills first
        return (await again.message(conv, "real message"))["type"] == "ack"

    await eventually(sends_again, timeout=10, interval=0.1)
    # Typing frames of the flood were queued to the victim before this op: all are in its backlog.
    await victim.expect_op(conv, "real message")
    await assert_alive(victim, conv)
    typing = [f for f in victim.backlog if f["type"] == "typing"]
    # The bucket lets through its burst, then RATE_PER_S a second while the flood lasts (a
    # loaded machine may take more than a second to get through 3000 frames).
    assert 0 < len(typing) <= RATE_BURST + RATE_PER_S * flood_s + 1, (len(typing), flood_s)


garbage_frames = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),
        st.dictionaries(
            st.sampled_from(["type", "id", "cmid", "conv", "kind", "body", "attrs", "active"]),
            st.one_of(
                st.sampled_from(["send", "read", "typing", "ping", "message", "auth"]),
                st.integers(),
                st.booleans(),
                st.none(),
                st.text(max_size=10),
            ),
        ).map(json.dumps),
    ),
    max_size=MAX_ERRORS - 5,
)


async def _drive(node: NodeProcess, token: str, frames: list[bytes | str]) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(node.ws_url)
        await ws.send_json({"type": "auth", "token": token})
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "ready"
        for frame in frames:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        await ws.send_json({"type": "ping", "id": "end"})
        while True:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg, frames)
            reply = json.loads(msg.data)
            if reply.get("id") == "end":
                assert reply["type"] == "pong"
                break
            if reply["type"] == "error":
                assert reply["code"] in ERROR_CODES and reply["message"]
                assert ERROR_CODES[reply["code"]][1], reply  # only session-surviving codes
        await ws.close()


def test_random_garbage_through_a_real_socket(shared_node: NodeProcess) -> None:
    """Hypothesis picks the garbage; the session answers each with a known code and lives."""

    async def setup() -> tuple[str, str]:
        async with aiohttp.ClientSession() as http:
            api = Api(http, shared_node)
            who = await api.user(fresh("fuzz"))
            return who.token, await api.direct(who, (await api.user(fresh("fuzzpeer"))).user)

    token, _ = asyncio.run(setup())

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames=garbage_frames)
    def run(frames: list[bytes | str]) -> None:
        asyncio.run(_drive(shared_node, token, frames))

    run()
