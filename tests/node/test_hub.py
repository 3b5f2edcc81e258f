"""The hub against a real LMDB store, with fakes of its two ports (device directory, fan-out)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from crdt import (
    Content,
    ConvId,
    Cursor,
    DeviceId,
    Dot,
    Op,
    Timestamp,
    UserId,
    node_id_for,
    sign_content,
    sign_envelope,
    verify_envelope,
)
from node.errors import ClientError
from node.hub import DBS, Hub, Identity, direct_conv_id
from node.protocol import Send
from node.store import Delete, Put, Store, StoreError

T0 = 1_800_000_000_000
NODE_KEY = SigningKey(b"\x07" * 32)


class Directory:
    """Fake DeviceDirectory: a few users, each device with a signing key."""

    def __init__(self, *users: str) -> None:
        self.keys: dict[tuple[str, str], SigningKey] = {}
        self.users = set(users)

    def add(self, user: str, device: str = "d1") -> SigningKey:
        self.users.add(user)
        key = self.keys[(user, device)] = SigningKey.generate()
        return key

    def device_key(self, user: str, device: str) -> VerifyKey | None:
        key = self.keys.get((user, device))
        return None if key is None else key.verify_key

    def user_exists(self, user: str) -> bool:
        return user in self.users


class Recorder:
    """Fake Fanout: remembers every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[frozenset[str], dict[str, Any]]] = []

    def deliver(self, users: Iterable[str], frame: str) -> None:
        self.deliveries.append((frozenset(users), json.loads(frame)))

    def of_type(self, kind: str) -> list[tuple[frozenset[str], dict[str, Any]]]:
        return [d for d in self.deliveries if d[1]["type"] == kind]


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class World:
    """A hub plus its fakes; `reopen()` builds a fresh hub over the same LMDB folder."""

    def __init__(self, path: Path, **hub_kw: Any) -> None:
        self.path = path
        self.directory = Directory("alice", "bob", "carol", "dave")
        for user in ("alice", "bob", "carol", "dave"):
            self.directory.add(user)
        self.fanout = Recorder()
        self.clock = Clock()
        self.hub_kw = hub_kw
        self._cmids = 0

    async def open(self) -> Hub:
        self.store = Store(self.path, dbs=DBS, sync=False)
        await self.store.start()
        opts: dict[str, Any] = {
            "recall_window_s": 120,
            "require_device_signatures": False,
            "max_clock_drift_ms": 60_000,
            "max_group_members": 50,
            **self.hub_kw,
        }
        self.hub = Hub(
            store=self.store,
            node_key=NODE_KEY,
            devices=self.directory,
            fanout=self.fanout,
            clock_ms=self.clock,
            **opts,
        )
        self.hub.load()
        return self.hub

    async def reopen(self) -> Hub:
        await self.store.close()
        return await self.open()

    async def send(self, user: str, conv: str, kind: str = "message", **fields: Any) -> Op:
        self._cmids += 1
        fields.setdefault("cmid", f"c{self._cmids}")
        device = fields.pop("device", "d1")
        ack = await self.hub.submit(
            Identity(user=user, device=device),
            Send(id=None, conv=conv, kind=kind, **fields),
        )
        return ack.op

    async def message(self, user: str, conv: str, text: str, **fields: Any) -> Op:
        return await self.send(user, conv, body=text.encode(), **fields)

    async def group(self, owner: str, conv: str, *members: str) -> Op:
        return await self.send(
            owner, conv, "create", attrs={"type": "group", "members": list(members)}
        )

    async def refused(self, user: str, conv: str, kind: str = "message", **fields: Any) -> str:
        with pytest.raises(ClientError) as info:
            await self.send(user, conv, kind, **fields)
        return info.value.code


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path / "lmdb")
    await w.open()
    yield w
    await w.store.close()


def bodies(hub: Hub, user: str, conv: str) -> list[bytes]:
    return [m.body for m in hub.member_log(user, conv).state]


# -- accepting ops -----------------------------------------------------------------------------


async def test_create_and_message_are_stamped_stored_and_fanned_out(world: World) -> None:
    create = await world.group("alice", "g1", "bob")
    op = await world.message("bob", "g1", "hello")
    assert op.dot.origin == world.hub.node_id and [create.dot.seq, op.dot.seq] == [1, 2]
    assert op.hlc > create.hlc and op.hlc.l == T0
    assert op.author == "bob" and op.content.device == "d1"
    verify_envelope(op, NODE_KEY.verify_key)  # the node signed it
    assert world.store.count("ops") == 2
    users, frame = world.fanout.of_type("op")[-1]
    assert users == {"alice", "bob"} and frame["op"] == op.to_json()
    assert world.hub.conversations_of("bob") == ["g1"] and world.hub.conversations_of("dave") == []
    assert world.hub.contacts("alice") == {"alice", "bob"}


async def test_same_cmid_has_exactly_one_effect(world: World) -> None:
    await world.group("alice", "g1", "bob")
    first = await world.message("alice", "g1", "once", cmid="m1")
    again = await world.message("alice", "g1", "different body", cmid="m1")
    assert again == first
    other_device = await world.message("alice", "g1", "once", cmid="m1", device="d2")
    assert other_device != first  # cmids are per device
    assert bodies(world.hub, "bob", "g1") == [b"once", b"once"]
    deliveries = len(world.fanout.of_type("op"))
    # Concurrent retries while the first is still being committed: one op, one delivery.
    acks = await asyncio.gather(
        *(world.message("alice", "g1", "racing", cmid="m2") for _ in range(10))
    )
    assert len({op.op_id for op in acks}) == 1
    assert len(world.fanout.of_type("op")) == deliveries + 1
    # And after a restart the store remembers.
    await world.reopen()
    assert await world.message("alice", "g1", "x", cmid="m2") == acks[0]


async def test_a_cmid_reused_in_another_conversation_is_a_new_send(world: World) -> None:
    await world.group("alice", "g1", "bob")
    await world.group("alice", "g2", "carol")
    in_g1 = await world.message("alice", "g1", "to g1", cmid="m1")
    in_g2 = await world.message("alice", "g2", "to g2", cmid="m1")
    assert in_g2.conv == "g2" and in_g2 != in_g1
    assert bodies(world.hub, "carol", "g2") == [b"to g2"]
    # Each stays idempotent in its own conversation, also after a restart.
    await world.reopen()
    assert await world.message("alice", "g1", "x", cmid="m1") == in_g1
    assert await world.message("alice", "g2", "x", cmid="m1") == in_g2
    # Long cmids (64 CJK chars are 192 UTF-8 bytes) with long ids still fit LMDB's key limit.
    long_conv, long_cmid = "g-" + "x" * 126, "消" * 64
    await world.group("alice", long_conv, "bob")
    first = await world.message("alice", long_conv, "long", cmid=long_cmid, device="d" * 128)
    again = await world.message("alice", long_conv, "long", cmid=long_cmid, device="d" * 128)
    assert again == first


async def test_new_cmids_need_no_store_read_and_retries_stay_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path / "lmdb", recent_send_ids=2)  # a tiny cache: evictions happen
    reads: list[str] = []

    def count_reads() -> None:
        store_get = w.store.get

        def counting_get(db: str, key: bytes) -> bytes | None:
            reads.append(db)
            return store_get(db, key)

        monkeypatch.setattr(w.store, "get", counting_get)

    await w.open()
    try:
        count_reads()
        await w.group("alice", "g1", "bob")
        first = [await w.message("alice", "g1", f"m{i}", cmid=f"x{i}") for i in range(4)]
        assert "send_ids" not in reads  # new ids: known new without asking LMDB
        # The last two are cached; older ones were evicted and are read back: one effect each.
        assert [await w.message("alice", "g1", "again", cmid=f"x{i}") for i in range(4)] == first
        assert reads.count("send_ids") == 2
        # After a restart nothing is cached, but every committed id is still known.
        await w.reopen()
        count_reads()
        assert [await w.message("alice", "g1", "again", cmid=f"x{i}") for i in range(4)] == first
        await w.message("alice", "g1", "new after restart", cmid="x-new")
        assert bodies(w.hub, "bob", "g1") == [b"m0", b"m1", b"m2", b"m3", b"new after restart"]
    finally:
        await w.store.close()


async def test_cmids_of_the_old_layout_are_migrated_at_load(world: World) -> None:
    await world.group("alice", "g1", "bob")
    op = await world.message("alice", "g1", "before the upgrade", cmid="old-1")
    # Rewrite its record the way older nodes keyed it: (user, device, cmid), no conversation.
    [(key, raw)] = world.store.scan("send_ids", prefix=b"alice\x00d1\x00g1\x00old-1")
    world.store.commit_sync([Delete("send_ids", key), Put("cmids", b"alice\x00d1\x00old-1", raw)])
    await world.reopen()
    assert world.store.count("cmids") == 0
    assert await world.message("alice", "g1", "retried after it", cmid="old-1") == op
    assert bodies(world.hub, "bob", "g1") == [b"before the upgrade"]


async def test_edit_delete_react_unreact(world: World) -> None:
    await world.group("alice", "g1", "bob")
    msg = await world.message("bob", "g1", "tpyo")
    await world.send("bob", "g1", "edit", target=msg.op_id, body=b"typo")
    react = await world.send("alice", "g1", "react", target=msg.op_id, attrs={"key": "+1"})
    await world.send("bob", "g1", "react", target=msg.op_id, attrs={"key": "+1"})
    state = world.hub.member_log("alice", "g1").state
    assert state.message(msg.op_id).body == b"typo"  # type: ignore[union-attr]
    assert state.message(msg.op_id).reaction_summary() == {"+1": ["alice", "bob"]}  # type: ignore[union-attr]
    await world.send("alice", "g1", "unreact", target=msg.op_id, attrs={"removes": [react.op_id]})
    assert state.message(msg.op_id).reaction_summary() == {"+1": ["bob"]}  # type: ignore[union-attr]
    await world.send("bob", "g1", "delete", target=msg.op_id)
    assert state.message(msg.op_id).deleted  # type: ignore[union-attr]
    # A deleted message is gone for everyone.
    assert await world.refused("bob", "g1", "edit", target=msg.op_id, body=b"x") == "not_found"
    code = await world.refused("alice", "g1", "react", target=msg.op_id, attrs={"key": "x"})
    assert code == "not_found"


async def test_refusals(world: World) -> None:
    await world.group("alice", "g1", "bob")
    msg = await world.message("alice", "g1", "mine")
    assert await world.refused("carol", "g1") == "not_member"
    assert await world.refused("alice", "nope") == "not_found"
    assert await world.refused("bob", "g1", "edit", target=msg.op_id, body=b"x") == "forbidden"
    assert await world.refused("bob", "g1", "delete", target=msg.op_id) == "forbidden"
    assert await world.refused("alice", "g1", "edit", target="missing") == "not_found"
    assert await world.refused("alice", "g1", "react", target=msg.op_id) == "bad_frame"  # no key
    # an unreact naming none of your reactions is malformed
    assert await world.refused("alice", "g1", "unreact", target=msg.op_id) == "bad_frame"
    assert await world.refused("bob", "g1", "member_add", target="carol") == "forbidden"
    assert await world.refused("alice", "g1", "member_add", target="zed") == "not_found"
    assert await world.refused("alice", "g1", "member_add", target="bob") == "conflict"
    assert await world.refused("bob", "g1", "settings", attrs={"title": "x"}) == "forbidden"
    code = await world.refused("alice", "g1", "create", attrs={"type": "group", "members": []})
    assert code == "conflict"
    code = await world.refused("alice", "g2", "create", attrs={"type": "group", "members": ["zed"]})
    assert code == "not_found"
    assert await world.refused("alice", "g3", "create", attrs={"type": "chat"}) == "bad_frame"
    code = await world.refused("alice", "g4", "create", attrs={"type": "group", "members": "bob"})
    assert code == "bad_frame"
    assert await world.refused("alice", "g1", body=b"x" * 70_000) == "bad_frame"
    assert world.store.count("ops") == 2  # nothing refused was stored
    assert "g2" not in world.hub.logs and "g4" not in world.hub.logs


async def test_direct_conversations_have_a_derived_id(world: World) -> None:
    conv = direct_conv_id("alice", "bob")
    assert conv == direct_conv_id("bob", "alice") != direct_conv_id("alice", "carol")
    code = await world.refused(
        "alice", "d_wrong", "create", attrs={"type": "direct", "members": ["bob"]}
    )
    assert code == "bad_frame"
    await world.send("alice", conv, "create", attrs={"type": "direct", "members": ["bob"]})
    assert world.hub.members(ConvId(conv)) == {"alice", "bob"}
    assert await world.refused("alice", conv, "member_add", target="carol") == "forbidden"


async def test_membership_changes_move_fanout_and_access(world: World) -> None:
    await world.group("alice", "g1", "bob")
    await world.send("alice", "g1", "member_add", target="carol")
    users, _ = world.fanout.of_type("op")[-1]
    assert users == {"alice", "bob", "carol"}
    await world.message("carol", "g1", "hi, I am new")
    await world.send("alice", "g1", "member_remove", target="carol")
    users, frame = world.fanout.of_type("op")[-1]
    assert "carol" in users and frame["op"]["content"]["kind"] == "member_remove"
    assert await world.refused("carol", "g1") == "not_member"
    assert world.hub.conversations_of("carol") == []
    await world.send("bob", "g1", "member_remove", target="bob")  # leaving is always allowed
    assert world.hub.members(ConvId("g1")) == {"alice"}

    # Roles: only owners change them; an admin may then add members.
    await world.send("alice", "g1", "member_add", target="dave")
    code = await world.refused("dave", "g1", "member_add", target="bob")
    assert code == "forbidden"
    await world.send("alice", "g1", "member_role", target="dave", attrs={"role": "admin"})
    assert world.hub.member_log("alice", "g1").state.role("dave") == "admin"
    code = await world.refused(
        "dave", "g1", "member_role", target="alice", attrs={"role": "member"}
    )
    assert code == "forbidden"
    await world.send("dave", "g1", "member_add", target="bob")
    assert world.hub.members(ConvId("g1")) == {"alice", "bob", "dave"}


async def test_group_size_is_limited(tmp_path: Path) -> None:
    w = World(tmp_path / "lmdb", max_group_members=3)
    await w.open()
    try:
        code = await w.refused(
            "alice", "big", "create", attrs={"type": "group", "members": ["bob", "carol", "dave"]}
        )
        assert code == "forbidden"
        await w.group("alice", "g", "bob", "carol")
        assert await w.refused("alice", "g", "member_add", target="dave") == "forbidden"
    finally:
        await w.store.close()


async def test_recall_window_with_an_injected_clock(world: World) -> None:
    conv = direct_conv_id("alice", "bob")
    await world.send("alice", conv, "create", attrs={"type": "direct", "members": ["bob"]})
    early = await world.message("alice", conv, "oops")
    late = await world.message("alice", conv, "too late")
    world.clock.now += 119_000
    await world.send("alice", conv, "delete", target=early.op_id)  # within 120 s
    world.clock.now += 2_000
    assert await world.refused("alice", conv, "delete", target=late.op_id) == "recall_window"
    # Group admins and owners may always delete.
    await world.group("alice", "g1", "bob")
    old = await world.message("bob", "g1", "ancient")
    world.clock.now += 3_600_000
    assert await world.refused("bob", "g1", "delete", target=old.op_id) == "recall_window"
    await world.send("alice", "g1", "delete", target=old.op_id)


async def test_device_signatures(tmp_path: Path) -> None:
    w = World(tmp_path / "lmdb", require_device_signatures=True)
    await w.open()
    try:
        assert await w.refused("alice", "g", "create", attrs={"type": "group"}) == "bad_signature"

        def signed(conv: str, kind: str, attrs: dict[str, Any], body: bytes = b"") -> bytes:
            content = Content(
                conv=ConvId(conv), kind=kind,  # type: ignore[arg-type]
                author=UserId("alice"), device=DeviceId("d1"), attrs=attrs, body=body,
            )  # fmt: skip
            return sign_content(content, w.directory.keys[("alice", "d1")])

        attrs: dict[str, Any] = {"type": "group", "members": []}
        await w.send("alice", "g", "create", attrs=attrs, dsig=signed("g", "create", attrs))
        dsig = signed("g", "message", {}, b"signed")
        op = await w.send("alice", "g", body=b"signed", dsig=dsig)
        assert op.dsig == dsig
        assert await w.refused("alice", "g", body=b"tampered", dsig=dsig) == "bad_signature"
        code = await w.refused("alice", "g", body=b"signed", dsig=dsig, device="unknown")
        assert code == "bad_signature"
    finally:
        await w.store.close()


async def test_a_failed_commit_is_unavailable_and_leaves_no_trace(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.group("alice", "g1", "bob")
    deliveries = len(world.fanout.deliveries)

    async def disk_full(writes: Any) -> None:
        raise StoreError("write failed: MDB_MAP_FULL")

    monkeypatch.setattr(world.store, "commit", disk_full)
    assert await world.refused("alice", "g1", cmid="lost") == "unavailable"
    assert not world.hub._inflight  # no waiter left behind
    assert len(world.hub.logs[ConvId("g1")]) == 1 and len(world.fanout.deliveries) == deliveries
    monkeypatch.undo()
    op = await world.message("alice", "g1", "retried", cmid="lost")  # the retry goes through
    assert bodies(world.hub, "bob", "g1") == [b"retried"]
    assert op.dot.seq == 2  # the failed attempt left no hole in the dots


async def test_a_failed_marker_commit_is_unavailable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.group("alice", "g1", "bob")
    msg = await world.message("alice", "g1", "read me")

    async def disk_full(writes: Any) -> None:
        raise StoreError("write failed: MDB_MAP_FULL")

    monkeypatch.setattr(world.store, "commit", disk_full)
    with pytest.raises(ClientError) as info:
        await world.hub.mark_read("bob", "g1", msg.op_id)
    assert info.value.code == "unavailable"
    assert not world.fanout.of_type("read")


# -- catch-up ----------------------------------------------------------------------------------


def drain(hub: Hub, user: str, cursor: Cursor, limit: int) -> tuple[list[Op], Cursor, int]:
    ops: list[Op] = []
    pages = 0
    while True:
        page, cursor, more = hub.sync(user, cursor, limit)
        pages += 1
        assert pages < 1000, "sync keeps saying more=true"
        ops += page
        if not more:
            return ops, cursor, pages
        assert page


@pytest.mark.parametrize("limit", [1, 3, 7, 500])
async def test_sync_pages_return_every_op_once_and_the_cursor_advances(
    world: World, limit: int
) -> None:
    await world.group("alice", "g1", "bob")
    await world.group("bob", "g2", "alice")
    await world.group("carol", "g3")  # not bob's
    for i in range(10):
        await world.message("alice", "g1", f"a{i}")
        await world.message("bob", "g2", f"b{i}")
        await world.message("carol", "g3", f"c{i}")
    ops, cursor, pages = drain(world.hub, "bob", {}, limit)
    assert len(ops) == len({op.op_id for op in ops}) == 22
    assert {op.conv for op in ops} == {"g1", "g2"}
    assert pages >= 22 // limit
    for conv in ("g1", "g2"):
        seqs = [op.dot.seq for op in ops if op.conv == conv]
        assert seqs == list(range(1, 12))  # in order, none skipped
        assert cursor[ConvId(conv)] == {world.hub.node_id: 11}
    assert world.hub.sync("bob", cursor, limit) == ([], cursor, False)

    more = [await world.message("alice", "g1", f"later {i}") for i in range(5)]
    ops, cursor2, _ = drain(world.hub, "bob", cursor, limit)
    assert [op.op_id for op in ops] == [op.op_id for op in more]
    assert cursor2[ConvId("g1")] == {world.hub.node_id: 16}


async def test_sync_pages_never_loop_on_a_gap_in_an_origins_dots(world: World) -> None:
    """Ops from a peer can arrive with a hole (one lost until anti-entropy repairs it). The
    cursor holds contiguous seqs only, so sync stops at the hole instead of serving what lies
    beyond it on every page with more=true."""
    peer = SigningKey(b"\x09" * 32)
    origin = node_id_for(peer.verify_key)

    def remote(seq: int, kind: str, **fields: Any) -> Op:
        content = Content(
            conv=ConvId("g"), kind=kind,  # type: ignore[arg-type]
            author=UserId("alice"), device=DeviceId("d1"), **fields,
        )  # fmt: skip
        return sign_envelope(
            Op(content=content, hlc=Timestamp(T0 - 1000 + seq, 0), dot=Dot(origin, seq)), peer
        )

    ops = [remote(1, "create", attrs={"type": "group", "members": ["bob"]})]
    ops += [remote(seq, "message", body=b"m%d" % seq) for seq in range(2, 10)]
    await world.hub.accept_remote([op for op in ops if op.dot.seq != 3])

    seen, cursor, pages = drain(world.hub, "bob", {}, 2)
    assert [op.dot.seq for op in seen] == [1, 2] and pages <= 2
    assert cursor[ConvId("g")] == {origin: 2}

    await world.hub.accept_remote([ops[2]])  # the repair arrives
    rest, cursor, _ = drain(world.hub, "bob", cursor, 2)
    assert [op.dot.seq for op in rest] == list(range(3, 10))
    assert cursor[ConvId("g")] == {origin: 9}


async def test_sync_ignores_foreign_conversations_in_the_cursor(world: World) -> None:
    await world.group("carol", "g3")
    await world.message("carol", "g3", "secret")
    ops, _, more = world.hub.sync("bob", {ConvId("g3"): {}}, 10)
    assert ops == [] and not more


async def test_history_pages_backwards(world: World) -> None:
    await world.group("alice", "g1", "bob")
    sent = [await world.message("alice", "g1", f"m{i}") for i in range(12)]
    page, more = world.hub.history("bob", "g1", None, 5)
    assert [m["op_id"] for m in page] == [op.op_id for op in sent[7:]] and more
    page, more = world.hub.history("bob", "g1", page[0]["op_id"], 5)
    assert [m["op_id"] for m in page] == [op.op_id for op in sent[2:7]] and more
    page, more = world.hub.history("bob", "g1", page[0]["op_id"], 5)
    assert [m["op_id"] for m in page] == [op.op_id for op in sent[:2]] and not more
    with pytest.raises(ClientError, match="not_found"):
        world.hub.history("bob", "g1", "nope", 5)
    with pytest.raises(ClientError, match="not_member"):
        world.hub.history("carol", "g1", None, 5)


async def test_conversation_list_unread_and_read_markers(world: World) -> None:
    await world.group("alice", "g1", "bob")
    sent = [await world.message("alice", "g1", f"m{i}") for i in range(4)]
    await world.message("bob", "g1", "own messages are never unread")
    (row,) = world.hub.conversation_list("bob")
    assert (
        row["unread"] == 4
        and row["last_message"]["body"] == "b3duIG1lc3NhZ2VzIGFyZSBuZXZlciB1bnJlYWQ"
    )
    assert await world.hub.mark_read("bob", "g1", sent[1].op_id)
    assert not await world.hub.mark_read("bob", "g1", sent[0].op_id)  # never backwards
    assert world.hub.conversation_list("bob")[0]["unread"] == 2
    users, frame = world.fanout.of_type("read")[-1]
    assert users == {"alice", "bob"} and frame["op_id"] == sent[1].op_id
    with pytest.raises(ClientError, match="not_member"):
        await world.hub.mark_read("carol", "g1", sent[1].op_id)
    await world.reopen()
    assert world.hub.conversation_list("bob")[0]["unread"] == 2  # markers are durable


async def test_typing_goes_to_the_other_members_only(world: World) -> None:
    await world.group("alice", "g1", "bob", "carol")
    world.hub.typing("alice", "g1", True)
    users, frame = world.fanout.of_type("typing")[-1]
    assert users == {"bob", "carol"} and frame["active"] is True
    with pytest.raises(ClientError, match="not_member"):
        world.hub.typing("dave", "g1", True)


# -- restart ------------------------------------------------------------------------------------


async def test_a_new_hub_over_the_same_store_has_the_same_views_and_a_monotonic_clock(
    world: World,
) -> None:
    await world.group("alice", "g1", "bob", "carol")
    await world.send("alice", "g1", "member_remove", target="carol")
    msg = await world.message("bob", "g1", "hello")
    await world.send("alice", "g1", "react", target=msg.op_id, attrs={"key": "ok"})
    conv = direct_conv_id("alice", "dave")
    await world.send("dave", conv, "create", attrs={"type": "direct", "members": ["alice"]})
    last = await world.message("alice", conv, "hi dave")
    views = {c: log.view().to_bytes() for c, log in world.hub.logs.items()}
    index = {u: world.hub.conversations_of(u) for u in ("alice", "bob", "carol", "dave")}

    world.clock.now = T0 - 10_000  # the wall clock went backwards across the restart
    hub = await world.reopen()
    assert {c: log.view().to_bytes() for c, log in hub.logs.items()} == views
    assert {u: hub.conversations_of(u) for u in index} == index
    after = await world.message("alice", conv, "after restart")
    assert after.hlc > last.hlc
    assert after.dot.seq == last.dot.seq + 1  # dots stay dense
    ops, _, _ = drain(hub, "alice", {}, 4)
    assert len(ops) == len({op.op_id for op in ops}) == 7
