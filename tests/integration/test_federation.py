"""A mesh of real `yanzi up` processes over real nats-servers, seen through the public API.

Each test builds its mesh with the operator flow (init, invite, join), starts the nodes as
subprocesses attached to standalone nats-servers (or the servers of a routed cluster), and checks
what a user or an operator would see: live delivery across nodes, convergence after a partition,
durability across kill -9, authenticity against an outsider, exact catch-up for a roaming client,
and invite expiry and single use.
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nacl.signing import SigningKey

from crdt import (
    Content,
    ConvId,
    DeviceId,
    Dot,
    NodeId,
    Op,
    Timestamp,
    UserId,
    node_id_for,
    sign_envelope,
)
from federation.envelope import seal
from federation.meshfiles import MeshFiles
from federation.roster import genesis_record
from federation.subjects import Subjects
from tests.helpers import ROOT
from tests.integration.conftest import Api, Closed, Login, body_of, eventually
from tests.integration.fed_helpers import (
    Mesh,
    MeshNode,
    all_ops,
    conv_vv,
    full_history,
    login_when_replicated,
    members_up,
    metric,
    metric_reaches,
    now_ms,
    op_ids,
    send_many,
    status,
    wait_mesh_up,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    built = Mesh(tmp_path)
    try:
        yield built
    finally:
        await built.close()


async def _count(api: Api, who: Login, conv: str, want: int) -> bool:
    """True once the node holds exactly `want` messages of `conv` for `who`."""
    if await conv_vv(api, who, conv) is None:
        return False  # the node does not hold the conversation (yet)
    return len(await full_history(api, who, conv)) == want


async def _nats_down(http: aiohttp.ClientSession, node: MeshNode) -> bool:
    return (await status(http, node))["nats_connected"] is False


async def _direct(api: Api, who: Login, peer: str) -> str | None:
    """The direct conversation with `peer`, once `peer`'s account has reached this node."""
    code, body = await api.call("POST", "/v1/direct", who=who, json_body={"user": peer})
    return str(body["conv"]) if code == 200 else None


async def _authenticates(api: Api, who: Login) -> bool:
    code, _ = await api.call("GET", "/v1/me", who=who)
    return code == 200


def api_at(http: aiohttp.ClientSession, node: MeshNode) -> Api:
    return Api(http, node.proc)


async def test_cross_node_delivery(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", server)
    b = mesh.join("b", "cn-south", server)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    for node in (a, b):
        found = await status(http, node)
        assert found["nats_connected"] is True
        assert members_up(found) == {a.node_id: True, b.node_id: True}
        regions = {m["node"]: m["region"] for m in found["members"]}
        assert regions == {a.node_id: "cn-east", b.node_id: "cn-south"}

    at_a, at_b = api_at(http, a), api_at(http, b)
    alice = await at_a.user("alice")
    bob = await at_b.user("bob")
    bob_ws = await at_b.ws(bob)
    alice_ws = await at_a.ws(alice)

    # bob's account was made at B: A learns it by replication before alice can reach him.
    conv = await eventually(lambda: _direct(at_a, alice, "bob"), timeout=20)
    # The create reaches bob at B (B now hosts the conversation), so what follows goes live.
    created = await bob_ws.expect(lambda f: f["type"] == "op", timeout=20)
    assert created["op"]["content"]["kind"] == "create" and created["op"]["dot"][0] == a.node_id
    ack = await alice_ws.message(conv, "hello bob, from cn-east")
    assert ack["type"] == "ack", ack
    op = await bob_ws.expect_op(conv, "hello bob, from cn-east", timeout=20)
    assert op["dot"] == ack["dot"] and op["dot"][0] == a.node_id
    assert op["content"]["author"] == "alice"

    reply = await bob_ws.message(conv, "hi alice, from cn-south")
    assert reply["type"] == "ack", reply
    assert reply["dot"][0] == b.node_id
    back = await alice_ws.expect_op(conv, "hi alice, from cn-south", timeout=20)
    assert back["dot"] == reply["dot"] and back["content"]["author"] == "bob"

    # The operator's view: each node reports the other up, with the lag of its latest live op.
    for node, other in ((a, b), (b, a)):
        row = await eventually(functools.partial(_lag_reported, http, node, other), timeout=20)
        assert row["up"] is True and 0 <= row["lag_ms"] < 20_000, row
        shown = await asyncio.to_thread(yanzi, "mesh", "status", "--url", node.url)
        assert shown.returncode == 0, shown.stderr
        line = next(t for t in shown.stdout.splitlines() if t.startswith(other.node_id[:12]))
        assert " yes " in line and re.search(r" \d+(\.\d+)?ms ", line), shown.stdout

    # Both nodes show the same conversation.
    texts = ["hello bob, from cn-east", "hi alice, from cn-south"]
    for api, who in ((at_a, alice), (at_b, bob)):
        page = await api.history(who, conv)
        assert [m["body"] for m in page["messages"]] == [body_of(t) for t in texts]
    await alice_ws.close()
    await bob_ws.close()


async def _lag_reported(
    http: aiohttp.ClientSession, node: MeshNode, other: MeshNode
) -> dict[str, Any] | None:
    """`other`'s row in `node`'s mesh status once it reports a lag, else None."""
    rows = {m["node"]: m for m in (await status(http, node))["members"]}
    row: dict[str, Any] = rows[other.node_id]
    return row if row["lag_ms"] is not None else None


async def shared_group(
    mesh: Mesh, http: aiohttp.ClientSession, a: MeshNode, b: MeshNode, conv: str
) -> tuple[Api, Api, Login, Login, Login]:
    """alice (registered at A) founds group `conv` with bob (registered at B); alice also logs
    in at B. Returns (api at A, api at B, alice at A, alice at B, bob at B) once B holds the
    group."""
    at_a, at_b = api_at(http, a), api_at(http, b)
    alice = await at_a.user("alice")
    bob = await at_b.user("bob")

    async def founded() -> bool:
        code, _ = await at_a.call(
            "POST", "/v1/ops", who=alice,
            json_body={"cmid": "found", "conv": conv, "kind": "create",
                       "attrs": {"type": "group", "members": ["bob"]}},
        )  # fmt: skip
        return code == 200  # 404 until bob's account has reached A

    await eventually(founded, timeout=20)
    alice_b = await login_when_replicated(at_b, "alice", "d-b")
    await eventually(lambda: conv_vv(at_b, bob, conv), timeout=20)
    return at_a, at_b, alice, alice_b, bob


async def converged(
    at_a: Api, alice_a: Login, at_b: Api, alice_b: Login, want: int
) -> tuple[list[str], list[str]] | None:
    """The op ids of a full sync at both nodes once both hold `want` ops, else None."""
    ops_a, _ = await all_ops(at_a, alice_a)
    ops_b, _ = await all_ops(at_b, alice_b)
    if len(ops_a) != want or len(ops_b) != want:
        return None
    return op_ids(ops_a), op_ids(ops_b)


async def test_partition_and_heal(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    # no_advertise: B's client knows only s2, so stopping s2 cuts B off rather than failing it
    # over to s1.
    s1, s2 = await mesh.nats_cluster(2, advertise=False)
    a = mesh.init("a", "cn-east", s1)
    b = mesh.join("b", "cn-south", s2)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    conv = "g_partition"
    at_a, at_b, alice, alice_b, bob = await shared_group(mesh, http, a, b, conv)
    assert (await send_many(at_a, alice, conv, ["before"], prefix="pre"))[0]["dot"][0] == a.node_id
    await eventually(lambda: _count(at_b, bob, conv, 1), timeout=20)

    # Partition: kill -9 the nats-server B uses. A keeps its server (and loses the route).
    await s2.kill()
    await eventually(lambda: _nats_down(http, b), timeout=20)
    n = 200
    acks_a, acks_b = await asyncio.gather(
        send_many(at_a, alice, conv, [f"east {i}" for i in range(n)], prefix="east"),
        send_many(at_b, bob, conv, [f"south {i}" for i in range(n)], prefix="south"),
    )
    assert {ack["dot"][0] for ack in acks_a} == {a.node_id}
    assert {ack["dot"][0] for ack in acks_b} == {b.node_id}
    # Each side sees its own writes only (and "before").
    assert len(await full_history(at_a, alice, conv)) == n + 1
    assert len(await full_history(at_b, bob, conv)) == n + 1

    # Heal: the server comes back on the same port; routes and clients reconnect.
    await s2.start()
    await wait_mesh_up(http, [a, b], timeout=30)
    total = 1 + 1 + n + n  # create, "before", both sides' writes
    ids = await eventually(lambda: converged(at_a, alice, at_b, alice_b, total), timeout=60)
    ids_a, ids_b = ids
    assert ids_a == ids_b, "the same ops in the same total order at both nodes"
    assert len(set(ids_a)) == total
    acked = {ack["op_id"] for ack in acks_a + acks_b}
    assert acked <= set(ids_a)
    history_a = await full_history(at_a, alice, conv)
    history_b = await full_history(at_b, alice_b, conv)
    assert history_a == history_b and len(history_a) == 1 + 2 * n
    assert await conv_vv(at_a, alice, conv) == await conv_vv(at_b, alice_b, conv)
    # A's partition-time writes were published while B was cut off: only anti-entropy could
    # have brought them.
    assert await metric(http, b, "yanzi_fed_ae_ops_total") >= n


async def test_kill_9_a_node_under_load(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", server)
    b = mesh.join("b", "cn-south", server)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    conv = "g_crash"
    at_a, at_b, alice, alice_b, bob = await shared_group(mesh, http, a, b, conv)
    bob_ws = await at_b.ws(bob)

    acked_a: list[str] = []  # op ids A acked to alice
    acked_b: list[str] = []  # op ids B acked to bob before it died
    b_dead = asyncio.Event()

    async def alice_writes(total: int) -> None:
        for i in range(total):
            ack = await at_a.message(alice, conv, f"a {i}", cmid=f"a-{i}")
            acked_a.append(ack["op_id"])

    async def bob_writes() -> None:
        """Until B dies under him: what B acked counts; an unanswered send does not."""
        i = 0
        while not b_dead.is_set():
            try:
                ack = await at_b.message(bob, conv, f"b {i}", cmid=f"b-{i}")
            except (aiohttp.ClientError, AssertionError):
                return  # the node went away mid-request
            acked_b.append(ack["op_id"])
            i += 1

    writers = asyncio.gather(alice_writes(400), bob_writes())
    # B is receiving A's stream live (bob's socket at B sees alice's ops) and writing its own.
    await bob_ws.expect_op(conv, "a 50", timeout=30)
    await eventually(lambda: len(acked_b) >= 50, timeout=30)
    b.proc.kill()  # kill -9: no flush, no goodbye
    b_dead.set()
    with pytest.raises(Closed):  # bob's socket dies with its node
        await bob_ws.expect_op(conv, "never", timeout=20)
    killed_at = len(acked_a)
    await writers  # A keeps writing while B is down
    print(f"B killed after A acked {killed_at} and B acked {len(acked_b)}")
    assert len(acked_a) == 400 and killed_at < 400, "A kept writing after B died"
    seen_by_b_before = list(acked_b)

    await asyncio.to_thread(b.proc.start)  # same data dir, same port
    await wait_mesh_up(http, [a, b], timeout=30)
    acked = 1 + len(acked_a) + len(acked_b)  # the create, and what each node acked

    async def b_has_everything() -> list[str] | None:
        ops, _ = await all_ops(at_b, bob)
        ids = op_ids(ops)
        return ids if set(acked_a) | set(seen_by_b_before) <= set(ids) else None

    ids_b = await eventually(b_has_everything, timeout=60)
    assert len(ids_b) == len(set(ids_b))
    # And A ends with exactly the same history (B's acked writes reached it too).
    ids = await eventually(lambda: converged(at_a, alice, at_b, alice_b, len(ids_b)), timeout=60)
    assert ids[0] == ids[1]
    # bob sends one at a time: at most his one unanswered send was committed before the kill.
    assert acked <= len(ids_b) <= acked + 1


async def test_outsider_envelopes_change_nothing(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    nats_server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", nats_server)
    b = mesh.join("b", "cn-south", nats_server)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    at_a, at_b = api_at(http, a), api_at(http, b)
    alice = await at_a.user("alice")
    bob = await at_b.user("bob")
    code_conv = await eventually(lambda: _direct(at_a, alice, "bob"), timeout=20)
    conv = code_conv
    await at_a.message(alice, conv, "real one")
    await eventually(lambda: _count(at_b, bob, conv, 1), timeout=20)

    async def snapshot() -> list[object]:
        shots: list[object] = []
        for api, who, node in ((at_a, alice, a), (at_b, bob, b)):
            ops, cursor = await all_ops(api, who)
            found = await status(http, node)
            shots += [
                op_ids(ops), cursor, await full_history(api, who, conv),
                await api.conversations(who), members_up(found), found["hosted_conversations"],
            ]  # fmt: skip
        return shots

    before = await snapshot()
    dropped = {
        n.name: await metric(http, n, "yanzi_fed_dropped_total", reason="not_in_roster")
        for n in (a, b)
    }
    forged_before = await metric(http, a, "yanzi_fed_dropped_total", reason="forged")
    mesh_id = (await status(http, a))["mesh"]

    # The outsider: a fresh node key that no roster holds, speaking the mesh's protocol right.
    outsider = SigningKey.generate()
    outsider_id = node_id_for(outsider.verify_key)
    subjects = Subjects(mesh_id)
    now = now_ms()

    def forged_op(origin: str, seq: int, text: str) -> dict[str, object]:
        content = Content(conv=ConvId(conv), kind="message", author=UserId("alice"),
                          device=DeviceId("d1"), body=text.encode())  # fmt: skip
        op = Op(content=content, hlc=Timestamp(now, 0), dot=Dot(NodeId(origin), seq))
        return sign_envelope(op, outsider).to_json()

    mesh_a_top = (await conv_vv(at_a, alice, conv))["c"][a.node_id]  # type: ignore[index]
    envelopes = [
        # its own op, validly signed by itself: a live batch from a non-member
        (subjects.ops(conv), seal("ops", {"conv": conv, "ops": [forged_op(outsider_id, 1, "x")]},
                                  outsider)),
        # an op passed off as A's next one (relayed form: nsig by the wrong key)
        (subjects.ops(conv), seal("ops", {"conv": conv, "ops": [
            forged_op(a.node_id, mesh_a_top + 1, "y")]}, outsider)),
        # "alice and bob are in a new conversation": would make nodes host and pull it
        (subjects.interest, seal("interest", {"conv": "g_evil", "users": ["alice", "bob"]},
                                 outsider)),
        # anti-entropy request addressed to A: asks for its history
        (subjects.node(a.node_id), seal("ae_req", {"conv": conv, "vv": {"c": {}, "x": {}},
                                                   "max_bytes": 100_000}, outsider)),
        # a user-account record page
        (subjects.accounts, seal("accounts", {"records": []}, outsider)),
        # a self-made "operator enrolment" of another mesh's operator
        (subjects.roster, seal("roster", {"records": [genesis_record(
            SigningKey.generate(), outsider, region="evil", urls=[], ts=now)]}, outsider)),
        # heartbeats: heard, but a non-member never counts as a peer
        (subjects.hello, seal("hello", {"region": "evil", "urls": [], "ts": now}, outsider)),
    ]  # fmt: skip
    tampered = bytearray(seal("ops", {"conv": conv, "ops": []}, outsider))
    tampered[-2] ^= 1
    nc = await nats.connect(nats_server.url)
    try:
        for subject, data in envelopes:
            await nc.publish(subject, data, reply=nc.new_inbox())
        await nc.publish(subjects.ops(conv), bytes(tampered))
        await nc.flush()

        def audited(node: MeshNode, kinds: set[str]) -> bool:
            seen = {
                e.get("kind") for e in node.audit_entries()
                if e.get("reason") == "not_in_roster" and e.get("sender") == outsider_id
            }  # fmt: skip
            return kinds <= seen

        await eventually(lambda: audited(a, {"ops", "interest", "ae_req", "accounts"}), timeout=20)
        await eventually(lambda: audited(b, {"ops", "interest", "accounts"}), timeout=20)
        for node, floor in ((a, 5), (b, 4)):  # two ops batches, interest, accounts (+ ae_req at A)
            now_dropped = await metric(
                http, node, "yanzi_fed_dropped_total", reason="not_in_roster"
            )
            assert now_dropped >= dropped[node.name] + floor
        assert await metric(http, a, "yanzi_fed_dropped_total", reason="forged") > forged_before
        assert await metric(http, a, "yanzi_fed_dropped_total", reason="bad_roster_record") >= 1
        # A few more heartbeats go by: still nothing changed anywhere.
        hellos = await metric(http, a, "yanzi_fed_envelopes_in_total", kind="hello")
        await eventually(
            lambda: metric_reaches(
                http, a, hellos + 5, "yanzi_fed_envelopes_in_total", kind="hello"
            ),
            timeout=10,
        )
        assert await snapshot() == before
        assert outsider_id not in members_up(await status(http, a))
    finally:
        await nc.close()

    # The mesh carries on: a real message still crosses.
    await at_a.message(alice, conv, "still here")
    await eventually(lambda: _count(at_b, bob, conv, 2), timeout=20)


async def test_roaming_client_gets_exactly_the_gap(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    s1, s2 = await mesh.nats_cluster(2)
    a = mesh.init("a", "cn-east", s1)
    b = mesh.join("b", "cn-south", s2)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    at_a, at_b = api_at(http, a), api_at(http, b)
    alice, carol = await at_a.users("alice", "carol")
    bob = await at_b.user("bob")
    # g_roam lives only at A (both members are A's users): B has never hosted it.
    group = await at_a.group(carol, "g_roam", ["alice"], title="roam")
    # The direct chat with bob is hosted at both.
    direct = await eventually(lambda: _direct(at_a, alice, "bob"), timeout=20)
    await send_many(at_a, carol, group, [f"c {i}" for i in range(30)], prefix="c1")
    await eventually(lambda: conv_vv(at_b, bob, direct), timeout=20)
    await send_many(at_b, bob, direct, [f"b {i}" for i in range(10)], prefix="b1")
    await eventually(lambda: _count(at_a, alice, direct, 10), timeout=20)

    # alice catches up at A and keeps her cursor.
    seen, cursor = await all_ops(at_a, alice)
    seen_ids = set(op_ids(seen))
    assert len(seen_ids) == 1 + 30 + 1 + 10  # group create + 30, direct create + 10
    assert (await status(http, b))["hosted_conversations"] == 1  # only the direct chat

    # She moves to B (same token: tokens replicate) while both sides keep writing.
    async def move() -> aiohttp.ClientWebSocketResponse:
        await eventually(lambda: _authenticates(at_b, alice), timeout=20)
        ws = await at_b.ws(alice)  # her first session at B: B adopts her conversations
        return ws.ws

    _, _, ws = await asyncio.gather(
        send_many(at_a, carol, group, [f"moving {i}" for i in range(20)], prefix="c2"),
        send_many(at_b, bob, direct, [f"b moving {i}" for i in range(5)], prefix="b2"),
        move(),
    )
    # Everything there is, as A holds it once bob's last writes have arrived there.
    await eventually(lambda: _count(at_a, alice, direct, 15), timeout=20)
    everything, _ = await all_ops(at_a, alice)
    gap = set(op_ids(everything)) - seen_ids
    assert len(gap) == 20 + 5

    # At B, with the cursor from A: exactly the gap, no duplicates, nothing missing.
    got: list[str] = []

    async def caught_up() -> bool:
        nonlocal cursor
        ops, cursor = await all_ops(at_b, alice, cursor)
        got.extend(op_ids(ops))
        return set(got) >= gap

    await eventually(caught_up, timeout=30, interval=0.1)
    assert len(got) == len(set(got)), "no op served twice"
    assert set(got) == gap, "nothing from before the move, nothing missing"
    assert (await all_ops(at_b, alice, cursor))[0] == []  # and the cursor is now complete
    await ws.close()


def yanzi(*args: str) -> subprocess.CompletedProcess[str]:
    """The `yanzi` CLI as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def refused_since(node: MeshNode, sender: MeshNode, since_ms: int) -> bool:
    """`node` audited an envelope of `sender` refused as outside the roster since `since_ms`."""
    return any(
        e["ts_ms"] >= since_ms and e.get("reason") == "not_in_roster"
        and e.get("sender") == sender.node_id
        for e in node.audit_entries()
    )  # fmt: skip


async def test_invites_expire_and_are_single_use(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    nats_server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", nats_server)
    await mesh.start(a)

    # Expired: issued an hour ago, valid for a minute. `yanzi join` refuses it.
    stale = mesh.invite("cn-west", nats_server, expires_s=60, issued_ms=now_ms() - 3_600_000)
    late_dir = mesh.root / "late"
    refused = yanzi("join", stale, "--data-dir", str(late_dir))
    assert refused.returncode != 0, refused
    assert "expired" in refused.stderr.lower(), refused.stderr
    assert not (late_dir / "mesh.json").exists(), "a refused join leaves no mesh behind"

    # A valid one, through the CLI: `mesh invite` on the operator's node, `join` on the new one.
    issued = yanzi("mesh", "invite", "--data-dir", str(a.data_dir), "--region", "cn-west",
                   "--expires", "10m", "--nats", nats_server.url)  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    first_dir, second_dir = mesh.root / "c", mesh.root / "d"
    # Two nodes enrol with the same invite; `join` cannot know (it is offline), the roster can.
    for data_dir in (first_dir, second_dir):
        joined = yanzi("join", token, "--data-dir", str(data_dir))
        assert joined.returncode == 0, joined.stderr
    # Single use: of the enrolments with one invite the smallest (ts, node) holds it.
    records = {d: MeshFiles(d).pending()[0] for d in (first_dir, second_dir)}
    winner_dir = min(records, key=lambda d: (records[d]["ts"], records[d]["node"]))
    loser_dir = second_dir if winner_dir == first_dir else first_dir
    winner = mesh.adopt(winner_dir, "cn-west", nats_server)
    loser = mesh.adopt(loser_dir, "cn-west", nats_server)

    # The loser starts first and, with nobody to compete, A counts it as a member...
    await mesh.start(loser)
    await wait_mesh_up(http, [a, loser])
    # ...until the rightful holder of the invite shows up: then A lists it and not the other.
    await mesh.start(winner)

    async def settled() -> bool:
        at_a = members_up(await status(http, a))
        at_loser = members_up(await status(http, loser))
        return (
            set(at_a) == {a.node_id, winner.node_id}
            and set(at_loser) == set(at_a)  # the loser's own roster agrees
            and all(at_a.values())
        )

    await eventually(settled, timeout=30, interval=0.1)
    await wait_mesh_up(http, [a, winner])
    # The loser is refused from then on: its requests to A are dropped and audited.
    settled_ms = now_ms()

    await eventually(lambda: refused_since(a, loser, settled_ms), timeout=20)
    assert loser.node_id not in members_up(await status(http, a))


async def test_revoke_removes_a_running_node(mesh: Mesh, http: aiohttp.ClientSession) -> None:
    """`yanzi mesh revoke NODE --url` at the operator's node: the roster drops it at once, its
    envelopes are refused and audited, /v1/edges stops listing it, its writes stop arriving."""
    server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", server)
    b = mesh.join("b", "cn-south", server)
    c = mesh.join("c", "cn-west", server)
    await mesh.start(a, b, c)
    await wait_mesh_up(http, [a, b, c])

    revoked = yanzi("mesh", "revoke", c.node_id, "--data-dir", str(a.data_dir), "--url", a.url)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {c.node_id}" in revoked.stdout
    revoked_ms = now_ms()

    async def gone_everywhere() -> bool:
        for node in (a, b):
            found = await status(http, node)
            if c.node_id in members_up(found) or c.node_id not in found["revoked"]:
                return False
        return True

    await eventually(gone_everywhere, timeout=30, interval=0.1)  # B learnt it from A
    async with http.get(a.url + "/v1/edges") as resp:
        edges = await resp.json()
    assert c.node_id not in {e["node"] for e in edges["edges"]}

    # C still says hello every few seconds: refused and audited.
    await eventually(lambda: refused_since(a, c, revoked_ms), timeout=20)
    shown = await asyncio.to_thread(yanzi, "mesh", "status", "--url", a.url)
    assert shown.returncode == 0 and f"revoked: {c.node_id}" in shown.stdout, shown
