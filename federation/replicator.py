"""Replication of conversation ops between mesh nodes over NATS.

Live path: each op this node originates is batched per conversation (a few ms) into one signed
envelope on the conversation's subject; only nodes hosting that conversation subscribe
(interest-based partial replication). Repair path: pull anti-entropy over version vectors by
request/reply to one peer at a time, paged below NATS max_payload — on a detected gap, when a peer
(re)appears, when interest in a conversation starts, and periodically with jitter.

LMDB (through the hub) stays the source of truth; NATS only carries envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nacl.signing import SigningKey

from crdt import (
    ConvId,
    CrdtError,
    DecodeError,
    Op,
    SignatureError,
    VersionVector,
    canonical_json,
    node_id_for,
    verify_envelope,
)
from crdt.signing import verify_key_for
from federation.config import FederationConfig
from federation.envelope import Envelope, EnvelopeError, open_envelope, seal
from federation.metrics import FederationMetrics
from federation.subjects import Subjects
from node.hub import Hub

log = logging.getLogger(__name__)
INTEREST_KINDS = frozenset({"create", "member_add"})


class MeshView(Protocol):
    @property
    def mesh_id(self) -> str: ...

    def is_member(self, node_id: str) -> bool: ...


class Audit(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


@dataclass(slots=True)
class Peer:
    node_id: str
    region: str = ""
    urls: list[str] = field(default_factory=list)
    last_seen: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def vv_digest(vv: VersionVector) -> str:
    return hashlib.sha256(canonical_json(vv.to_json())).hexdigest()[:32]


class Replicator:
    def __init__(
        self,
        *,
        nc: Any,
        hub: Hub,
        key: SigningKey,
        mesh: MeshView,
        config: FederationConfig,
        metrics: FederationMetrics,
        audit: Audit,
        region: str,
        urls: list[str],
        local_users: Callable[[], Iterable[str]],
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.nc = nc
        self.hub = hub
        self.key = key
        self.node_id = node_id_for(key.verify_key)
        self.mesh = mesh
        self.config = config
        self.metrics = metrics
        self.audit = audit
        self.region = region
        self.urls = urls
        self.local_users = local_users
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.subjects = Subjects(mesh.mesh_id)
        self.peers: dict[str, Peer] = {}
        #: origin node -> replication lag of the latest live op from it (its HLC time there ->
        #: committed here), for `yanzi mesh status`; the histogram has the distribution.
        self.live_lag_s: dict[str, float] = {}
        self.extra_hello: Callable[[], dict[str, Any]] = dict
        self.on_hello: list[Callable[[Envelope], None]] = []
        #: Called with a roster peer's id when it (re)appears in the heartbeats.
        self.on_peer_up: list[Callable[[str], None]] = []
        #: Extra request kinds answered on this node's subject (e.g. account sync):
        #: kind -> handler(envelope) -> (reply kind, reply body); may raise DecodeError.
        self.request_handlers: dict[str, Callable[[Envelope], tuple[str, dict[str, Any]]]] = {}
        self._subs: dict[ConvId, Any] = {}
        self._outbox: dict[ConvId, list[Op]] = {}
        self._outbox_wake = asyncio.Event()
        self._interest_out: list[tuple[ConvId, list[str]]] = []
        self._intake: asyncio.Queue[tuple[str, list[Op]]] = asyncio.Queue(maxsize=1024)
        self._repairs: asyncio.Queue[tuple[ConvId, str | None]] = asyncio.Queue()
        self._repairing: set[tuple[ConvId, str | None]] = set()
        self._ae_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._node_subs: list[Any] = []

    @property
    def max_payload(self) -> int:
        return int(getattr(self.nc, "max_payload", 0) or 1 << 20)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        nc, s = self.nc, self.subjects
        self._node_subs = [
            await nc.subscribe(s.node(self.node_id), cb=self._on_request),
            await nc.subscribe(s.interest, cb=self._on_interest),
            await nc.subscribe(s.hello, cb=self._on_hello),
        ]
        for conv in list(self.hub.logs):
            await self.host(conv)
        self.hub.on_local_op.append(self.on_local_op)
        for name, loop in (
            ("fed-outbox", self._outbox_loop),
            ("fed-intake", self._intake_loop),
            ("fed-repair", self._repair_loop),
            ("fed-ae", self._ae_loop),
            ("fed-hello", self._hello_loop),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.hub.on_local_op.remove(self.on_local_op)
        await self._flush_outbox()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def hosted(self) -> frozenset[ConvId]:
        return frozenset(self._subs)

    def alive_peers(self) -> list[Peer]:
        horizon = self.monotonic() - self.config.peer_timeout_s
        return [
            p
            for p in self.peers.values()
            if p.last_seen >= horizon and self.mesh.is_member(p.node_id)
        ]

    # -- hosting ------------------------------------------------------------------------------

    async def host(self, conv: ConvId) -> None:
        """Subscribe to a conversation's live subject (idempotent)."""
        if conv in self._subs:
            return
        self._subs[conv] = await self.nc.subscribe(self.subjects.ops(conv), cb=self._on_ops)
        self.metrics.hosted.set(len(self._subs))

    def request_repair(self, conv: ConvId, peer: str | None = None) -> None:
        """Queue an anti-entropy pull of `conv` (from `peer`, or every live peer)."""
        item = (conv, peer)
        if item not in self._repairing:
            self._repairing.add(item)
            self._repairs.put_nowait(item)

    # -- live path: out -----------------------------------------------------------------------

    def on_local_op(self, op: Op) -> None:
        self._outbox.setdefault(op.conv, []).append(op)
        if op.kind in INTEREST_KINDS:
            users = self._added_users(op)
            if users:
                self._interest_out.append((op.conv, users))
        self._outbox_wake.set()

    @staticmethod
    def _added_users(op: Op) -> list[str]:
        if op.kind == "member_add":
            return [op.target]
        members = op.content.attrs.get("members", [])
        return [op.author, *members] if isinstance(members, list) else [op.author]

    async def _outbox_loop(self) -> None:
        while True:
            await self._outbox_wake.wait()
            # Let a burst accumulate so one envelope (one signature) carries many ops.
            await asyncio.sleep(self.config.batch_delay_ms / 1000)
            self._outbox_wake.clear()
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        interest, self._interest_out = self._interest_out, []
        for conv, ops in outbox.items():
            if conv not in self._subs:
                await self.host(conv)
            for start in range(0, len(ops), self.config.max_batch_ops):
                await self._publish_ops(conv, ops[start : start + self.config.max_batch_ops])
        for conv, users in interest:
            await self._publish(self.subjects.interest, "interest", {"conv": conv, "users": users})

    async def _publish_ops(self, conv: ConvId, ops: list[Op]) -> None:
        body = {"conv": conv, "ops": [op.to_json() for op in ops]}
        data = seal("ops", body, self.key)
        if len(data) > self.max_payload and len(ops) > 1:
            half = len(ops) // 2
            await self._publish_ops(conv, ops[:half])
            await self._publish_ops(conv, ops[half:])
            return
        await self._send(self.subjects.ops(conv), "ops", data)
        self.metrics.ops_out.inc(len(ops))

    async def _publish(self, subject: str, kind: str, body: dict[str, Any]) -> None:
        await self._send(subject, kind, seal(kind, body, self.key))

    async def _send(self, subject: str, kind: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
            self.metrics.envelopes_out.labels(kind).inc()
        except Exception as exc:  # NATS down: anti-entropy repairs whatever is lost
            log.warning("publish %s failed: %s", kind, exc)

    # -- live path: in ------------------------------------------------------------------------

    def _open(self, data: bytes, *, require_member: bool = True) -> Envelope | None:
        try:
            env = open_envelope(data, max_bytes=max(self.max_payload, 1 << 20))
        except EnvelopeError as exc:
            self._drop("forged", error=str(exc))
            return None
        self.metrics.envelopes_in.labels(env.kind).inc()
        if require_member and not self.mesh.is_member(env.sender):
            self._drop("not_in_roster", sender=env.sender, kind=env.kind)
            return None
        return env

    def _drop(self, reason: str, **fields: Any) -> None:
        self.metrics.dropped.labels(reason).inc()
        self.audit.record("federation_drop", reason=reason, node=self.node_id, **fields)

    async def _on_ops(self, msg: Any) -> None:
        env = self._open(msg.data)
        if env is None or env.sender == self.node_id or env.kind != "ops":
            return
        ops = self._parse_ops(env, require_origin=env.sender)
        if ops:
            await self._intake.put((env.sender, ops))

    def _parse_ops(self, env: Envelope, *, require_origin: str | None) -> list[Op]:
        """Decode the ops of a verified envelope. Live batches must come from their origin
        (the envelope signature then vouches for them); relayed ops must each carry a valid
        origin signature from a roster member."""
        conv, raw_ops = env.body.get("conv"), env.body.get("ops")
        if not isinstance(conv, str) or not isinstance(raw_ops, list):
            self._drop("malformed", sender=env.sender)
            return []
        ops: list[Op] = []
        for raw in raw_ops:
            try:
                op = Op.from_json(raw)
            except DecodeError as exc:
                self._drop("malformed", sender=env.sender, error=str(exc))
                continue
            if op.conv != conv:
                self._drop("malformed", sender=env.sender, error="op for another conversation")
                continue
            origin = op.dot.origin
            if require_origin is not None and origin != require_origin:
                self._drop("forged", sender=env.sender, error="live op from another origin")
                continue
            if origin != env.sender:
                if not self.mesh.is_member(origin):
                    self._drop("not_in_roster", sender=env.sender, origin=origin)
                    continue
                try:
                    verify_envelope(op, verify_key_for(origin))
                except (SignatureError, DecodeError):
                    self._drop("forged", sender=env.sender, origin=origin, op_id=op.op_id)
                    continue
            ops.append(op)
        return ops

    async def _intake_loop(self) -> None:
        """Apply received batches; drain what is queued so one commit covers many envelopes."""
        while True:
            sender, ops = await self._intake.get()
            batches = [(sender, ops)]
            while not self._intake.empty() and len(batches) < 64:
                batches.append(self._intake.get_nowait())
            try:
                await self._apply_live(batches)
            except Exception:
                log.exception("applying remote ops failed; anti-entropy will retry")

    async def _apply_live(self, batches: list[tuple[str, list[Op]]]) -> None:
        # A dot is a gap only if neither our log nor anything in this intake holds the dot
        # before it (several envelopes of one conversation often arrive in one intake).
        arriving = {(op.conv, op.dot.origin, op.dot.seq) for _, ops in batches for op in ops}
        for sender, ops in batches:
            for op in ops:
                mlog = self.hub.logs.get(op.conv)
                top = 0 if mlog is None else mlog.next_seq(op.dot.origin) - 1
                previous = (op.conv, op.dot.origin, op.dot.seq - 1)
                if op.dot.seq > top + 1 and previous not in arriving:
                    self.metrics.gaps.inc()
                    self.request_repair(op.conv, sender)
        await self._accept([op for _, ops in batches for op in ops], source="live")

    async def _accept(self, ops: list[Op], *, source: str) -> int:
        if not ops:
            return 0
        result = await self.hub.accept_remote(ops)
        now_ms = time.time_ns() // 1_000_000
        for op in result.accepted:
            lag_s = max(0.0, (now_ms - op.hlc.l) / 1000)
            self.metrics.lag.observe(lag_s)
            if source == "live":  # a repaired op is old by design: its age is not a lag
                self.live_lag_s[op.dot.origin] = lag_s
            if op.conv not in self._subs:
                await self.host(op.conv)
        for op, reason in result.refused:
            self._drop("refused", origin=op.dot.origin, op_id=op.op_id, error=reason)
        self.metrics.ops_in.inc(len(result.accepted))
        self.metrics.duplicates.inc(result.duplicates)
        if source == "ae":
            self.metrics.ae_ops.inc(len(result.accepted))
        return len(result.accepted)

    # -- interest -----------------------------------------------------------------------------

    async def _on_interest(self, msg: Any) -> None:
        env = self._open(msg.data)
        if env is None or env.sender == self.node_id:
            return
        conv, users = env.body.get("conv"), env.body.get("users")
        if not isinstance(conv, str) or not isinstance(users, list):
            self._drop("malformed", sender=env.sender)
            return
        local = set(self.local_users())
        if any(isinstance(u, str) and u in local for u in users):
            await self.host(ConvId(conv))
            self.request_repair(ConvId(conv), env.sender)

    async def discover_user(self, user: str) -> int:
        """Ask live peers which conversations `user` is in; host and pull each. For a user
        who roams to this node: the node fetches the history it did not host, and returns
        once it has it (callers bound the wait), so the user's first sync here is complete."""
        found: set[str] = set()
        for peer in self.alive_peers():
            reply = await self._request(peer.node_id, "convs_req", {"user": user})
            if reply is None or reply.kind != "convs_rep":
                continue
            convs = reply.body.get("convs")
            theirs = {c for c in convs if isinstance(c, str)} if isinstance(convs, list) else set()
            for conv in sorted(theirs):
                await self.host(ConvId(conv))
                try:
                    await self.pull(ConvId(conv), peer.node_id)
                except Exception:
                    log.exception("pulling %s from %s failed; queued for repair", conv, peer)
                    self.request_repair(ConvId(conv), peer.node_id)
            found |= theirs
        return len(found)

    # -- anti-entropy -------------------------------------------------------------------------

    async def _request(self, peer: str, kind: str, body: dict[str, Any]) -> Envelope | None:
        try:
            msg = await self.nc.request(
                self.subjects.node(peer), seal(kind, body, self.key),
                timeout=self.config.request_timeout_s,
            )  # fmt: skip
        except Exception as exc:
            log.info("request %s to %s failed: %s", kind, peer[:8], exc)
            return None
        self.metrics.envelopes_out.labels(kind).inc()
        env = self._open(msg.data)
        if env is None or env.sender != peer:
            return None
        return env

    async def pull(self, conv: ConvId, peer: str) -> int:
        """Pull every op of `conv` that `peer` has and we lack, page by page."""
        total = 0
        for _ in range(100_000):  # bounded; each page makes progress or stops
            mlog = self.hub.logs.get(conv)
            vv = mlog.version_vector if mlog is not None else VersionVector()
            reply = await self._request(
                peer, "ae_req",
                {"conv": conv, "vv": vv.to_json(), "max_bytes": self.config.ae_page_bytes},
            )  # fmt: skip
            if reply is None or reply.kind != "ae_rep":
                return total
            ops = self._parse_ops(reply, require_origin=None)
            added = await self._accept(ops, source="ae")
            total += added
            if not reply.body.get("more") or not ops:
                return total
        return total

    def _answer_ae(self, body: dict[str, Any]) -> dict[str, Any]:
        conv = body.get("conv")
        max_bytes = body.get("max_bytes")
        if not isinstance(conv, str) or type(max_bytes) is not int:
            raise DecodeError("ae_req needs conv and max_bytes")
        remote = VersionVector.from_json(body.get("vv"))
        budget = min(max_bytes, self.max_payload - 4096, self.config.ae_page_bytes)
        mlog = self.hub.logs.get(ConvId(conv))
        if mlog is None:
            return {"conv": conv, "ops": [], "more": False}
        page: list[dict[str, Any]] = []
        used = 0
        missing = mlog.missing_for(remote)
        for op in missing:
            wire = op.to_json()
            size = len(canonical_json(wire))
            if page and used + size > budget:
                break
            page.append(wire)
            used += size + 1  # and its comma
        return {"conv": conv, "ops": page, "more": len(page) < len(missing)}

    def _answer_digest(self, body: dict[str, Any]) -> dict[str, Any]:
        convs = body.get("convs")
        if not isinstance(convs, dict):
            raise DecodeError("digest needs convs")
        differ = [
            conv
            for conv, digest in convs.items()
            if conv in self.hub.logs and vv_digest(self.hub.logs[conv].version_vector) != digest
        ]
        return {"differ": differ}

    async def _on_request(self, msg: Any) -> None:
        env = self._open(msg.data)
        if env is None or not msg.reply:
            return
        try:
            if env.kind == "ae_req":
                if "convs" in env.body:
                    reply_kind, body = "ae_rep", self._answer_digest(env.body)
                else:
                    reply_kind, body = "ae_rep", self._answer_ae(env.body)
            elif env.kind == "convs_req":
                user = env.body.get("user")
                if not isinstance(user, str):
                    raise DecodeError("convs_req needs user")
                reply_kind, body = "convs_rep", {"convs": self.hub.conversations_of(user)}
            elif env.kind in self.request_handlers:
                reply_kind, body = self.request_handlers[env.kind](env)
            else:
                return
        except (DecodeError, CrdtError) as exc:
            self._drop("malformed", sender=env.sender, error=str(exc))
            return
        await self.nc.publish(msg.reply, seal(reply_kind, body, self.key))
        self.metrics.envelopes_out.labels(reply_kind).inc()

    async def ae_round(self, peers: Iterable[Peer] | None = None) -> int:
        """Compare version-vector digests of every hosted conversation with each live peer,
        then pull the ones that differ."""
        self.metrics.ae_rounds.inc()
        total = 0
        for peer in list(peers if peers is not None else self.alive_peers()):
            convs = sorted(self._subs)
            for start in range(0, len(convs), 500):
                chunk = convs[start : start + 500]
                digests = {
                    c: vv_digest(self.hub.logs[c].version_vector) if c in self.hub.logs else ""
                    for c in chunk
                }
                reply = await self._request(peer.node_id, "ae_req", {"convs": digests})
                if reply is None:
                    break
                differ = reply.body.get("differ", [])
                for conv in differ if isinstance(differ, list) else []:
                    if isinstance(conv, str):
                        total += await self.pull(ConvId(conv), peer.node_id)
        return total

    async def _repair_loop(self) -> None:
        while True:
            conv, peer = await self._repairs.get()
            self._repairing.discard((conv, peer))
            targets = [peer] if peer else [p.node_id for p in self.alive_peers()]
            for node in targets:
                try:
                    await self.pull(conv, node)
                except Exception:
                    log.exception("repair of %s from %s failed", conv, node[:8])

    async def _ae_loop(self) -> None:
        while True:
            delay = self.config.ae_interval_s * (0.5 + self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ae_now.wait(), delay)
            self._ae_now.clear()
            try:
                repaired = await self.ae_round()
                if repaired:
                    log.info("anti-entropy repaired %d ops", repaired)
            except Exception:
                log.exception("anti-entropy round failed")

    def trigger_ae(self) -> None:
        """Run an anti-entropy round now (after a reconnect, or when a peer reappears)."""
        self._ae_now.set()

    # -- hello / peers ------------------------------------------------------------------------

    async def _hello_loop(self) -> None:
        while True:
            # Until the HTTP listener is bound a port-0 node knows no real URL: say none.
            urls = [u for u in self.urls if not u.endswith(":0")]
            body = {"region": self.region, "urls": urls, "ts": time.time_ns() // 1_000_000}
            body.update(self.extra_hello())
            await self._publish(self.subjects.hello, "hello", body)
            self.metrics.peers_up.set(len(self.alive_peers()))
            await asyncio.sleep(self.config.hello_interval_s)

    async def _on_hello(self, msg: Any) -> None:
        env = self._open(msg.data, require_member=False)
        if env is None or env.sender == self.node_id:
            return
        for callback in self.on_hello:
            callback(env)
        if not self.mesh.is_member(env.sender):
            return
        now = self.monotonic()
        peer = self.peers.get(env.sender)
        returning = peer is None or peer.last_seen < now - self.config.peer_timeout_s
        if peer is None:
            peer = self.peers[env.sender] = Peer(env.sender)
        peer.last_seen = now
        region, urls = env.body.get("region"), env.body.get("urls")
        peer.region = region if isinstance(region, str) else ""
        peer.urls = [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
        peer.info = dict(env.body)
        if returning:
            log.info("peer %s (%s) is up", env.sender[:8], peer.region)
            self.trigger_ae()
            for peer_up in self.on_peer_up:
                peer_up(env.sender)


def roster_members(mesh: MeshView, peers: Mapping[str, Peer]) -> list[str]:
    return sorted(p for p in peers if mesh.is_member(p))
