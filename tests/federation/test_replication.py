"""Replication between in-process hubs over a real nats-server (no yanzi subprocesses here;
tests/integration covers whole nodes). The device directory and fan-out are test doubles of
the hub's ports; NATS, LMDB and signatures are real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from crdt import (
    Content,
    ConvId,
    DeviceId,
    Dot,
    Op,
    Timestamp,
    UserId,
    b64encode,
    node_id_for,
    sign_envelope,
)
from federation.config import FederationConfig
from federation.envelope import seal
from federation.metrics import FederationMetrics
from federation.natsd import EmbeddedNats, NatsServerConfig
from federation.replicator import Replicator
from federation.subjects import Subjects
from node.hub import DBS, Hub, Identity
from node.protocol import Send
from node.store import Store
from tests.federation.doubles import Audit, Everyone, StaticMesh
from tests.helpers import eventually

MESH = "testmesh0000000a"


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[set[str], str]] = []

    def deliver(self, users: Any, frame: str) -> None:
        self.frames.append((set(users), frame))


@dataclass
class Stack:
    hub: Hub
    store: Store
    key: SigningKey
    local: set[str]
    audit: Audit
    metrics: FederationMetrics
    replicator: Replicator | None = None
    nc: Any = None
    ae_page_bytes: int = FederationConfig().ae_page_bytes

    async def connect(self, url: str, mesh: StaticMesh) -> None:
        self.nc = await nats.connect(url, no_echo=True, max_reconnect_attempts=-1)
        config = FederationConfig(
            ae_interval_s=3600, hello_interval_s=0.1, peer_timeout_s=5,
            ae_page_bytes=self.ae_page_bytes,
        )  # fmt: skip
        self.replicator = Replicator(
            nc=self.nc, hub=self.hub, key=self.key, mesh=mesh, config=config,
            metrics=self.metrics, audit=self.audit, region="r", urls=[],
            local_users=lambda: self.local,
        )  # fmt: skip
        await self.replicator.start()

    async def disconnect(self) -> None:
        assert self.replicator is not None
        await self.replicator.stop()
        await self.nc.close()
        self.replicator = None


async def make_stack(tmp: Path, name: str, local: set[str]) -> Stack:
    store = Store(tmp / name, dbs=DBS)
    await store.start()
    key = SigningKey.generate()
    hub = Hub(
        store=store, node_key=key, devices=Everyone(), fanout=Recorder(), recall_window_s=120,
        require_device_signatures=False, max_clock_drift_ms=60_000, max_group_members=100,
    )  # fmt: skip
    return Stack(hub, store, key, local, Audit(), FederationMetrics(CollectorRegistry()))


@pytest.fixture
async def natsd(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(NatsServerConfig(), tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


async def send(stack: Stack, user: str, cmid: str, conv: str, kind: str, **kw: Any) -> Op:
    ack = await stack.hub.submit(
        Identity(user=user, device="d1"), Send(id=None, cmid=cmid, conv=conv, kind=kind, **kw)
    )
    return ack.op


def view(stack: Stack, conv: str) -> bytes:
    return stack.hub.logs[ConvId(conv)].view().to_bytes()


async def test_live_replication_interest_and_partition_heal(
    tmp_path: Path, natsd: EmbeddedNats
) -> None:
    a = await make_stack(tmp_path, "a", {"alice"})
    b = await make_stack(tmp_path, "b", {"bob"})
    a.ae_page_bytes = b.ae_page_bytes = 16 * 1024  # small pages: the heal takes many of them
    mesh = StaticMesh({a.hub.node_id, b.hub.node_id}, MESH)
    await a.connect(natsd.url, mesh)
    await b.connect(natsd.url, mesh)
    assert a.replicator and b.replicator
    await eventually(lambda: a.replicator.alive_peers() and b.replicator.alive_peers())

    # alice (homed at A) creates a group with bob (homed at B): the interest notice makes B
    # host the conversation and pull it.
    await send(a, "alice", "c1", "g1", "create", attrs={"type": "group", "members": ["bob"]})
    await eventually(lambda: ConvId("g1") in b.hub.logs)
    for i in range(20):
        await send(a, "alice", f"m{i}", "g1", "message", body=f"hi {i}".encode())
    await send(b, "bob", "r1", "g1", "message", body=b"hello from b")
    await eventually(lambda: len(a.hub.logs[ConvId("g1")]) == 22 == len(b.hub.logs[ConvId("g1")]))
    assert view(a, "g1") == view(b, "g1")
    # bob's sessions at B were handed alice's messages live
    frames = b.hub.fanout.frames  # type: ignore[attr-defined]
    assert any("bob" in users and b64encode(b"hi 19") in f for users, f in frames)

    # Partition: B drops off NATS; both sides keep writing.
    await b.disconnect()
    for i in range(300):
        await send(a, "alice", f"pa{i}", "g1", "message", body=b"a side")
    for i in range(300):
        await send(b, "bob", f"pb{i}", "g1", "message", body=b"b side")
    assert view(a, "g1") != view(b, "g1")

    # Heal: B reconnects; peers reappear and anti-entropy converges both ways.
    await b.connect(natsd.url, mesh)
    await eventually(lambda: b.replicator and b.replicator.alive_peers(), timeout=10)
    await a.replicator.ae_round()
    assert b.replicator is not None
    await b.replicator.ae_round()
    await eventually(lambda: len(a.hub.logs[ConvId("g1")]) == 622 == len(b.hub.logs[ConvId("g1")]))
    assert view(a, "g1") == view(b, "g1")
    assert a.hub.logs[ConvId("g1")].version_vector == b.hub.logs[ConvId("g1")].version_vector
    # 300 ops of ~700 bytes each way do not fit one 16 KiB page: the pulls went page by page
    # (an ae_rep with more=true, then the next), and every page stayed within its budget.
    pages = [
        s.metrics.envelopes_in.labels("ae_rep")._value.get() for s in (a, b)
    ]  # digest replies are ae_rep too: one per round, so > 3 means op pages were paged
    assert min(pages) > 3, pages
    assert max(s.metrics.ae_ops._value.get() for s in (a, b)) > 0

    await a.disconnect()
    await b.disconnect()
    await a.store.close()
    await b.store.close()


async def test_envelopes_from_outside_the_roster_change_nothing(
    tmp_path: Path, natsd: EmbeddedNats
) -> None:
    a = await make_stack(tmp_path, "a", {"alice"})
    mesh = StaticMesh({a.hub.node_id}, MESH)
    await a.connect(natsd.url, mesh)
    await send(a, "alice", "c1", "g1", "create", attrs={"type": "group"})
    assert a.replicator is not None
    await eventually(lambda: ConvId("g1") in a.replicator.hosted)
    await a.nc.flush()
    before = view(a, "g1")

    intruder = SigningKey.generate()
    content = Content(
        conv=ConvId("g1"), kind="message", author=UserId("alice"), device=DeviceId("d1"),
        body=b"forged",
    )  # fmt: skip
    forged = sign_envelope(
        Op(content=content, hlc=Timestamp(1, 0), dot=Dot(node_id_for(intruder.verify_key), 1)),
        intruder,
    )
    nc = await nats.connect(natsd.url)
    subject = Subjects(MESH).ops("g1")
    await nc.publish(subject, seal("ops", {"conv": "g1", "ops": [forged.to_json()]}, intruder))
    # a roster member replaying a tampered envelope: signature no longer verifies
    tampered = bytearray(seal("ops", {"conv": "g1", "ops": []}, a.key))
    tampered[-3] ^= 1
    await nc.publish(subject, bytes(tampered))
    await nc.flush()
    await eventually(
        lambda: (
            a.metrics.dropped.labels("not_in_roster")._value.get() >= 1
            and a.metrics.dropped.labels("forged")._value.get() >= 1
        )
    )
    assert view(a, "g1") == before
    assert {e for e, _ in a.audit.events} == {"federation_drop"}
    await nc.close()
    await a.disconnect()
    await a.store.close()
    await asyncio.sleep(0)
