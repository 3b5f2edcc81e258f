"""End-to-end encryption through a real node (docs/e2ee.md): what users of the SDK see.

Every test runs the shipped node (`yanzi up` as a subprocess) and real SDK clients; nothing is
mocked. The node's own view of a body is read over its HTTP API to show it holds ciphertext.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from crdt import Op, b64decode, b64encode
from tests.helpers import eventually
from tests.sdk.conftest import FAST, MakeClient, Recorder
from yanzi import (
    Client,
    DeviceAdded,
    KeyChanged,
    Message,
    Replay,
    Undecryptable,
)
from yanzi.e2ee import ALG_CHAIN, parse_body, parse_key_share

E2EE = FAST.replace(key_request_delay_s=0.3)


@pytest.fixture
def make(make_client: MakeClient) -> MakeClient:
    async def make_e2ee(*args: Any, **kwargs: Any) -> Client:
        kwargs.setdefault("config", E2EE)
        return await make_client(*args, **kwargs)

    return make_e2ee


def texts(client: Client, conv: str) -> list[str]:
    return [m.text for m in client.messages(conv) if m.e2ee in ("decrypted", "plain")]


def by_id(client: Client, conv: str, op_id: str) -> Message:
    return next(m for m in client.messages(conv) if m.op_id == op_id)


async def node_body(client: Client, conv: str, op_id: str) -> bytes:
    """What the node itself shows as the body of a message (its history endpoint)."""
    data = await client._http_api().messages(
        client.keystore.token or "", conv, before=None, limit=200
    )
    row = next(m for m in data["messages"] if m["op_id"] == op_id)
    return b64decode(row["body"])


def chain_of(op: Op) -> str:
    return b64encode(parse_body(op.content.body).chain_id)


async def idle(*clients: Client) -> None:
    """Until every client's E2EE worker has handled everything it was given."""

    def quiet() -> bool:
        return all(c._e2ee is not None and c._e2ee.idle() for c in clients)

    await eventually(quiet)


async def test_two_users_chat_encrypted_both_ways(make: MakeClient) -> None:
    alice, bob = await make(), await make()
    conv = await alice.direct(bob.user)
    a1 = await alice.send(conv, "hi bob, this is secret")
    b1 = await bob.send(conv, "hi alice, so is this")
    a2 = await alice.send(conv, b"\x00\xffbinary")
    await alice.edit(conv, a1.op_id, "hi bob, edited in secret")

    want = ["hi bob, edited in secret", "hi alice, so is this", "\x00\ufffdbinary"]
    for client in (alice, bob):
        await eventually(lambda c=client: texts(c, conv) == want)
        msgs = client.messages(conv)
        assert [m.e2ee for m in msgs] == ["decrypted"] * 3
        assert all(m.verified for m in msgs)
        assert msgs[2].body == b"\x00\xffbinary"

    # The node holds only ciphertext: v1 chain bodies, bound to this conversation.
    for ack in (a1, b1, a2):
        stored = await node_body(alice, conv, ack.op_id)
        assert json.loads(stored)["alg"] == ALG_CHAIN
        assert b"secret" not in stored and b"binary" not in stored
    # The history endpoint's rows are decrypted too (unverified: the node drops signatures).
    page = await bob.history(conv)
    assert [m.text for m in page.messages] == want
    assert {m.e2ee for m in page.messages} == {"decrypted"}
    rows = {c.conv: c for c in await bob.conversations()}
    last = rows[conv].last_message
    assert last is not None and last.text == want[-1]

    # A key share went from each sender to the other before its first message.
    shares = [op for op in bob.ops(conv) if op.kind == "key_share"]
    assert {op.author for op in shares} == {alice.user, bob.user}
    first_message = next(op for op in bob.ops(conv) if op.kind == "message")
    first_share = next(op for op in shares if op.author == first_message.author)
    assert first_share.order_key < first_message.order_key


async def test_an_http_only_client_reads_history(make: MakeClient) -> None:
    alice = await make()
    bob = await make(connect=False)  # no socket, no worker: history() pulls the key shares
    conv = await alice.direct(bob.user)
    await alice.send(conv, "read me over HTTP")
    page = await bob.history(conv)
    assert [(m.text, m.e2ee) for m in page.messages] == [("read me over HTTP", "decrypted")]


async def test_a_member_added_later_reads_only_what_follows(make: MakeClient) -> None:
    alice, bob, carol = await make(), await make(), await make()
    carol_rec = Recorder(carol)
    group = await alice.create_group("team", [bob.user])
    before = await alice.send(group, "before carol")
    bob_before = await bob.send(group, "bob before carol")
    await eventually(lambda: len(texts(bob, group)) == 2 and len(texts(alice, group)) == 2)

    await alice.add_member(group, carol.user)
    await eventually(lambda: carol.user in bob.state(group).members)
    after = await alice.send(group, "after carol joined")
    bob_after = await bob.send(group, "bob, after carol joined")
    await carol.backfill(group)

    want = ["after carol joined", "bob, after carol joined"]
    await eventually(lambda: texts(carol, group) == want)
    assert all(m.verified for m in carol.messages(group) if m.e2ee == "decrypted")
    # New chains: rotation on member_add.
    ops = {op.op_id: op for op in carol.ops(group)}
    assert chain_of(ops[after.op_id]) != chain_of(ops[before.op_id])
    assert chain_of(ops[bob_after.op_id]) != chain_of(ops[bob_before.op_id])

    # The earlier ones stay unreadable: carol asks for their keys, and nobody answers her.
    await eventually(
        lambda: {e.op_id for e in carol_rec.of(Undecryptable)} >= {before.op_id, bob_before.op_id}
    )
    assert {e.reason for e in carol_rec.of(Undecryptable)} == {"missing_key"}

    def requests_seen() -> bool:
        requests = [
            op for op in alice.ops(group) if op.kind == "key_share" and op.author == carol.user
        ]
        return len(requests) >= 2

    await eventually(requests_seen)
    await eventually(lambda: len([op for op in bob.ops(group) if op.author == carol.user]) >= 2)
    await idle(alice, bob, carol)
    old = {before.op_id, bob_before.op_id}
    assert {m.e2ee for m in carol.messages(group) if m.op_id in old} == {"pending"}
    for op in carol.ops(group):  # no share for carol of an old chain, from anyone
        if op.kind == "key_share" and op.author != carol.user:
            share = parse_key_share(op.content.body)
            mine = [s for s in getattr(share, "shares", ()) if s.user == carol.user]
            if mine:
                assert b64encode(share.chain_id) not in {  # type: ignore[union-attr]
                    chain_of(ops[before.op_id]),
                    chain_of(ops[bob_before.op_id]),
                }


async def test_a_removed_member_cannot_read_later_messages(make: MakeClient) -> None:
    alice, bob, carol = await make(), await make(), await make()
    group = await alice.create_group("three", [bob.user, carol.user])
    early = await alice.send(group, "all three of us")
    await eventually(lambda: texts(carol, group) == ["all three of us"])

    await alice.remove_member(group, carol.user)
    await eventually(lambda: carol.user not in bob.state(group).members)
    late = await alice.send(group, "carol is gone")
    bob_late = await bob.send(group, "bob: carol is gone")
    await eventually(
        lambda: texts(bob, group) == ["all three of us", "carol is gone", "bob: carol is gone"]
    )

    # The node no longer sends carol anything; even handed the ops, she holds no key for them.
    ops = {op.op_id: op for op in bob.ops(group)}
    assert chain_of(ops[late.op_id]) != chain_of(ops[early.op_id])
    assert carol._e2ee is not None
    for op in bob.ops(group):
        carol._e2ee.receive(op)
    await carol._e2ee.settle()
    for op_id in (late.op_id, bob_late.op_id):
        opened = carol._e2ee.opened(op_id)
        assert opened is not None and opened.status == "pending"
    for op in ops.values():
        if op.kind == "key_share" and op.order_key > ops[early.op_id].order_key:
            share = parse_key_share(op.content.body)
            assert carol.user not in {s.user for s in getattr(share, "shares", ())}


async def test_own_other_devices_read_own_messages(make: MakeClient, tmp_path: Path) -> None:
    alice = await make()
    bob = await make()
    assert alice.user is not None
    laptop = await make(alice.user, register=False, keystore=tmp_path / "alice-laptop.json")
    conv = await alice.direct(bob.user)
    sent = await alice.send(conv, "from my phone")
    await laptop.backfill(conv)
    await eventually(lambda: texts(laptop, conv) == ["from my phone"])
    assert by_id(laptop, conv, sent.op_id).verified
    await laptop.send(conv, "from my laptop")
    await eventually(lambda: texts(alice, conv) == ["from my phone", "from my laptop"])
    await eventually(lambda: texts(bob, conv) == ["from my phone", "from my laptop"])

    # A device that logs in after the chain started asks for it; the owner answers.
    tablet = await make(alice.user, register=False, keystore=tmp_path / "alice-tablet.json")
    await tablet.backfill(conv)
    await eventually(lambda: texts(tablet, conv) == ["from my phone", "from my laptop"], timeout=15)
    requests = [
        op
        for op in tablet.ops(conv)
        if op.kind == "key_share" and op.content.device == tablet.device
    ]
    assert requests, "the tablet had to ask for the keys"


async def rekey(path: Path) -> None:
    """Give the device of keystore `path` new keys under the same device id (a reinstall, or
    an attacker who took over the device id)."""
    data = json.loads(path.read_text())
    data.update(
        ed25519_seed=b64encode(secrets.token_bytes(32)),
        x25519_secret=b64encode(secrets.token_bytes(32)),
        e2ee=None,
        trust=None,
        cursor={},
    )
    path.write_text(json.dumps(data))


async def test_a_changed_device_key_is_untrusted_until_trust(
    make: MakeClient, tmp_path: Path
) -> None:
    alice, bob_path = await make(), tmp_path / "bob.json"
    bob = await make(keystore=bob_path)
    alice_rec = Recorder(alice)
    conv = await alice.direct(bob.user)
    await bob.send(conv, "the real bob")
    await eventually(lambda: texts(alice, conv) == ["the real bob"])
    old_key = b64encode(bytes(bob.keystore.signing_key.verify_key))
    assert bob.user is not None
    device = bob.device
    await bob.close()

    await rekey(bob_path)
    new_bob = await make(bob.user, register=False, keystore=bob_path)
    assert new_bob.device == device
    new_key = b64encode(bytes(new_bob.keystore.signing_key.verify_key))
    impostor = await new_bob.send(conv, "trust me, I am bob")

    await eventually(lambda: alice_rec.of(KeyChanged))
    assert alice_rec.of(KeyChanged) == [KeyChanged(bob.user, device, old_key, new_key)]
    await eventually(lambda: texts(alice, conv) == ["the real bob", "trust me, I am bob"])
    assert not by_id(alice, conv, impostor.op_id).verified
    assert by_id(alice, conv, impostor.op_id).e2ee == "decrypted"

    # No chain key goes to the untrusted device: alice's new chain leaves it out.
    group = await alice.create_group("g", [bob.user])
    secret = await alice.send(group, "not for an unverified device")
    await eventually(lambda: any(op.op_id == secret.op_id for op in new_bob.ops(group)))
    shares = [op for op in new_bob.ops(group) if op.kind == "key_share"]
    assert all(
        device not in {s.device for s in parse_key_share(op.content.body).shares}  # type: ignore[union-attr]
        for op in shares
    )
    assert by_id(new_bob, group, secret.op_id).e2ee == "pending"

    # After comparing safety numbers, alice trusts the new key: verified, and shared on request.
    assert await alice.safety_number(bob.user) == await new_bob.safety_number(alice.user or "")
    assert alice.trust(bob.user, device)
    assert by_id(alice, conv, impostor.op_id).verified
    await eventually(lambda: texts(new_bob, group) == ["not for an unverified device"], timeout=15)


async def test_safety_numbers_match_and_change_with_a_new_device(
    make: MakeClient, tmp_path: Path
) -> None:
    alice, bob = await make(), await make()
    assert alice.user is not None and bob.user is not None
    bob_rec = Recorder(bob)
    number = await alice.safety_number(bob.user)
    assert number == await bob.safety_number(alice.user)
    assert len(number) == 35 and number.replace(" ", "").isdigit()

    await make(alice.user, register=False, keystore=tmp_path / "alice-2.json")
    changed = await bob.safety_number(alice.user)
    assert changed != number
    assert changed == await alice.safety_number(bob.user)
    await eventually(lambda: bob_rec.of(DeviceAdded))
    assert [e.user for e in bob_rec.of(DeviceAdded)] == [alice.user]


async def test_a_replayed_ciphertext_is_detected_and_hidden(make: MakeClient) -> None:
    alice, bob = await make(), await make()
    bob_rec = Recorder(bob)
    conv = await alice.direct(bob.user)
    original = await alice.send(conv, "pay bob 10 yuan")
    await eventually(lambda: texts(bob, conv) == ["pay bob 10 yuan"])

    # Someone with alice's token (or a node) posts the same signed content again: it carries
    # attrs.cmid, so the node answers with the original op and stores nothing.
    op = next(o for o in bob.ops(conv) if o.op_id == original.op_id)
    token = alice.keystore.token or ""
    same = {
        "cmid": op.content.attrs["cmid"],
        "conv": conv,
        "kind": "message",
        "attrs": dict(op.content.attrs),
        "body": b64encode(op.content.body),
        "dsig": b64encode(op.dsig),
    }
    assert (await alice._http_api().post_op(token, same))["op_id"] == original.op_id
    # The ciphertext replayed in a content without attrs.cmid (unsigned: this node does not
    # require signatures) is a new op, and the E2EE layer catches it.
    replayed = await alice._http_api().post_op(
        token,
        {"cmid": "replay-1", "conv": conv, "kind": "message", "body": b64encode(op.content.body)},
    )
    await eventually(lambda: bob_rec.of(Replay))
    assert bob_rec.of(Replay) == [
        Replay(conv, replayed["op_id"], original.op_id, alice.user or "", alice.device)
    ]
    assert texts(bob, conv) == ["pay bob 10 yuan"]
    assert [m.op_id for m in bob.messages(conv)] == [original.op_id]


async def test_e2ee_state_survives_a_restart(make: MakeClient, tmp_path: Path) -> None:
    alice_path = tmp_path / "alice.json"
    alice, bob = await make(keystore=alice_path), await make()
    conv = await alice.direct(bob.user)
    await alice.send(conv, "one")
    await bob.send(conv, "two")
    await eventually(lambda: texts(alice, conv) == ["one", "two"])
    await alice.close()
    assert oct(alice_path.stat().st_mode & 0o777) == "0o600"
    saved = json.loads(alice_path.read_text())
    assert saved["e2ee"]["outbound"][conv]["i"] > 1  # reserved past the index in use
    assert bob.user in saved["trust"]

    again = await make(alice.user, register=False, login=False, keystore=alice_path)
    await again.backfill(conv)
    await eventually(lambda: texts(again, conv) == ["one", "two"])
    await again.send(conv, "three")  # the same chain, further on: no new share needed
    await eventually(lambda: texts(bob, conv) == ["one", "two", "three"])
    alice_shares = [
        op for op in bob.ops(conv) if op.kind == "key_share" and op.author == alice.user
    ]
    assert len(alice_shares) == 1


async def test_e2ee_off_sends_plaintext(make_client: MakeClient) -> None:
    alice = await make_client(config=FAST.replace(e2ee=False))
    bob = await make_client()
    conv = await alice.direct(bob.user)
    ack = await alice.send(conv, "plain for a bot")
    await eventually(lambda: [m.text for m in bob.messages(conv)] == ["plain for a bot"])
    assert bob.messages(conv)[0].e2ee == "plain"
    assert bob.messages(conv)[0].verified  # signed by a trusted device all the same
    assert await node_body(bob, conv, ack.op_id) == b"plain for a bot"


async def test_a_backfill_without_a_socket_decrypts(make: MakeClient, tmp_path: Path) -> None:
    alice = await make()
    bob_path = tmp_path / "bob-offline.json"
    bob = await make(keystore=bob_path, connect=False)
    conv = await alice.direct(bob.user)
    await alice.send(conv, "waiting for you")
    await bob.backfill(conv)  # HTTP only: the E2EE work happens inside backfill
    assert texts(bob, conv) == ["waiting for you"]
    assert bob.messages(conv)[0].verified
