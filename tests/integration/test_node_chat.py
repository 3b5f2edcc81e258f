"""End-to-end chat against a real `yanzi up` process, with raw HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.helpers import NodeProcess
from tests.integration.conftest import Api, Closed, Nodes, RawWs, body_of, eventually, text_of

pytestmark = pytest.mark.integration


async def test_two_users_chat(api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    assert await api.direct(bob, "alice") == conv  # found again from either side
    a, b = await api.ws(alice), await api.ws(bob)
    assert a.ready["user"] == "alice" and a.ready["node"] == b.ready["node"]

    ack = await a.message(conv, "hello bob", cmid="first-words")
    assert ack["type"] == "ack" and ack["conv"] == conv and ack["cmid"] == "first-words"
    assert isinstance(ack["op_id"], str) and ack["op_id"]
    wall, counter = ack["hlc"]
    origin, seq = ack["dot"]
    assert (
        wall > 0 and counter >= 0 and origin == a.ready["node"] and seq >= 2
    )  # seq 1 is the create

    for ws in (a, b):
        op = await ws.expect_op(conv, "hello bob")
        assert op["content"]["author"] == "alice" and op["content"]["kind"] == "message"
        assert op["hlc"] == ack["hlc"] and op["dot"] == ack["dot"]

    reply = await b.message(conv, "hi alice")
    assert reply["type"] == "ack" and reply["dot"][1] == seq + 1
    assert (await a.expect_op(conv, "hi alice"))["content"]["author"] == "bob"

    page = await api.history(alice, conv)
    assert [m["body"] for m in page["messages"]] == [body_of("hello bob"), body_of("hi alice")]
    assert page["messages"][0]["op_id"] == ack["op_id"]

    # Without a request id the ack is still matched to its send: by cmid (also over HTTP).
    await a.send({"type": "send", "cmid": "no-id", "conv": conv, "kind": "message"})
    assert (await a.expect(lambda f: f["type"] == "ack"))["cmid"] == "no-id"
    assert (await api.message(alice, conv, "over http", cmid="by-http"))["cmid"] == "by-http"


async def test_group_of_20_fans_out_to_every_session(api: Api) -> None:
    names = [f"user{i:02d}" for i in range(20)]
    logins = await api.users(*names)
    owner = logins[0]
    conv = await api.group(owner, "g-twenty", names[1:], title="twenty")
    sockets = await asyncio.gather(*(api.ws(who) for who in logins))

    ack = await sockets[7].message(conv, "hello everyone")
    assert ack["type"] == "ack"
    ops = await asyncio.gather(*(ws.expect_op(conv, "hello everyone") for ws in sockets))
    assert {op["dot"][1] for op in ops} == {ack["dot"][1]}
    assert len(ops) == 20

    listed = await api.conversations(logins[19])
    assert [row["conv"] for row in listed] == [conv]
    assert len(listed[0]["members"]) == 20 and listed[0]["members"]["user00"] == "owner"
    assert listed[0]["settings"]["title"] == "twenty"


async def test_every_device_gets_every_op_including_the_senders_other_device(api: Api) -> None:
    await api.register("alice")
    phone, laptop = await api.login("alice", "phone"), await api.login("alice", "laptop")
    bob = await api.user("bob")
    conv = await api.direct(phone, "bob")
    a_phone, a_laptop, b = await api.ws(phone), await api.ws(laptop), await api.ws(bob)

    ack = await a_phone.message(conv, "from my phone")
    for ws in (a_phone, a_laptop, b):
        op = await ws.expect_op(conv, "from my phone")
        assert op["content"]["device"] == "phone" and op["dot"] == ack["dot"]

    await b.message(conv, "to both")
    for ws in (a_phone, a_laptop):
        await ws.expect_op(conv, "to both")


async def test_reconnect_after_a_missed_stretch_returns_exactly_the_gap(api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    b = await api.ws(bob)
    await api.message(alice, conv, "before")
    await b.expect_op(conv, "before")
    seen, cursor, _ = await api.sync_all(bob)
    assert [text_of(op) for op in seen if op["content"]["kind"] == "message"] == ["before"]
    await b.close()

    a = await api.ws(alice)
    acks = [await a.message(conv, f"missed {i}") for i in range(50)]
    assert all(ack["type"] == "ack" for ack in acks)

    gap, new_cursor, pages = await api.sync_all(bob, cursor, limit=7)
    assert pages == 8  # 50 ops in pages of 7
    assert [op["dot"] for op in gap] == [ack["dot"] for ack in acks]
    assert [text_of(op) for op in gap] == [f"missed {i}" for i in range(50)]
    again = await api.sync(bob, new_cursor)
    assert again["ops"] == [] and again["more"] is False and again["cursor"] == new_cursor
    # POST /v1/sync (cursor in the body, for cursors too long for a URL) says the same.
    posted = await api.ok("POST", "/v1/sync", who=bob, json_body={"cursor": cursor, "limit": 50})
    assert [op["dot"] for op in posted["ops"]] == [ack["dot"] for ack in acks]
    assert posted["cursor"] == new_cursor and posted["more"] is False

    # Live again after the catch-up: the next message arrives over the socket.
    b2 = await api.ws(bob)
    await a.message(conv, "live again")
    await b2.expect_op(conv, "live again")


async def test_idle_timeout_counts_client_frames_not_pongs(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    # Heartbeats every 0.4 s, idle after 1.5 s: an idle client answers several pings first.
    node = nodes.start({"YANZI_IDLE_TIMEOUT_S": "1.5", "YANZI_HEARTBEAT_S": "0.4"})
    api = Api(http, node)
    alice, bob = await api.users("alice", "bob")
    idle, busy = await api.ws(alice), await api.ws(bob)
    started = asyncio.get_running_loop().time()
    closing = asyncio.create_task(idle.closed(timeout=10))  # reads, so it answers pings
    while not closing.done():
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
        await asyncio.sleep(0.3)
    assert await closing == 4010
    assert asyncio.get_running_loop().time() - started < 6
    for _ in range(3):  # the client that keeps talking is not idle
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
        await asyncio.sleep(0.3)


async def test_metrics_count_each_new_op_once_from_every_endpoint(api: Api) -> None:
    alice, _ = await api.users("alice", "bob")
    a = await api.ws(alice)

    async def counts() -> tuple[float, float, float]:
        return (
            await api.metric("yanzi_sends_total"),
            await api.metric("yanzi_ack_latency_seconds_count"),
            await api.metric("yanzi_deliveries_total"),
        )

    conv = await api.direct(alice, "bob")  # a create, through POST /v1/direct
    await a.expect_op(conv)
    assert (await counts())[0] == 1
    await api.message(alice, conv, "over http", cmid="h1")
    await a.expect_op(conv, "over http")
    await a.message(conv, "over ws", cmid="w1")
    sends, acks, deliveries = await counts()
    assert sends == 3 and acks == 2  # both sends timed, HTTP included
    assert deliveries == 3  # op frames only (alice's one session); bob is offline
    # Retries are acked (and timed) again but are no new op: not a send, nothing delivered.
    await api.message(alice, conv, "over http", cmid="h1")
    await a.message(conv, "over ws", cmid="w1")
    await a.send({"type": "typing", "conv": conv, "active": True})
    assert await a.request({"type": "ping"})
    assert await counts() == (3, 4, 3)
    # The storage side: every durable op went through a group commit of the LMDB file.
    assert await api.metric("yanzi_commit_batch_size_sum") >= 3  # the three new ops
    assert await api.metric("yanzi_commit_seconds_count") >= 1
    assert await api.metric("yanzi_commit_batch_size_count") >= 1
    assert await api.metric("yanzi_lmdb_size_bytes") > 0
    assert await api.metric("yanzi_ops_stored") == 3


async def test_history_pages_backwards(api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    a = await api.ws(alice)
    acks = [await a.message(conv, f"m{i}") for i in range(25)]

    pages: list[list[str]] = []
    before = None
    while True:
        page = await api.history(bob, conv, before=before, limit=10)
        pages.append([m["op_id"] for m in page["messages"]])
        if not page["more"]:
            break
        before = page["messages"][0]["op_id"]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [op_id for p in reversed(pages) for op_id in p] == [a["op_id"] for a in acks]

    status, body = await api.call(
        "GET", f"/v1/conversations/{conv}/messages", who=bob, params={"before": "nope"}
    )
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_conversation_list_last_message_unread_and_mark_read(api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    direct = await api.direct(alice, "bob")
    group = await api.group(alice, "g-list", ["bob"])
    acks = [await api.message(alice, direct, f"unread {i}") for i in range(3)]
    await api.message(alice, group, "older in the group?")  # newest overall
    await api.message(alice, direct, "latest")

    rows = {row["conv"]: row for row in await api.conversations(bob)}
    assert list(rows) == [direct, group]  # most recent activity first
    assert rows[direct]["last_message"]["body"] == body_of("latest")
    assert rows[direct]["unread"] == 4 and rows[group]["unread"] == 1
    assert rows[direct]["read_marker"] is None
    assert (await api.conversations(alice))[0]["unread"] == 0  # your own messages are read

    a = await api.ws(alice)
    moved = await api.ok(
        "POST", f"/v1/conversations/{direct}/read", who=bob, json_body={"op_id": acks[1]["op_id"]}
    )
    assert moved == {"moved": True}
    read = await a.expect(lambda f: f["type"] == "read")
    assert read == {"type": "read", "conv": direct, "user": "bob", "op_id": acks[1]["op_id"]}
    rows = {row["conv"]: row for row in await api.conversations(bob)}
    assert rows[direct]["unread"] == 2

    # Markers never move backwards.
    moved = await api.ok(
        "POST", f"/v1/conversations/{direct}/read", who=bob, json_body={"op_id": acks[0]["op_id"]}
    )
    assert moved == {"moved": False}

    # The WebSocket form of the same thing.
    b = await api.ws(bob)
    last = rows[direct]["last_message"]["op_id"]
    assert await b.request({"type": "read", "conv": direct, "op_id": last}) == {
        "type": "ok",
        "id": 1,
    }
    rows = {row["conv"]: row for row in await api.conversations(bob)}
    assert rows[direct]["unread"] == 0 and rows[group]["unread"] == 1


async def test_typing_and_presence_reach_the_other_member(api: Api) -> None:
    alice, bob, carol = await api.users("alice", "bob", "carol")
    conv = await api.direct(alice, "bob")
    b = await api.ws(bob)
    c = await api.ws(carol)  # shares no conversation with alice: hears nothing of her

    a = await api.ws(alice)
    assert await b.expect(lambda f: f["type"] == "presence") == {
        "type": "presence",
        "user": "alice",
        "online": True,
    }
    await a.send({"type": "typing", "conv": conv, "active": True})
    assert await b.expect(lambda f: f["type"] == "typing") == {
        "type": "typing",
        "conv": conv,
        "user": "alice",
        "active": True,
    }
    await a.close()
    offline = await b.expect(lambda f: f["type"] == "presence")
    assert offline == {"type": "presence", "user": "alice", "online": False}

    # Carol saw none of it; a ping proves her socket is alive and her backlog is empty.
    assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert c.backlog == []


async def test_slow_consumer_is_closed_and_catches_up_over_http(nodes: Nodes, http) -> None:
    node = nodes.start(
        {"YANZI_SEND_QUEUE": "4", "YANZI_RATE_PER_S": "10000", "YANZI_RATE_BURST": "10000"}
    )
    api = Api(http, node)
    alice, bob, carol = await api.users("alice", "bob", "carol")
    conv = await api.group(alice, "g-slow", ["bob", "carol"])
    observer = await api.ws(carol)
    _, bob_cursor, _ = await api.sync_all(bob)

    # Bob authenticates on a bare socket with a tiny receive buffer and then stops reading.
    slow = await RawWs.connect(node, rcvbuf=4096)
    await slow.send_json({"type": "auth", "token": bob.token})
    assert (await slow.read_json())["type"] == "ready"

    big = "x" * 30_000
    sent: list[str] = []
    a = await api.ws(alice)
    for i in range(400):
        text = f"{i}:{big}"
        assert (await a.message(conv, text))["type"] == "ack"
        sent.append(text)
        await observer.expect_op(conv, text)  # the observer keeps up the whole time
        if i % 10 == 9 and await api.metric("yanzi_slow_consumer_closes_total") >= 1:
            break
    else:
        pytest.fail("bob never became a slow consumer")

    # Others carry on: a fresh message still reaches the observer at once.
    await a.message(conv, "after the slow one")
    await observer.expect_op(conv, "after the slow one")
    sent.append("after the slow one")

    # When bob reads again he finds the close code after what was already in flight.
    code, frames = await slow.read_until_close()
    assert code == 4008
    assert len([f for f in frames if f["type"] == "op"]) < len(sent)
    slow.close()

    ops, _, _ = await api.sync_all(bob, bob_cursor, limit=50)
    assert [text_of(op) for op in ops] == sent


async def test_a_slow_consumer_that_never_reads_again_is_dropped_promptly(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    node = nodes.start(
        {"YANZI_SEND_QUEUE": "4", "YANZI_RATE_PER_S": "10000", "YANZI_RATE_BURST": "10000"}
    )
    api = Api(http, node)
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    slow = await RawWs.connect(node, rcvbuf=4096)  # reads the ready frame, then nothing, ever
    await slow.send_json({"type": "auth", "token": bob.token})
    assert (await slow.read_json())["type"] == "ready"
    a = await api.ws(alice)
    big = "x" * 30_000
    for i in range(400):
        assert (await a.message(conv, f"{i}:{big}"))["type"] == "ack"
        if i % 10 == 9 and await api.metric("yanzi_slow_consumer_closes_total") >= 1:
            break
    else:
        pytest.fail("bob never became a slow consumer")

    # Its close frame sits behind a full socket buffer; the node does not wait for it forever
    # (CLOSE_GRACE_S = 2 s): the session ends and its connection is dropped.
    async def gone() -> bool:
        return await api.metric("yanzi_connections") == 1

    await eventually(gone, timeout=6, interval=0.2)
    slow.close()


async def test_sigterm_closes_sessions_with_going_away(node: NodeProcess, api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    a, b = await api.ws(alice), await api.ws(bob)
    ack = await a.message(conv, "before shutdown")

    await asyncio.to_thread(node.stop)
    assert node.proc is not None and node.proc.returncode == 0
    for ws in (a, b):
        with pytest.raises(Closed) as closed:
            while True:
                await ws.recv()
        assert closed.value.code == 1001

    node.start()
    ops, _, _ = await api.sync_all(bob)
    assert [text_of(op) for op in ops if op["dot"] == ack["dot"]] == ["before shutdown"]


async def test_node_still_serves_after_many_sessions_come_and_go(api: Api) -> None:
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    for _ in range(20):
        ws = await api.ws(alice)
        await ws.close()
    b = await api.ws(bob)
    a = await api.ws(alice)
    await a.message(conv, "still here")
    await b.expect_op(conv, "still here")
    await eventually(lambda: api.metric("yanzi_connections"))
    assert await api.metric("yanzi_connections") == 2


async def test_an_idle_session_is_closed_with_4010(nodes: Nodes, http) -> None:
    # Idle after 1 s, pings every 0.2 s: a loaded machine may stall either side a few
    # hundred ms without the talking client coming near the limit.
    node = nodes.start({"YANZI_IDLE_TIMEOUT_S": "1", "YANZI_HEARTBEAT_S": "60"})
    api = Api(http, node)
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    quiet, chatty = await api.ws(alice), await api.ws(bob)
    assert quiet.ready["limits"]["idle_timeout_s"] == 1

    async def keep_talking() -> None:
        for _ in range(12):
            assert (await chatty.request({"type": "ping"}))["type"] == "pong"
            await asyncio.sleep(0.2)  # the point here is elapsed time: pings below the limit

    talking = asyncio.create_task(keep_talking())
    assert await quiet.closed(timeout=5) == 4010
    await talking
    assert (await chatty.message(conv, "still here"))["type"] == "ack"
