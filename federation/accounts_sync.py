"""Replication of users, devices and tokens between mesh nodes (issue 4, item 4): a user
registered at node A can log in at node B, and a token issued at A authenticates at B.

**Journal.** Every account write a node makes (register → ``users`` Put; login → ``devices`` /
``tokens`` / ``user_tokens`` Puts; logout, logout_all, token purge → Deletes) becomes a record
signed by this node, committed in the *same* LMDB transaction as the write itself (the
`node.accounts.Journal` hook)::

    record = {"db", "key": b64url, "value": b64url | null (a delete), "ts": ms,
              "origin": node id, "seq": n, "sig": b64url}
    sig    = Ed25519(origin key, b"yanzi-acct-v1\\x00" + canonical_json(record without "sig"))

``seq`` is dense per origin (this node's own counter, re-derived at start from its journal), so
the records a node holds form a set of dots and a `crdt.VersionVector` (with gaps) summarises it.

    acct_log  origin NUL seq (8 bytes big-endian) -> canonical record
    acct_ver  db NUL key                          -> canonical [ts, origin, seq] of the winner

``acct_ver`` stores ``seq`` besides ``[ts, origin]``: it breaks the (impossible for honest
origins) tie of one origin writing a key twice in one ms, and it names the winner's journal
entry, which the start-up reconciliation needs.

**Last writer wins** per (db, key) by ``(ts, origin, seq)``; deletes are tombstones that win by
the same rule. A local write is stamped ``max(now, winner.ts + 1)``, so it always supersedes the
version this node holds (a peer's fast clock cannot make a key unwritable here, and the local
state and the mesh agree on who won). Versions decided but not yet committed are kept in memory
(`_inflight`) so a local write and a concurrent remote apply never order differently in LMDB
than in the LWW rule.

**Live path.** Once a local commit is durable its records are published (batched, split below
``max_payload``) in an ``accounts`` envelope on ``Subjects.accounts``; every node subscribes.
On receipt the envelope sender must be a roster member; each record must verify with its
origin's key, its origin must be a member, and its db one of the four account dbs — anything
else is dropped, counted and audited. Every valid record is journaled (its dot added) even when
it loses LWW, so anti-entropy converges; the journal entries, the winning data writes and their
versions go to LMDB in one commit before the in-memory version vector moves.

**Anti-entropy.** ``acct_req {"vv", "max_bytes"}`` to one peer (on its ``node.<id>`` subject,
dispatched by the replicator) → ``acct_rep {"records", "more"}``: the journal records the
requester lacks, paged below ``ae_page_bytes`` and the server's ``max_payload``; the requester
applies each page and asks again. It runs when a peer (re)appears, after a NATS reconnect, on a
gap in a live stream (pull from the sender), periodically with jitter, and when a request shows
the requester holds records we lack (so one side reconnecting heals both directions).

**Known limitations.**

* Two nodes registering the same username during a partition: after the heal the ``users``
  record with the greater ``(ts, origin)`` survives everywhere; the other registrant's password
  stops working (their devices and tokens stay, keyed by the same username).
* Journal entries and tombstone versions are never compacted: every login adds three records.
* A node restored from an old backup re-derives its counter from that backup and may reuse seqs
  its peers already hold; those writes do not replicate (peers see a known dot).
* Records from an origin later revoked stay applied; new ones are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from crdt import (
    DecodeError,
    Dot,
    NodeId,
    VersionVector,
    b64decode,
    b64encode,
    canonical_json,
    check_id,
    node_id_for,
    strict_loads,
)
from crdt.signing import verify_key_for
from federation.config import FederationConfig
from federation.envelope import Envelope, EnvelopeError, open_envelope, seal
from federation.metrics import FederationMetrics
from federation.subjects import Subjects
from node.accounts import DBS as ACCOUNT_DBS
from node.store import Delete, Put, Write

__all__ = ["DBS", "AccountRecord", "AccountsSync"]

log = logging.getLogger(__name__)

#: The LMDB databases this module adds to the node's store.
DBS: Final[tuple[str, ...]] = ("acct_log", "acct_ver")
DOMAIN: Final = b"yanzi-acct-v1\x00"
REPLICATED_DBS: Final[frozenset[str]] = frozenset(ACCOUNT_DBS)
MAX_KEY_BYTES: Final = 511  # LMDB's default max key size
MAX_VALUE_BYTES: Final = 64 * 1024
MAX_SEQ: Final = 2**53 - 1
_SEP: Final = b"\x00"
_SCAN_PAGE: Final = 4096

Version = tuple[int, str, int]  # (ts, origin, seq): the LWW order


class StoreLike(Protocol):
    async def commit(self, writes: Sequence[Write]) -> None: ...
    def get(self, db: str, key: bytes) -> bytes | None: ...
    def scan(
        self,
        db: str,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]: ...


class MeshView(Protocol):
    @property
    def mesh_id(self) -> str: ...

    def is_member(self, node_id: str) -> bool: ...


class Audit(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


# -- records (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRecord:
    db: str
    key: bytes
    value: bytes | None  # None: a delete (tombstone)
    ts: int
    origin: NodeId
    seq: int
    sig: bytes = b""

    @property
    def dot(self) -> Dot:
        return Dot(self.origin, self.seq)

    @property
    def version(self) -> Version:
        return (self.ts, self.origin, self.seq)

    def _unsigned(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "key": b64encode(self.key),
            "value": None if self.value is None else b64encode(self.value),
            "ts": self.ts,
            "origin": self.origin,
            "seq": self.seq,
        }

    def signing_bytes(self) -> bytes:
        return DOMAIN + canonical_json(self._unsigned())

    def signed(self, key: SigningKey) -> AccountRecord:
        sig = bytes(key.sign(self.signing_bytes()).signature)
        return AccountRecord(self.db, self.key, self.value, self.ts, self.origin, self.seq, sig)

    def to_json(self) -> dict[str, Any]:
        return {**self._unsigned(), "sig": b64encode(self.sig)}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: object) -> AccountRecord:
        """Parse the wire form; raises DecodeError. Does not check the signature."""
        fields = {"db", "key", "value", "ts", "origin", "seq", "sig"}
        if not isinstance(value, dict) or set(value) != fields:
            raise DecodeError(f"an account record is an object with exactly {sorted(fields)}")
        db, ts, seq, raw = value["db"], value["ts"], value["seq"], value["value"]
        if db not in REPLICATED_DBS:
            raise DecodeError(f"account records may only write {sorted(REPLICATED_DBS)}")
        if type(ts) is not int or not 0 <= ts <= MAX_SEQ:
            raise DecodeError("record ts must be an integer >= 0")
        if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
            raise DecodeError("record seq must be an integer >= 1")
        key = b64decode(value["key"], max_bytes=MAX_KEY_BYTES)
        if not key:
            raise DecodeError("record key must not be empty")
        data = None if raw is None else b64decode(raw, max_bytes=MAX_VALUE_BYTES)
        if data is not None and not isinstance(strict_loads(data), dict):
            raise DecodeError("record value must be a JSON object")
        sig = b64decode(value["sig"], max_bytes=64)
        origin = NodeId(check_id(value["origin"], "record origin"))
        return cls(db, key, data, ts, origin, seq, sig)

    def verify(self) -> None:
        """Raise DecodeError unless `sig` is the origin's signature over this record."""
        try:
            verify_key_for(self.origin).verify(self.signing_bytes(), self.sig)
        except (BadSignatureError, ValueError, TypeError) as exc:
            raise DecodeError(f"bad account record signature: {exc}") from None


def log_key(origin: str, seq: int) -> bytes:
    return origin.encode("ascii") + _SEP + struct.pack(">Q", seq)


def ver_key(db: str, key: bytes) -> bytes:
    return db.encode("ascii") + _SEP + key


def _decode_version(raw: bytes) -> Version:
    ts, origin, seq = strict_loads(raw)
    return (int(ts), str(origin), int(seq))


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the syncer --------------------------------------------------------------------------------


class AccountsSync:
    """Journal (the `node.accounts.Journal` hook) and replicator of account records.

    Lifecycle: ``await open()`` (load the journal, reconcile), attach as ``accounts.journal``,
    register `request_handlers()` and `peer_up` with the replicator, ``await start(nc)``,
    ``await stop()``. Journaling works whether or not it is started; while stopped nothing is
    published and anti-entropy repairs the rest later.
    """

    def __init__(
        self,
        *,
        store: StoreLike,
        key: SigningKey,
        mesh: MeshView,
        config: FederationConfig,
        metrics: FederationMetrics,
        audit: Audit,
        peers: Callable[[], Iterable[str]] = lambda: (),
        clock_ms: Callable[[], int] = _wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.node_id = node_id_for(key.verify_key)
        self.mesh = mesh
        self.config = config
        self.metrics = metrics
        self.audit = audit
        self.peers = peers
        self.clock_ms = clock_ms
        self.rng = rng or random.Random()
        self.subjects = Subjects(mesh.mesh_id)
        self.vv = VersionVector()  # dots of every durable journal entry
        self._next_seq = 1
        self._pending: dict[int, AccountRecord] = {}  # own records recorded, not yet settled
        self._inflight: dict[bytes, Version] = {}  # versions decided, maybe not yet durable
        self._apply_lock = asyncio.Lock()
        self._outbox: list[AccountRecord] = []
        self._outbox_wake = asyncio.Event()
        self._pulls: asyncio.Queue[str] = asyncio.Queue()
        self._pulling: set[str] = set()
        self._ae_now = asyncio.Event()
        self._nc: Any = None
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = False

    @property
    def max_payload(self) -> int:
        return int(getattr(self._nc, "max_payload", 0) or 1 << 20)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> int:
        """Load the journal; journal any account data it does not explain (written before the
        node had a mesh, or without the hook). Returns how many records that took."""
        if self._opened:
            return 0
        self._opened = True
        for key, _ in self._scan_all("acct_log"):
            self.vv.add(Dot(NodeId(key[:-9].decode("ascii")), struct.unpack(">Q", key[-8:])[0]))
        self._next_seq = self.vv.top(self.node_id) + 1
        return await self._reconcile()

    async def start(self, nc: Any) -> None:
        await self.open()
        self._nc = nc
        self._sub = await nc.subscribe(self.subjects.accounts, cb=self._on_live)
        for name, loop in (
            ("acct-outbox", self._outbox_loop),
            ("acct-pull", self._pull_loop),
            ("acct-ae", self._ae_loop),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        with contextlib.suppress(Exception):
            await self._flush_outbox()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._nc = None
        self._pulling.clear()
        self._pulls = asyncio.Queue()

    def request_handlers(self) -> dict[str, Callable[[Envelope], tuple[str, dict[str, Any]]]]:
        """Kinds this module answers on the node's request subject (registered by the service
        with the replicator, which checks the requester is a roster member)."""
        return {"acct_req": self.answer}

    # -- journal hook (called by Accounts around its commits) --------------------------------

    def record(self, writes: Sequence[Write]) -> list[Write]:
        """Journal entries and versions for `writes`, to commit in the same transaction."""
        extra: list[Write] = []
        now = self.clock_ms()
        for w in writes:
            if w.db not in REPLICATED_DBS:
                continue
            vkey = ver_key(w.db, w.key)
            current = self._version(vkey)
            ts = now if current is None else max(now, current[0] + 1)
            value = w.value if isinstance(w, Put) else None
            rec = AccountRecord(w.db, w.key, value, ts, self.node_id, self._next_seq)
            rec = rec.signed(self.key)
            self._next_seq += 1
            self._pending[rec.seq] = rec
            self._inflight[vkey] = rec.version
            extra.append(Put("acct_log", log_key(rec.origin, rec.seq), rec.encode()))
            extra.append(Put("acct_ver", vkey, canonical_json(list(rec.version))))
        return extra

    def committed(self, extra: Sequence[Write]) -> None:
        """`extra` is durable (or queued to the writer before a cancel): publish its records."""
        for rec in self._settle(extra):
            self.vv.add(rec.dot)
            if self._nc is not None:
                self._outbox.append(rec)
        if self._outbox:
            self._outbox_wake.set()

    def failed(self, extra: Sequence[Write]) -> None:
        """`extra` was not written: hand its seqs back if nothing later took one."""
        seqs = [rec.seq for rec in self._settle(extra)]
        if seqs and (not self._pending or max(self._pending) < min(seqs)):
            self._next_seq = max(min(seqs), self.vv.top(self.node_id) + 1)

    def _settle(self, extra: Sequence[Write]) -> list[AccountRecord]:
        out = []
        for w in extra:
            if w.db == "acct_log":
                rec = self._pending.pop(struct.unpack(">Q", w.key[-8:])[0], None)
                if rec is not None:
                    self._forget_inflight(ver_key(rec.db, rec.key), rec.version)
                    out.append(rec)
        return out

    def _forget_inflight(self, vkey: bytes, version: Version) -> None:
        if self._inflight.get(vkey) == version:  # a later decision replaced it otherwise
            del self._inflight[vkey]

    def _version(self, vkey: bytes) -> Version | None:
        if vkey in self._inflight:
            return self._inflight[vkey]
        raw = self.store.get("acct_ver", vkey)
        return None if raw is None else _decode_version(raw)

    # -- applying remote records -------------------------------------------------------------

    async def apply(self, records: Sequence[AccountRecord]) -> int:
        """Journal verified records; write the LWW winners. Returns how many were new."""
        async with self._apply_lock:
            fresh: dict[Dot, AccountRecord] = {}
            for rec in records:
                ours_unsettled = rec.origin == self.node_id and rec.seq in self._pending
                if rec.dot not in self.vv and not ours_unsettled:
                    fresh.setdefault(rec.dot, rec)
            if not fresh:
                return 0
            writes: list[Write] = []
            winners: dict[bytes, AccountRecord] = {}
            for rec in fresh.values():
                writes.append(Put("acct_log", log_key(rec.origin, rec.seq), rec.encode()))
                vkey = ver_key(rec.db, rec.key)
                held = winners.get(vkey)
                current = held.version if held is not None else self._version(vkey)
                if current is None or rec.version > current:
                    winners[vkey] = rec
            for vkey, rec in winners.items():
                data: Write = Delete(rec.db, rec.key) if rec.value is None else (
                    Put(rec.db, rec.key, rec.value)
                )  # fmt: skip
                writes += [data, Put("acct_ver", vkey, canonical_json(list(rec.version)))]
                self._inflight[vkey] = rec.version
            try:
                await self.store.commit(writes)
            finally:
                for vkey, rec in winners.items():
                    self._forget_inflight(vkey, rec.version)
            for dot in fresh:
                self.vv.add(dot)
                if dot.origin == self.node_id:  # our own, from before a restore
                    self._next_seq = max(self._next_seq, dot.seq + 1)
            return len(fresh)

    def parse_records(self, raw: object, *, sender: str) -> list[AccountRecord]:
        """Verified records of an envelope body; drops (counts, audits) every bad one."""
        if not isinstance(raw, list):
            self._drop("malformed", sender=sender, error="records must be a list")
            return []
        out = []
        for item in raw:
            try:
                rec = AccountRecord.from_json(item)
            except DecodeError as exc:
                self._drop("malformed", sender=sender, error=str(exc))
                continue
            if not self.mesh.is_member(rec.origin):
                self._drop("not_in_roster", sender=sender, origin=rec.origin)
                continue
            try:
                rec.verify()
            except DecodeError:
                self._drop("forged", sender=sender, origin=rec.origin, seq=rec.seq)
                continue
            out.append(rec)
        return out

    def _drop(self, reason: str, **fields: Any) -> None:
        self.metrics.dropped.labels(reason).inc()
        self.audit.record("federation_drop", reason=reason, node=self.node_id, **fields)

    # -- live path ---------------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        while True:
            await self._outbox_wake.wait()
            await asyncio.sleep(self.config.batch_delay_ms / 1000)  # let a burst share one
            self._outbox_wake.clear()
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        records, self._outbox = self._outbox, []
        budget = self.max_payload - 4096
        page: list[dict[str, Any]] = []
        used = 0
        for rec in records:
            wire = rec.to_json()
            size = len(canonical_json(wire)) + 1
            if page and used + size > budget:
                await self._publish(page)
                page, used = [], 0
            page.append(wire)
            used += size
        if page:
            await self._publish(page)

    async def _publish(self, page: list[dict[str, Any]]) -> None:
        if self._nc is None:
            return
        try:
            await self._nc.publish(
                self.subjects.accounts, seal("accounts", {"records": page}, self.key)
            )
            self.metrics.envelopes_out.labels("accounts").inc()
        except Exception as exc:  # NATS down: anti-entropy repairs whatever is lost
            log.warning("publishing %d account records failed: %s", len(page), exc)

    def _open(self, data: bytes) -> Envelope | None:
        try:
            env = open_envelope(data, max_bytes=max(self.max_payload, 1 << 20))
        except EnvelopeError as exc:
            self._drop("forged", error=str(exc))
            return None
        self.metrics.envelopes_in.labels(env.kind).inc()
        if not self.mesh.is_member(env.sender):
            self._drop("not_in_roster", sender=env.sender, kind=env.kind)
            return None
        return env

    async def _on_live(self, msg: Any) -> None:
        env = self._open(msg.data)
        if env is None or env.sender == self.node_id or env.kind != "accounts":
            return
        records = self.parse_records(env.body.get("records"), sender=env.sender)
        if self._has_gap(records):
            self.metrics.gaps.inc()
            self.request_pull(env.sender)
        try:
            await self.apply(records)
        except Exception:
            log.exception("applying account records from %s failed", env.sender[:8])
            self.request_pull(env.sender)

    def _has_gap(self, records: Sequence[AccountRecord]) -> bool:
        """True if a record's seq skips past what we hold of its origin (and the batch)."""
        tops: dict[str, int] = {}
        for rec in sorted(records, key=lambda r: (r.origin, r.seq)):
            top = tops.get(rec.origin, self.vv.top(rec.origin))
            if rec.seq > top + 1:
                return True
            tops[rec.origin] = max(top, rec.seq)
        return False

    # -- anti-entropy ------------------------------------------------------------------------

    def answer(self, env: Envelope) -> tuple[str, dict[str, Any]]:
        """`acct_req {"vv", "max_bytes"}` → `acct_rep {"records", "more"}`. Raises DecodeError."""
        max_bytes = env.body.get("max_bytes")
        if type(max_bytes) is not int or max_bytes <= 0:
            raise DecodeError("acct_req needs max_bytes")
        remote = VersionVector.from_json(env.body.get("vv"))
        if next(remote.dots_beyond(self.vv), None) is not None:
            self.request_pull(env.sender)  # the requester has records we lack: pull back
        budget = min(max_bytes, self.max_payload - 4096, self.config.ae_page_bytes)
        page: list[Any] = []
        used = 0
        more = False
        for dot in self.vv.dots_beyond(remote):
            raw = self.store.get("acct_log", log_key(dot.origin, dot.seq))
            if raw is None:
                continue
            if page and used + len(raw) > budget:
                more = True
                break
            page.append(strict_loads(raw))
            used += len(raw) + 1
        return "acct_rep", {"records": page, "more": more}

    async def pull(self, peer: str) -> int:
        """Fetch every journal record `peer` has and we lack, page by page."""
        total = 0
        for _ in range(100_000):  # bounded: each page makes progress or we stop
            held = len(self.vv)
            body = {"vv": self.vv.to_json(), "max_bytes": self.config.ae_page_bytes}
            reply = await self._request(peer, "acct_req", body)
            if reply is None or reply.kind != "acct_rep":
                break
            total += await self.apply(self.parse_records(reply.body.get("records"), sender=peer))
            # No progress (a page of refused records, say): asking again would get the same.
            if reply.body.get("more") is not True or len(self.vv) == held:
                break
        if total:
            self.metrics.ae_ops.inc(total)
            log.info("pulled %d account records from %s", total, peer[:8])
        return total

    async def _request(self, peer: str, kind: str, body: dict[str, Any]) -> Envelope | None:
        if self._nc is None:
            return None
        try:
            msg = await self._nc.request(
                self.subjects.node(peer), seal(kind, body, self.key),
                timeout=self.config.request_timeout_s,
            )  # fmt: skip
        except Exception as exc:
            log.info("request %s to %s failed: %s", kind, peer[:8], exc)
            return None
        self.metrics.envelopes_out.labels(kind).inc()
        env = self._open(msg.data)
        return env if env is not None and env.sender == peer else None

    def request_pull(self, peer: str) -> None:
        """Queue a pull from `peer` (deduplicated while queued)."""
        if peer != self.node_id and peer not in self._pulling:
            self._pulling.add(peer)
            self._pulls.put_nowait(peer)

    def peer_up(self, peer: str) -> None:
        """Replicator hook: a roster peer (re)appeared in the heartbeats."""
        self.request_pull(peer)

    def trigger(self) -> None:
        """Run an anti-entropy round with every live peer now (after a NATS reconnect)."""
        self._ae_now.set()

    async def _pull_loop(self) -> None:
        while True:
            peer = await self._pulls.get()
            self._pulling.discard(peer)
            try:
                await self.pull(peer)
            except Exception:
                log.exception("account pull from %s failed", peer[:8])

    async def _ae_loop(self) -> None:
        while True:
            delay = self.config.ae_interval_s * (0.5 + self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ae_now.wait(), delay)
            self._ae_now.clear()
            for peer in list(self.peers()):
                self.request_pull(peer)

    # -- start-up reconciliation -------------------------------------------------------------

    async def _reconcile(self) -> int:
        """Journal, as this node's writes, account rows the journal's winners do not explain."""
        stale: list[Write] = []
        for db in sorted(REPLICATED_DBS):
            for key, value in self._scan_all(db):
                winner = self._winner(ver_key(db, key))
                if winner is None or winner.value != value:
                    stale.append(Put(db, key, value))
        for vkey, _ in self._scan_all("acct_ver"):
            winner = self._winner(vkey)
            present = winner is None or self.store.get(winner.db, winner.key) is not None
            if winner is not None and winner.value is not None and not present:
                stale.append(Delete(winner.db, winner.key))
        for start in range(0, len(stale), 1000):
            extra = self.record(stale[start : start + 1000])
            try:
                await self.store.commit(extra)
            except BaseException:
                self.failed(extra)
                raise
            self.committed(extra)
        if stale:
            log.info("journaled %d account rows written without the journal", len(stale))
        return len(stale)

    def _winner(self, vkey: bytes) -> AccountRecord | None:
        raw = self.store.get("acct_ver", vkey)
        if raw is None:
            return None
        _, origin, seq = _decode_version(raw)
        entry = self.store.get("acct_log", log_key(origin, seq))
        return None if entry is None else AccountRecord.from_json(strict_loads(entry))

    def _scan_all(self, db: str) -> Iterable[tuple[bytes, bytes]]:
        """Every item of `db`, read page by page (bounded read transactions)."""
        start: bytes | None = None
        while True:
            items = self.store.scan(db, start=start, limit=_SCAN_PAGE)
            yield from items
            if len(items) < _SCAN_PAGE:
                return
            start = items[-1][0] + b"\x00"
