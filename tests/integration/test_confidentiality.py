"""Confidentiality canary (DESIGN.md, "Properties"): no plaintext body reaches a node's disk, its
logs, its audit log or NATS.

A real two-node mesh (one standalone nats-server, `mesh init` + invite + `join`, nodes at DEBUG
log level) and SDK clients with E2EE on, at both nodes. A raw NATS subscriber on `yanzi.>`
records every payload the mesh exchanges. Users write messages and edits holding a unique
canary string in a direct conversation and a group that span both nodes; once everyone has read
them, the nodes are stopped and every byte they left behind — LMDB files, node logs, audit
logs, nats-server files — and every recorded NATS payload is searched for the canary, raw and in
every base64 and base64url alignment. Control checks show the search sees what it should: the
ciphertext of those messages is found in the same places.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp
import nats
import pytest

from crdt import b64encode
from tests.helpers import eventually
from tests.integration.fed_helpers import Mesh, wait_mesh_up
from yanzi import Client, ClientConfig, ServerError

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
CONFIG = ClientConfig(
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    request_timeout_s=5.0,
    persist_delay_s=0.01,
    key_request_delay_s=0.5,
)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    built = Mesh(tmp_path)
    try:
        yield built
    finally:
        await built.close()


def needles(secret: bytes) -> set[bytes]:
    """`secret` raw, and the part of its base64 / base64url encoding that depends on it alone,
    at each of the three alignments it can have inside a longer encoded value, with and without
    padding characters around it."""
    found = {secret}
    for k in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * k + secret)
            first = -(-8 * k // 6)  # the first character made of secret bits only
            last = 8 * (k + len(secret)) // 6
            found.add(text[first:last])
    return found


def test_needles_find_every_encoding() -> None:
    """The search itself can fail: each alignment of each alphabet is caught."""
    secret = b"CANARY-" + secrets.token_hex(8).encode() + b"?>~"  # '+' '/' vs '-' '_' matter
    wanted = needles(secret)
    for prefix in (b"", b"a", b"ab", b"abc"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = b"xx" + encode(prefix + secret + b"tail").rstrip(b"=") + b"yy"
            assert any(n in blob for n in wanted), (prefix, encode)
    assert not any(n in b"nothing here" for n in wanted)


def leaks(blob: bytes, wanted: Iterable[bytes]) -> list[bytes]:
    return [n for n in wanted if n in blob]


async def client(url: str, keys: Path, user: str, *, register: bool) -> Client:
    c = Client(url, keystore_path=keys, config=CONFIG)
    if register:
        await c.register(user, PASSWORD)

    async def logged_in() -> bool:  # an account made at the other node arrives by replication
        try:
            await c.login(user, PASSWORD)
        except ServerError as err:
            if err.code != "bad_credentials":
                raise
            return False
        return True

    await eventually(logged_in, timeout=20, interval=0.1)
    await c.connect()
    return c


def texts(c: Client, conv: str) -> list[str]:
    return [m.text for m in c.messages(conv) if m.e2ee == "decrypted"]


async def test_no_plaintext_reaches_disk_logs_or_nats(
    mesh: Mesh,
    http: aiohttp.ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", server, YANZI_LOG_LEVEL="DEBUG")
    b = mesh.join("b", "cn-south", server, YANZI_LOG_LEVEL="DEBUG")

    # Every payload NATS carries (the mesh subjects and the _INBOX replies to requests, which
    # carry anti-entropy pages), from before the nodes start until they stop.
    recorded: list[bytes] = []

    async def record(msg: nats.aio.msg.Msg) -> None:
        recorded.append(msg.subject.encode() + b" " + msg.data + repr(msg.headers).encode())

    tap = await nats.connect(server.url)
    try:
        await tap.subscribe(">", cb=record)
        await tap.flush()
        await mesh.start(a, b)
        await wait_mesh_up(http, [a, b])

        canary = "CANARY-" + secrets.token_hex(16)
        keys = tmp_path_factory.mktemp("keystores")  # outside the mesh's folder
        alice = await client(a.url, keys / "alice.json", "alice", register=True)
        bob = await client(b.url, keys / "bob.json", "bob", register=True)
        carol = await client(b.url, keys / "carol.json", "carol", register=True)
        alice_at_b = await client(b.url, keys / "alice-b.json", "alice", register=False)
        everyone = [alice, bob, carol, alice_at_b]
        try:

            async def direct() -> str | None:
                try:
                    return await alice.direct("bob")  # bob's account must have reached A
                except ServerError:
                    return None

            conv = await eventually(direct, timeout=20, interval=0.1)
            # (Titles and other attrs are visible to nodes by design: no canary there.)
            group = await alice.create_group("team", ["bob", "carol"])
            said = [
                (alice, conv, canary),
                (bob, conv, f"bob says {canary} back"),
                (alice, group, f"to the group: {canary}!"),
                (carol, group, f"{canary}{canary}"),
                (alice_at_b, conv, f"from alice's other device: {canary}"),
            ]
            acks = []
            for who, where, text in said:
                await eventually(lambda w=who, c=where: w.state(c).members, timeout=20)
                acks.append(await who.send(where, text))
            await bob.edit(conv, acks[1].op_id, f"bob edits: {canary}")

            want_direct = [canary, f"bob edits: {canary}", f"from alice's other device: {canary}"]
            want_group = [f"to the group: {canary}!", f"{canary}{canary}"]
            for c in (alice, bob, alice_at_b):
                await eventually(lambda c=c: texts(c, conv) == want_direct, timeout=30)
            for c in (alice, bob, carol, alice_at_b):
                await eventually(lambda c=c: texts(c, group) == want_group, timeout=30)
            # The ciphertexts of those messages, for the control checks below.
            ciphertexts = [
                b64encode(op.content.body).encode()
                for op in [*bob.ops(conv), *bob.ops(group)]
                if op.kind in ("message", "edit")
            ]
        finally:
            for c in everyone:
                await c.close()
        await asyncio.gather(*(asyncio.to_thread(n.proc.stop) for n in (a, b)))
        await tap.flush()
    finally:
        await tap.close()

    wanted = needles(canary.encode())
    everything = b"".join(recorded)
    assert recorded, "the tap recorded no NATS traffic"
    assert any(r.startswith(b"_INBOX.") for r in recorded), "no request reply was recorded"
    found = leaks(everything, wanted)
    assert not found, f"plaintext on NATS: {found[:1]}"
    # Control: the ciphertexts did cross NATS (alice wrote at A, bob and carol at B).
    assert all(ct in everything for ct in ciphertexts)

    files = [p for p in mesh.root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"data.mdb", "a.log", "b.log"} <= names, names  # audit.log too, if anything was audited
    for path in files:
        found = leaks(path.read_bytes(), wanted)
        assert not found, f"plaintext in {path.relative_to(mesh.root)}: {found[:1]}"
    # Control: both nodes stored the ciphertexts (the LMDB search can see a body).
    for node in (a, b):
        stored = b"".join(p.read_bytes() for p in node.data_dir.rglob("data.mdb"))
        assert all(ct in stored for ct in ciphertexts), node.name
