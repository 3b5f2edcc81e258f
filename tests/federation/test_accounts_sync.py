"""Account replication between in-process stacks over a real nats-server: each stack has its own
LMDB store, Accounts (argon2 at "min" cost), a hub + replicator (for the node request subject
and peer heartbeats) and an AccountsSync. The roster is a static stub; NATS, LMDB and every
signature are real."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from crdt import NodeId, canonical_json, node_id_for
from federation.accounts_sync import DBS as SYNC_DBS
from federation.accounts_sync import AccountRecord, AccountsSync, ver_key
from federation.config import FederationConfig
from federation.envelope import seal
from federation.metrics import FederationMetrics
from federation.natsd import EmbeddedNats, NatsServerConfig
from federation.replicator import Replicator
from federation.subjects import Subjects
from node.accounts import DBS as ACCOUNT_DBS
from node.accounts import Accounts, DeviceKeys
from node.errors import ClientError
from node.hub import DBS as HUB_DBS
from node.hub import Hub
from node.store import Delete, Put, Store
from tests.federation.doubles import Audit, Everyone, StaticMesh
from tests.helpers import eventually

MESH = "testmesh0000000b"
PASSWORD = "correct horse battery"
CONFIG = FederationConfig(
    ae_interval_s=3600, hello_interval_s=0.1, peer_timeout_s=5, request_timeout_s=2
)


class NoFanout:
    def deliver(self, users: Any, frame: str) -> None:
        pass


@dataclass
class Stack:
    store: Store
    key: SigningKey
    hub: Hub
    accounts: Accounts
    sync: AccountsSync
    metrics: FederationMetrics
    registry: CollectorRegistry
    audit: Audit
    mesh: StaticMesh
    nc: Any = None
    replicator: Replicator | None = None

    @property
    def node_id(self) -> NodeId:
        return node_id_for(self.key.verify_key)

    async def connect(self, url: str) -> None:
        self.nc = await nats.connect(url, no_echo=True, max_reconnect_attempts=-1)
        self.replicator = Replicator(
            nc=self.nc, hub=self.hub, key=self.key, mesh=self.mesh, config=CONFIG,
            metrics=self.metrics, audit=self.audit, region="r", urls=[], local_users=set,
        )  # fmt: skip
        self.replicator.request_handlers.update(self.sync.request_handlers())
        self.replicator.on_peer_up.append(self.sync.peer_up)
        await self.replicator.start()
        await self.sync.start(self.nc)

    async def disconnect(self) -> None:
        assert self.replicator is not None
        await self.sync.stop()
        await self.replicator.stop()
        await self.nc.close()
        self.replicator = None

    def alive_peers(self) -> list[str]:
        if self.replicator is None:
            return []
        return [p.node_id for p in self.replicator.alive_peers()]

    def dump(self) -> dict[str, list[tuple[bytes, bytes]]]:
        return {db: self.store.scan(db) for db in (*ACCOUNT_DBS, *SYNC_DBS)}

    def dropped(self, reason: str) -> float:
        value = self.registry.get_sample_value("yanzi_fed_dropped_total", {"reason": reason})
        return value or 0.0


async def make_stack(
    tmp: Path, name: str, mesh: StaticMesh, key: SigningKey | None = None
) -> Stack:
    store = Store(tmp / name, dbs=(*ACCOUNT_DBS, *HUB_DBS, *SYNC_DBS), sync=False)
    await store.start()
    key = key or SigningKey.generate()
    mesh.members.add(node_id_for(key.verify_key))
    hub = Hub(
        store=store, node_key=key, devices=Everyone(), fanout=NoFanout(), recall_window_s=120,
        require_device_signatures=False, max_clock_drift_ms=60_000, max_group_members=100,
    )  # fmt: skip
    registry = CollectorRegistry()
    metrics = FederationMetrics(registry)
    audit = Audit()
    stack_ref: list[Stack] = []
    sync = AccountsSync(
        store=store, key=key, mesh=mesh, config=CONFIG, metrics=metrics, audit=audit,
        peers=lambda: stack_ref[0].alive_peers(),
    )  # fmt: skip
    await sync.open()
    accounts = Accounts(
        store, token_ttl_s=3600, min_password_len=8, pwhash_level="min", journal=sync
    )
    stack = Stack(store, key, hub, accounts, sync, metrics, registry, audit, mesh)
    stack_ref.append(stack)
    return stack


@pytest.fixture
async def natsd(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(NatsServerConfig(), tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def mesh_of(tmp_path: Path, natsd: EmbeddedNats) -> AsyncIterator[Any]:
    """mesh_of(n) -> n connected stacks that see each other's heartbeats."""
    stacks: list[Stack] = []
    mesh = StaticMesh(set(), MESH)

    async def make(n: int) -> list[Stack]:
        made = [await make_stack(tmp_path, f"n{i}", mesh) for i in range(n)]
        for stack in made:
            await stack.connect(natsd.url)
        stacks.extend(made)
        await eventually(lambda: all(len(s.alive_peers()) == n - 1 for s in made))
        return made

    yield make
    for stack in stacks:
        if stack.replicator is not None:
            await stack.disconnect()
        await stack.store.close()


KEYS = DeviceKeys(ed25519=b"\x01" * 32, x25519=b"\x02" * 32)


async def login(stack: Stack, user: str, password: str = PASSWORD, device: str = "phone") -> str:
    result = await stack.accounts.login(
        user, password, device=device, device_name="phone", keys=KEYS
    )
    return result.token


def authenticates(stack: Stack, token: str) -> bool:
    try:
        stack.accounts.authenticate(token)
    except ClientError:
        return False
    return True


async def can_login(stack: Stack, user: str, password: str) -> bool:
    try:
        await login(stack, user, password, device="probe")
    except ClientError:
        return False
    return True


# -- live replication --------------------------------------------------------------------------


async def test_register_login_token_and_logout_replicate(mesh_of: Any) -> None:
    a, b, c = await mesh_of(3)
    await a.accounts.register("alice", PASSWORD)
    await eventually(lambda: b.accounts.user_exists("alice") and c.accounts.user_exists("alice"))

    # Registered at A, logs in at B with the same password; a wrong one is still refused.
    token_b = await login(b, "alice")
    assert not await can_login(b, "alice", "not the password")
    await eventually(lambda: authenticates(a, token_b) and authenticates(c, token_b))
    assert a.accounts.authenticate(token_b).device == "phone"
    await eventually(lambda: [d.device for d in c.accounts.devices("alice")] == ["phone"])

    # A token issued at A authenticates at B; logging it out at A revokes it at B.
    token_a = await login(a, "alice", device="laptop")
    await eventually(lambda: authenticates(b, token_a))
    await a.accounts.logout(token_a)
    await eventually(lambda: not authenticates(b, token_a) and not authenticates(c, token_a))
    with pytest.raises(ClientError) as exc:
        b.accounts.authenticate(token_a)
    assert exc.value.code == "auth_failed"
    assert authenticates(b, token_b)

    # logout_all at C reaches every node.
    assert await c.accounts.logout_all("alice") == 1
    await eventually(lambda: not authenticates(a, token_b) and not authenticates(b, token_b))
    await eventually(lambda: a.dump() == b.dump() == c.dump())


async def test_live_gap_pulls_from_sender(mesh_of: Any) -> None:
    a, b = await mesh_of(2)
    await a.sync.stop()  # A journals but does not publish: B misses this record
    await a.accounts.register("gap1", PASSWORD)
    await a.sync.start(a.nc)
    await a.accounts.register("gap2", PASSWORD)  # B sees seq 2 after 0: a gap, pulls from A
    await eventually(lambda: b.accounts.user_exists("gap1") and b.accounts.user_exists("gap2"))
    assert b.registry.get_sample_value("yanzi_fed_gaps_total") == 1
    assert b.sync.vv == a.sync.vv


# -- partition and heal ------------------------------------------------------------------------


async def test_partition_with_writes_on_both_sides_heals(mesh_of: Any, natsd: EmbeddedNats) -> None:
    a, b = await mesh_of(2)
    await a.accounts.register("alice", PASSWORD)
    token_a = await login(a, "alice")
    await eventually(lambda: authenticates(b, token_a))

    await b.disconnect()
    await a.accounts.register("carol", PASSWORD)
    await a.accounts.logout(token_a)
    await a.accounts.register("dup", "password on a")
    await b.accounts.register("dave", PASSWORD)
    token_b = await login(b, "alice")
    await b.accounts.register("dup", "password on b")
    token_dup = await login(b, "dup", "password on b")
    assert authenticates(b, token_a)  # B has not heard of the logout yet
    assert a.dump() != b.dump()

    await b.connect(natsd.url)
    await eventually(lambda: a.dump() == b.dump(), timeout=15)
    assert a.sync.vv == b.sync.vv
    for node in (a, b):
        assert node.accounts.user_exists("carol") and node.accounts.user_exists("dave")
        assert not authenticates(node, token_a)
        assert authenticates(node, token_b)
        assert authenticates(node, token_dup)  # devices and tokens survive a users conflict
    # The same registration of "dup" won everywhere (LWW by (ts, origin)).
    winners = [await can_login(n, "dup", "password on a") for n in (a, b)]
    losers = [await can_login(n, "dup", "password on b") for n in (a, b)]
    assert winners in ([True, True], [False, False])
    assert losers == [not w for w in winners]


# -- authenticity ------------------------------------------------------------------------------


async def test_forged_records_change_nothing(
    mesh_of: Any, natsd: EmbeddedNats, tmp_path: Path
) -> None:
    a, b = await mesh_of(2)
    outsider = SigningKey.generate()
    outsider_id = node_id_for(outsider.verify_key)
    user_row = canonical_json({"user": "mallory", "pwhash": "x", "created_ms": 1})
    before = b.dump()

    def record(origin: str, seq: int, signer: SigningKey, **kw: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "db": "users", "key": b"mallory", "value": user_row, "ts": 2**40,
            "origin": NodeId(origin), "seq": seq, **kw,
        }  # fmt: skip
        return AccountRecord(**fields).signed(signer).to_json()

    bad_sig = record(a.node_id, 50, outsider)  # claims origin A, signed by someone else
    tampered = record(a.node_id, 51, a.key)
    tampered["value"] = record(a.node_id, 51, a.key, value=b'{"user":"eve"}')["value"]
    foreign = record(outsider_id, 1, outsider)  # properly signed, origin not in the roster
    bad_db = {**record(a.node_id, 52, a.key), "db": "tokens_x"}

    subject = Subjects(MESH).accounts
    nc = await nats.connect(natsd.url)
    try:
        body = {"records": [bad_sig, tampered, foreign, bad_db]}
        await nc.publish(subject, seal("accounts", body, a.key))  # relayed by a member
        await nc.publish(subject, seal("accounts", {"records": [foreign]}, outsider))
        await nc.publish(subject, b"\x00" * 64 + b'{"not": "an envelope"}')
        await nc.flush()
    finally:
        await nc.close()
    # Delivered after the forgeries: once B has it, B has processed them.
    await a.accounts.register("marker", PASSWORD)
    await eventually(lambda: b.accounts.user_exists("marker"))

    assert not b.accounts.user_exists("mallory")
    after = b.dump()
    assert [k for k, _ in after["users"]] == [b"marker"]
    assert len(after["acct_log"]) == len(before["acct_log"]) + 1
    assert b.dropped("forged") == 3  # bad signature, tampered value, not an envelope
    assert b.dropped("not_in_roster") == 2  # foreign origin; outsider's envelope
    assert b.dropped("malformed") == 1  # a db outside the four account dbs
    assert {e["reason"] for _, e in b.audit.events} == {"forged", "not_in_roster", "malformed"}


# -- journal, LWW, restart (no NATS) -----------------------------------------------------------


def signed(
    origin: SigningKey, seq: int, ts: int, value: bytes | None, key: bytes = b"zed"
) -> AccountRecord:
    rec = AccountRecord("users", key, value, ts, node_id_for(origin.verify_key), seq)
    return rec.signed(origin)


async def test_lww_and_tombstones_converge_in_any_order(tmp_path: Path) -> None:
    x, y = SigningKey.generate(), SigningKey.generate()
    mesh = StaticMesh(set(), MESH)
    records = [
        signed(x, 1, 1000, b'{"user":"zed","v":1}'),
        signed(y, 1, 2000, None),  # a delete: the newest write, so it wins
        signed(x, 2, 1500, b'{"user":"zed","v":2}'),
        signed(y, 2, 1500, b'{"user":"zed","v":3}'),
        signed(x, 3, 3000, b'{"user":"tie","by":"x"}', key=b"tie"),
        signed(y, 3, 3000, b'{"user":"tie","by":"y"}', key=b"tie"),  # same ts: origin decides
    ]
    by_origin = {node_id_for(x.verify_key): b"x", node_id_for(y.verify_key): b"y"}
    tie_winner = by_origin[max(by_origin)]
    dumps = []
    orders = list(itertools.permutations(records))[::29]  # 25 of the 720, spread out
    for i, order in enumerate(orders):
        stack = await make_stack(tmp_path, f"p{i}", mesh)
        for rec in order:
            await stack.sync.apply([rec])
        dumps.append({db: stack.store.scan(db) for db in (*ACCOUNT_DBS, *SYNC_DBS)})
        assert stack.sync.vv.contiguous() == {records[0].origin: 3, records[1].origin: 3}
        await stack.store.close()
    assert all(d == dumps[0] for d in dumps)
    assert [k for k, _ in dumps[0]["users"]] == [b"tie"]  # the tombstone won for "zed"
    assert b'"by":"' + tie_winner + b'"' in dumps[0]["users"][0][1]
    assert len(dumps[0]["acct_log"]) == 6  # losers are journaled too


async def test_local_write_supersedes_a_future_remote_version(tmp_path: Path) -> None:
    remote = SigningKey.generate()
    stack = await make_stack(tmp_path, "a", StaticMesh({node_id_for(remote.verify_key)}, MESH))
    far = stack.sync.clock_ms() + 10**9  # a peer with a clock far ahead
    await stack.sync.apply([signed(remote, 1, far, b'{"user":"zed"}')])
    extra = stack.sync.record([Delete("users", b"zed")])
    await stack.store.commit([Delete("users", b"zed"), *extra])
    stack.sync.committed(extra)
    raw = stack.store.get("acct_ver", ver_key("users", b"zed"))
    assert raw is not None and canonical_json([far + 1, stack.node_id, 1]) == raw
    await stack.store.close()


async def test_restart_keeps_seqs_dense_and_journals_unjournaled_rows(tmp_path: Path) -> None:
    mesh = StaticMesh(set(), MESH)
    key = SigningKey.generate()
    # A standalone node (no journal) registers a user before it joins a mesh.
    store = Store(tmp_path / "a", dbs=(*ACCOUNT_DBS, *HUB_DBS, *SYNC_DBS), sync=False)
    await store.start()
    plain = Accounts(store, token_ttl_s=3600, min_password_len=8, pwhash_level="min")
    await plain.register("early", PASSWORD)
    await store.close()

    stack = await make_stack(tmp_path, "a", mesh, key)  # open() reconciles
    assert stack.sync.vv.contiguous() == {stack.node_id: 1}
    await stack.accounts.register("later", PASSWORD)
    token = await login(stack, "later")
    await stack.accounts.logout(token)
    assert await stack.sync.open() == 0  # idempotent
    await stack.store.close()

    again = await make_stack(tmp_path, "a", mesh, key)
    assert again.sync.vv.contiguous() == {again.node_id: 7}  # 1 + 1 + 3 + 2, no gaps
    await again.accounts.register("third", PASSWORD)
    assert again.sync.vv.contiguous() == {again.node_id: 8}
    assert [k for k, _ in again.store.scan("users")] == [b"early", b"later", b"third"]
    await again.store.close()


async def test_failed_commit_gives_its_seqs_back(tmp_path: Path) -> None:
    stack = await make_stack(tmp_path, "a", StaticMesh(set(), MESH))
    extra = stack.sync.record([Put("users", b"ghost", b"{}")])
    stack.sync.failed(extra)
    await stack.accounts.register("real", PASSWORD)
    assert stack.sync.vv.contiguous() == {stack.node_id: 1}
    assert stack.store.get("acct_ver", ver_key("users", b"ghost")) is None
    await stack.store.close()
