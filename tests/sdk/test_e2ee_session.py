"""The E2EE session (yanzi.e2ee_session) against fakes of its ports: a tiny in-memory "node"
that stamps ops, keeps the key directory and member lists, and delivers every op to every
member's session. Fast and deterministic; tests/sdk/test_e2ee_chat.py does the same through a
real node."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    b64encode,
    sign_content,
)
from yanzi.e2ee import parse_body, sign_device
from yanzi.e2ee_session import E2eeSession, E2eeTimers
from yanzi.events import Ack, Event, KeyChanged, Undecryptable
from yanzi.keystore import Keystore

NODE = NodeId("n" * 43)


@dataclass
class FakeNode:
    members: dict[str, set[str]] = field(default_factory=dict)
    directory: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sessions: list[Device] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    now: float = 0.0  # the sessions' monotonic clock: settle() moves it on

    def clock(self) -> float:
        return self.now

    def publish(self, dev: Device) -> None:
        ks = dev.keystore
        x25519 = bytes(ks.box_key.public_key)
        row = {
            "user": dev.user,
            "device": ks.device,
            "keys": ks.public_keys_json(),
            "keys_sig": b64encode(sign_device(dev.user, ks.device, ks.signing_key, x25519)),
        }
        rows = [r for r in self.directory.get(dev.user, []) if r["device"] != ks.device]
        self.directory[dev.user] = [*rows, row]

    def write(self, dev: Device, conv: str, kind: str, body: bytes = b"", target: str = "") -> Op:
        content = Content(
            conv=ConvId(conv),
            kind=kind,  # type: ignore[arg-type]
            author=UserId(dev.user),
            device=DeviceId(dev.keystore.device),
            target=target,
            body=body,
        )
        seq = next(self.seq)
        op = Op(
            content=content,
            hlc=Timestamp(1_700_000_000_000 + seq, 0),
            dot=Dot(NODE, seq),
            dsig=sign_content(content, dev.keystore.signing_key),
        )
        self.ops.append(op)
        if kind == "member_add":
            self.members[conv].add(target)
        elif kind == "member_remove":
            self.members[conv].discard(target)
        for other in self.sessions:
            if other.user in self.members.get(conv, set()):
                other.session.receive(op)
        return op


class Device:
    """One device: a keystore, an E2EE session and the fake host it talks through."""

    def __init__(self, node: FakeNode, path: Path, user: str) -> None:
        self.node = node
        self.user = user
        self.keystore = Keystore.open(path)
        self.keystore.user = user
        self.events: list[Event] = []
        self.persisted = 0
        self.session = self.new_session()
        node.publish(self)
        node.sessions.append(self)

    def new_session(self) -> E2eeSession:
        timers = E2eeTimers(key_request_delay_s=0)
        return E2eeSession(self, self.keystore, timers=timers, monotonic=self.node.clock)

    # E2eeHost
    async def fetch_devices(self, user: str) -> list[dict[str, Any]]:
        return list(self.node.directory.get(user, []))

    async def fetch_members(self, conv: str) -> list[str]:
        return sorted(self.node.members[conv])

    async def submit_key_share(self, conv: str, body: bytes) -> Ack:
        op = self.node.write(self, conv, "key_share", body)
        return Ack(op_id=op.op_id, conv=conv, hlc=op.hlc, dot=op.dot, cmid="x")

    def local_members(self, conv: str) -> list[str]:
        return sorted(self.node.members.get(conv, set()))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def state_changed(self) -> None:
        pass

    async def persist(self) -> None:
        self.persisted += 1
        self.keystore.e2ee, self.keystore.trust = self.session.snapshot()

    # helpers
    async def send(self, conv: str, text: str) -> Op:
        body = await self.session.seal(conv, text.encode())
        return self.node.write(self, conv, "message", body)

    async def settle(self) -> None:
        for _ in range(5):  # answers cause shares cause openings: a few rounds
            self.node.now += 10.0  # past every directory and answer rate limit
            for dev in self.node.sessions:
                await dev.session.settle()
                await dev.session._tick()

    def read(self, op: Op) -> str | None:
        opened = self.session.opened(op.op_id)
        return opened.body.decode() if opened and opened.status == "decrypted" else None


def make(tmp_path: Path, node: FakeNode, user: str, name: str | None = None) -> Device:
    return Device(node, tmp_path / f"{name or user}.json", user)


async def test_rotation_sharing_and_late_members(tmp_path: Path) -> None:
    node = FakeNode(members={"g": {"alice", "bob"}})
    alice, bob, carol = (make(tmp_path, node, u) for u in ("alice", "bob", "carol"))
    for dev in (alice, bob, carol):
        dev.session.caught_up()
    first = await alice.send("g", "one")
    second = await alice.send("g", "two")
    await alice.settle()
    assert (bob.read(first), bob.read(second)) == ("one", "two")
    assert parse_body(first.content.body).chain_id == parse_body(second.content.body).chain_id

    node.write(alice, "g", "member_add", target="carol")
    for op in node.ops:  # carol's backfill
        carol.session.receive(op)
    third = await alice.send("g", "three")
    await alice.settle()
    assert parse_body(third.content.body).chain_id != parse_body(first.content.body).chain_id
    assert carol.read(third) == "three"
    # carol asked for the old chain, and alice refused: carol was not a member when it began.
    requests = [op for op in node.ops if op.kind == "key_share" and op.author == "carol"]
    assert requests
    assert carol.read(first) is None and carol.read(second) is None
    assert {e.reason for e in carol.events if isinstance(e, Undecryptable)} == {"missing_key"}

    node.write(alice, "g", "member_remove", target="bob")
    fourth = await alice.send("g", "four")
    bob.session.receive(fourth)  # even handed the op, bob has no key for it
    await alice.settle()
    assert bob.read(fourth) is None and carol.read(fourth) == "four"


async def test_a_new_device_of_a_member_gets_the_chain_on_request(tmp_path: Path) -> None:
    node = FakeNode(members={"g": {"alice", "bob"}})
    alice, bob = make(tmp_path, node, "alice"), make(tmp_path, node, "bob")
    alice.session.caught_up()
    sent = await alice.send("g", "hello")
    laptop = make(tmp_path, node, "bob", "bob-laptop")
    laptop.session.caught_up()
    for op in node.ops:
        laptop.session.receive(op)
    await alice.settle()
    assert laptop.read(sent) == "hello" and bob.read(sent) == "hello"


async def test_a_changed_key_gets_no_share_until_trusted(tmp_path: Path) -> None:
    node = FakeNode(members={"g": {"alice", "bob"}})
    alice, bob = make(tmp_path, node, "alice"), make(tmp_path, node, "bob")
    for dev in (alice, bob):
        dev.session.caught_up()
    await alice.send("g", "hello")
    await alice.settle()
    # bob's device id comes back with new keys.
    bob.keystore.signing_key = SigningKey.generate()
    node.publish(bob)
    bob.session = bob.new_session()
    bob.session.caught_up()
    node.now += 10.0
    node.write(alice, "g", "member_add", target="carol")  # force a rotation
    node.members["g"].discard("carol")
    secret = await alice.send("g", "secret")
    assert [type(e) for e in alice.events] == [KeyChanged]
    await alice.settle()
    assert bob.read(secret) is None  # not shared with the untrusted key, request refused
    assert alice.session.trust_device("bob", bob.keystore.device)
    await alice.settle()
    assert bob.read(secret) == "secret"  # the refused request is answered once trusted


async def test_chain_state_persists_and_indices_are_reserved(tmp_path: Path) -> None:
    node = FakeNode(members={"g": {"alice", "bob"}})
    alice, bob = make(tmp_path, node, "alice"), make(tmp_path, node, "bob")
    sent = [await alice.send("g", f"m{i}") for i in range(3)]
    persisted = alice.persisted
    assert persisted == 2  # the new chain, then one block of indices
    state, _ = alice.session.snapshot()
    assert state["outbound"]["g"]["i"] == 17  # a crash resumes past every index handed out

    # A new process with that keystore: the same chain, further on, no new share.
    restarted = alice.new_session()
    body = await restarted.seal("g", b"after the restart")
    assert parse_body(body).chain_id == parse_body(sent[0].content.body).chain_id
    assert parse_body(body).index == 17
    shares = [op for op in node.ops if op.kind == "key_share" and op.author == "alice"]
    assert len(shares) == 1
    await bob.settle()
    assert [bob.read(op) for op in sent] == ["m0", "m1", "m2"]
