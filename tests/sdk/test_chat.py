"""The SDK against a real node: chat, groups, devices, the keystore, retries, the cursor."""

from __future__ import annotations

import asyncio
import json
import stat
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, eventually
from tests.sdk.conftest import FAST, MakeClient, Recorder, unique_user
from yanzi import Client, InvalidRequest, Read, ServerError, Typing


async def test_two_users_chat_both_ways(make_client: MakeClient) -> None:
    alice = await make_client()
    bob = await make_client()
    alice_rec, bob_rec = Recorder(alice), Recorder(bob)
    conv = await alice.direct(bob.user)
    assert await bob.direct(alice.user) == conv  # found again from either side

    a1 = await alice.send(conv, "hi bob")
    b1 = await bob.send(conv, "hi alice")
    a2 = await alice.send(conv, b"\x00\xffbinary")

    def both_have_three() -> bool:
        return len(alice.messages(conv)) == 3 and len(bob.messages(conv)) == 3

    await eventually(both_have_three)
    assert [m.body for m in bob.messages(conv)] == [b"hi bob", b"hi alice", b"\x00\xffbinary"]
    assert [m.author for m in alice.messages(conv)] == [alice.user, bob.user, alice.user]
    assert alice.view(conv).to_bytes() == bob.view(conv).to_bytes()
    # Every message op reached each side exactly once, own ops included.
    sent = {a1.op_id, b1.op_id, a2.op_id}
    for rec in (alice_rec, bob_rec):
        await eventually(lambda rec=rec: len(rec.ops("message")) == 3)
        assert Counter(op.op_id for op in rec.ops("message")) == dict.fromkeys(sent, 1)

    # Ephemeral signals and read markers.
    assert await bob.typing(conv, True)
    await eventually(lambda: Typing(conv, bob.user, True) in alice_rec.poll())
    await alice.mark_read(conv, b1.op_id)
    await eventually(lambda: Read(conv, alice.user, b1.op_id) in bob_rec.poll())


async def test_history_and_conversation_list(make_client: MakeClient) -> None:
    alice = await make_client()
    bob = await make_client(connect=False)  # HTTP only: no socket at all
    conv = await alice.direct(bob.user)
    acks = [await alice.send(conv, f"m{i}") for i in range(3)]

    rows = {row.conv: row for row in await bob.conversations()}
    assert rows[conv].type == "direct"
    assert rows[conv].unread == 3
    assert rows[conv].last_message is not None and rows[conv].last_message.text == "m2"

    page = await bob.history(conv, limit=2)
    assert [m.text for m in page.messages] == ["m1", "m2"] and page.more
    older = await bob.history(conv, before=page.messages[0].op_id, limit=2)
    assert [m.text for m in older.messages] == ["m0"] and not older.more

    await bob.mark_read(conv, acks[-1].op_id)  # over HTTP: bob is not connected
    rows = {row.conv: row for row in await bob.conversations()}
    assert rows[conv].unread == 0

    with pytest.raises(ServerError) as refused:
        await bob.history("g_doesnotexist0000")
    assert refused.value.code == "not_found"


async def test_group_of_five_edits_deletes_reactions(make_client: MakeClient) -> None:
    owner, *members = [await make_client() for _ in range(5)]
    everyone = [owner, *members]
    conv = await owner.create_group("five", [m.user for m in members])
    await eventually(lambda: all(len(c.state(conv).members) == 5 for c in everyone))
    assert all(c.state(conv).settings["title"] == "five" for c in everyone)

    m1, m2, m3, m4 = members
    hello = await m1.send(conv, "hello")
    typo = await m2.send(conv, "tpyo")
    await m1.edit(conv, hello.op_id, "hello, all")
    await owner.delete(conv, typo.op_id)  # an owner may delete anyone's message
    await m3.react(conv, hello.op_id, "👍")
    await m4.react(conv, hello.op_id, "👍")
    await m4.react(conv, hello.op_id, "❤")
    await eventually(lambda: "❤" in (m4.state(conv).message(hello.op_id) or _NO).reactions)
    await m4.unreact(conv, hello.op_id, "❤")  # removes exactly the react ops m4's view holds
    with pytest.raises(InvalidRequest):
        await m4.unreact(conv, hello.op_id, "❤")
    await owner.set_role(conv, m3.user, "admin")
    await m3.remove_member(conv, m4.user)  # an admin removes a member
    final = await owner.send(conv, "bye")

    def converged() -> bool:
        views = {c.view(conv).to_bytes() for c in [owner, m1, m2, m3]}
        return len(views) == 1 and final.op_id in {m.op_id for m in owner.messages(conv)}

    await eventually(converged)
    messages = {m.op_id: m for m in m2.messages(conv)}
    assert messages[hello.op_id].text == "hello, all"
    assert messages[hello.op_id].edited_by is not None
    assert messages[hello.op_id].reactions == {"👍": tuple(sorted([m3.user, m4.user]))}
    assert messages[typo.op_id].deleted and messages[typo.op_id].body == b""
    state = m1.state(conv)
    assert state.role(m3.user) == "admin" and m4.user not in state.members
    # m4 saw its own removal, and nothing after it.
    await eventually(lambda: m4.user not in m4.state(conv).members)
    assert final.op_id not in {m.op_id for m in m4.messages(conv)}


class _NoMessage:
    reactions: dict[str, object] = {}  # noqa: RUF012 - a read-only stand-in


_NO = _NoMessage()


async def test_multi_device_delivery(make_client: MakeClient) -> None:
    user = unique_user("multi")
    phone = await make_client(user)
    laptop = await make_client(user, register=False)
    assert phone.device != laptop.device
    friend = await make_client()
    conv = await friend.direct(user)
    to_both = await friend.send(conv, "to both devices")
    own = await phone.send(conv, "from my phone")
    for device in (phone, laptop):
        await eventually(
            lambda d=device: {m.op_id for m in d.messages(conv)} == {to_both.op_id, own.op_id}
        )
    devices = await friend.devices(user)
    assert sorted(d["device"] for d in devices) == sorted([phone.device, laptop.device])


async def test_keystore_is_private_and_reused(
    make_client: MakeClient, node: NodeProcess, tmp_path: Path
) -> None:
    path = tmp_path / "nested" / "alice.keys"
    user = unique_user("ks")
    first = await make_client(user, keystore=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["device"] == first.device and saved["user"] == user and saved["token"]
    keys = first.keystore.public_keys_json()
    await first.close()

    again = await make_client(user, keystore=path, register=False)  # logs in again
    assert again.device == first.device
    assert again.keystore.public_keys_json() == keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    devices = await again.devices(user)
    assert [(d["device"], d["keys"]) for d in devices] == [(first.device, keys)]
    await again.close()

    # The token is in the keystore too: a new process connects without logging in.
    resumed = await make_client(keystore=path, login=False)
    assert resumed.connected and resumed.user == user


async def test_retry_with_same_cmid_yields_one_op(make_client: MakeClient) -> None:
    alice = await make_client()
    bob = await make_client()
    conv = await alice.direct(bob.user)
    first = await alice.send(conv, "exactly once", cmid="retry-1")
    again = await alice.send(conv, "exactly once", cmid="retry-1")
    assert again == first
    together = await asyncio.gather(*(alice.send(conv, "burst", cmid="retry-2") for _ in range(5)))
    assert len({ack.op_id for ack in together}) == 1
    await alice.disconnect()  # the retry now goes over POST /v1/ops
    over_http = await alice.send(conv, "exactly once", cmid="retry-1")
    assert over_http.op_id == first.op_id

    page = await bob.history(conv)
    assert Counter(m.text for m in page.messages) == {"exactly once": 1, "burst": 1}
    await eventually(lambda: len(bob.messages(conv)) == 2)


async def test_cursor_persists_across_client_instances(
    make_client: MakeClient, node: NodeProcess, tmp_path: Path
) -> None:
    path = tmp_path / "reader.keys"
    reader = await make_client(keystore=path)
    writer = await make_client()
    conv = await writer.direct(reader.user)
    old = [await writer.send(conv, f"old {i}") for i in range(3)]
    await eventually(lambda: len(reader.messages(conv)) == 3)
    await reader.close()  # writes the cursor
    assert json.loads(path.read_text())["cursor"][conv]

    new = [await writer.send(conv, f"new {i}") for i in range(2)]
    clients: list[Client] = []
    fresh = Client(node.url, keystore_path=path, config=FAST)
    clients.append(fresh)
    try:
        rec = Recorder(fresh)
        await fresh.connect()  # catch-up is done when connect() returns
        assert [op.op_id for op in rec.ops()] == [a.op_id for a in new]
        # Backfill loads the full view without replaying old ops as events.
        await fresh.backfill(conv)
        assert [m.text for m in fresh.messages(conv)] == [f"old {i}" for i in range(3)] + [
            f"new {i}" for i in range(2)
        ]
        assert len(rec.ops()) == 2
        assert {a.op_id for a in old} <= {m.op_id for m in fresh.messages(conv)}
    finally:
        for client in clients:
            await client.close()


async def test_joining_a_group_fills_the_gap(make_client: MakeClient) -> None:
    owner = await make_client()
    early = await make_client()
    late = await make_client()
    conv = await owner.create_group("history", [early.user])
    sent = [await early.send(conv, f"before {i}") for i in range(5)]
    await owner.add_member(conv, late.user)
    # The member_add op arrives live with a seq far beyond anything `late` holds for this
    # conversation: a gap, which the client fills by an HTTP catch-up.
    await eventually(lambda: len(late.messages(conv)) == 5)
    assert [m.op_id for m in late.messages(conv)] == [a.op_id for a in sent]
    assert late.view(conv).to_bytes() == owner.view(conv).to_bytes()
    assert late.cursor[conv] == owner.cursor[conv]  # contiguous: no hole left behind
