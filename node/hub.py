"""The conversation hub: accepts client ops, makes them durable, applies and fans them out.

It owns the node's in-memory `MessageLog`s (loaded from LMDB at start; LMDB is the source of
truth), the HLC, per-conversation seq reservation, client-message-id de-duplication and read
markers. Sockets live elsewhere: delivery goes through the small `Fanout` port.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from nacl.signing import SigningKey, VerifyKey

from crdt import (
    ClockDriftError,
    Content,
    ConversationState,
    ConvId,
    CrdtError,
    Cursor,
    DeviceId,
    Dot,
    HybridClock,
    MessageLog,
    Op,
    OpId,
    OrderKey,
    ReadMarkers,
    SignatureError,
    Timestamp,
    UserId,
    VersionVector,
    advance,
    b64encode,
    cursor_vv,
    marker_from_json,
    node_id_for,
    stamp,
    verify_content,
)
from node.errors import ClientError
from node.protocol import Send, encode
from node.store import Delete, Put, PutMade, Store

log = logging.getLogger(__name__)
# send_ids: (user, device, conv, cmid) -> the op it produced. cmids holds the older layout keyed
# without the conversation; Hub.load moves its records into send_ids.
DBS = ("ops", "send_ids", "cmids", "markers")
DIRECT_PREFIX = "d_"
CATCH_UP_OPS = 500  # earlier ops handed live to users who just became members via a peer
REFUSAL_CODES = {
    "missing": "not_found",
    "forbidden": "forbidden",
    "invalid": "bad_frame",
    "exists": "conflict",
}
# Only these kinds change who is in a conversation (an op applied at the end of the order).
MEMBERSHIP_KINDS = frozenset({"create", "member_add", "member_remove", "member_role"})


class Fanout(Protocol):
    def deliver(self, users: Iterable[str], frame: str) -> None: ...


class DeviceDirectory(Protocol):
    def device_key(self, user: str, device: str) -> VerifyKey | None: ...
    def user_exists(self, user: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Ack:
    op: Op
    cmid: str  # the send's client message id: a client can match acks without request ids

    def to_json(self, request_id: object) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "ack",
            "cmid": self.cmid,
            "op_id": self.op.op_id,
            "conv": self.op.conv,
            "hlc": self.op.hlc.to_json(),
            "dot": self.op.dot.to_json(),
        }
        if request_id is not None:
            frame["id"] = request_id
        return frame


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteResult:
    accepted: list[Op]
    refused: list[tuple[Op, str]]
    duplicates: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    user: str
    device: str


def direct_conv_id(a: str, b: str) -> ConvId:
    """The one id two users' direct conversation has on every node: derived from the pair."""
    pair = "\x00".join(sorted((a, b))).encode()
    return ConvId(DIRECT_PREFIX + b64encode(hashlib.sha256(pair).digest()[:18]))


def _op_frame(op: Op, wire: bytes | None = None) -> str:
    """The live `op` frame. It embeds the op's canonical JSON, usually already made for LMDB,
    so nothing is encoded twice; it starts with node.sessions.OP_FRAME_PREFIX, which the
    fan-out counts op frames by."""
    return '{"type":"op","op":' + (op.to_bytes() if wire is None else wire).decode() + "}"


def _op_key(conv: str, dot: Dot) -> bytes:
    return b"%s\x00%s\x00%s" % (conv.encode(), dot.origin.encode(), struct.pack(">Q", dot.seq))


class _Stamping:
    """A new op's node signature and wire bytes, made on the store's writer thread.

    The HLC and dot are taken on the event loop (they order the op); `make` runs `crdt.stamp`
    (encode, Ed25519-sign) when the writer thread picks the commit up, so the signature —
    libsodium releases the GIL — is computed beside the loop, not on it (node/store.PutMade).
    """

    __slots__ = ("_result", "content", "dot", "dsig", "hlc", "key")

    def __init__(
        self, content: Content, hlc: Timestamp, dot: Dot, dsig: bytes, key: SigningKey
    ) -> None:
        self.content, self.hlc, self.dot, self.dsig, self.key = content, hlc, dot, dsig, key
        self._result: tuple[Op, bytes] | None = None

    def make(self) -> bytes:
        self._result = stamp(self.content, self.hlc, self.dot, self.dsig, self.key)
        return self._result[1]

    def result(self) -> tuple[Op, bytes]:
        """The op and its wire bytes; only after the commit that made them succeeded."""
        assert self._result is not None, "the commit did not make the op"
        return self._result


def _continuing(ops: list[Op], vv: VersionVector) -> list[Op]:
    """The ops (in the given total order) that continue `vv`'s contiguous prefix per origin.

    A client cursor holds only max *contiguous* seqs, so it cannot move past an op that sits
    beyond a gap (its predecessor still on its way, e.g. being repaired by anti-entropy):
    serving it would return the same page with more=true forever. It waits for the gap.
    """
    tops = vv.contiguous()
    out: list[Op] = []
    for op in ops:
        if op.dot.seq == tops.get(op.dot.origin, 0) + 1:
            tops[op.dot.origin] = op.dot.seq
            out.append(op)
    return out


def _send_id_key(user: str, device: str, conv: str, cmid: str) -> bytes:
    """A client message id is scoped per conversation: reusing one elsewhere is a new send.

    The cmid goes last: users, devices and conversations are checked ids without NUL, a cmid is
    free text. A cmid over 64 UTF-8 bytes (64 CJK chars are 192) is replaced by 0xFF (never in
    UTF-8) + its SHA-256, so the key stays under LMDB's 511-byte limit whatever the ids' lengths.
    """
    raw = cmid.encode()
    if len(raw) > 64:
        raw = b"\xff" + hashlib.sha256(raw).digest()
    return "\x00".join((user, device, conv, "")).encode() + raw


class SendIdIndex:
    """Which client message ids are committed, answered without an LMDB read per send.

    `recent` maps the last `capacity` committed keys to their op, so a retry is answered from
    memory. `seen` holds hash() of *every* committed key (filled from LMDB at start, so it
    covers ids from before a restart): a key whose hash is not in it was never committed, which
    settles the common case, a new send, without a read. Only a key in `seen` but not in
    `recent` (older than the cache, from before a restart, or a hash collision) is read from
    LMDB. Cost: ~70 bytes per id ever sent (a Python int in a set), next to the op it names,
    which is in memory anyway. Builtin hash() is salted per process; `seen` is rebuilt per
    process, so that is fine.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recent: dict[bytes, Op] = {}
        self.seen: set[int] = set()

    def add(self, key: bytes, op: Op) -> None:
        self.seen.add(hash(key))
        self.recent[key] = op
        if len(self.recent) > self.capacity:
            del self.recent[next(iter(self.recent))]  # dicts keep insertion order: the oldest

    def may_hold(self, key: bytes) -> bool:
        return hash(key) in self.seen


class Hub:
    def __init__(
        self,
        *,
        store: Store,
        node_key: SigningKey,
        devices: DeviceDirectory,
        fanout: Fanout,
        recall_window_s: int,
        require_device_signatures: bool,
        max_clock_drift_ms: int,
        max_group_members: int,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        recent_send_ids: int = 16384,
    ) -> None:
        self.store = store
        self.node_key = node_key
        self.node_id = node_id_for(node_key.verify_key)
        self.devices = devices
        self.fanout = fanout
        self.recall_window_ms = recall_window_s * 1000
        self.require_device_signatures = require_device_signatures
        self.max_group_members = max_group_members
        self.clock_ms = clock_ms
        self.clock = HybridClock(max_drift_ms=max_clock_drift_ms)
        self.logs: dict[ConvId, MessageLog] = {}
        self.markers: dict[ConvId, ReadMarkers] = {}
        self._convs_of: dict[str, set[ConvId]] = {}
        # user -> conversations they were removed from (or left): sync tells them once.
        self._former: dict[str, set[ConvId]] = {}
        self._members: dict[ConvId, frozenset[str]] = {}
        self._next_seq: dict[ConvId, int] = {}
        self._inflight: dict[bytes, asyncio.Future[Op]] = {}
        self._send_ids = SendIdIndex(recent_send_ids)
        # Called with each op this node originates, once it is durable (federation publishes).
        self.on_local_op: list[Callable[[Op], None]] = []
        self._remote_pending: set[str] = set()

    # -- start-up -----------------------------------------------------------------------------

    def load(self) -> int:
        """Rebuild every log, the HLC, the member index and read markers from LMDB."""
        count = 0
        latest = None
        for _, raw in self.store.scan("ops"):
            op = Op.from_bytes(raw)
            self._log(op.conv, create=True).apply(op)
            if latest is None or op.hlc > latest:
                latest = op.hlc
            count += 1
        if latest is not None:
            self.clock = HybridClock(max_drift_ms=self.clock.max_drift_ms, last=latest)
        self._migrate_cmids()
        self._send_ids.seen.update(hash(key) for key, _ in self.store.scan("send_ids"))
        for conv in self.logs:
            self._reindex(conv)
            self._note_former_members(conv)
        for key, raw in self.store.scan("markers"):
            conv_id, user = key.decode().split("\x00", 1)
            self.markers.setdefault(ConvId(conv_id), ReadMarkers()).set(
                user, marker_from_json(json.loads(raw))
            )
        log.info("loaded %d ops in %d conversations", count, len(self.logs))
        return count

    def _migrate_cmids(self) -> None:
        """Re-key records of the old per-(user, device) cmid layout by their conversation, so
        sends retried across an upgrade still have exactly one effect."""
        writes: list[Put | Delete] = []
        for key, raw in self.store.scan("cmids"):
            user, device, cmid = key.decode().split("\x00", 2)
            conv = json.loads(raw)[0]
            writes += [Put("send_ids", _send_id_key(user, device, conv, cmid), raw)]
            writes += [Delete("cmids", key)]
        if writes:
            self.store.commit_sync(writes)
            log.info("moved %d client message ids to the per-conversation layout", len(writes) // 2)

    def _log(self, conv: ConvId, *, create: bool = False) -> MessageLog:
        found = self.logs.get(conv)
        if found is None:
            if not create:
                raise ClientError("not_found", f"no conversation {conv}")
            found = self.logs[conv] = MessageLog(conv)
        return found

    def _note_former_members(self, conv: ConvId) -> None:
        """At start-up: users a visible member_remove took out of `conv` (and not re-added)."""
        state = self.logs[conv].state
        for op in self.logs[conv].ops():
            if (
                op.kind == "member_remove"
                and op.op_id not in state.hidden
                and op.target not in state.members
            ):
                self._former.setdefault(op.target, set()).add(conv)

    def _removal_of(self, user: str, conv: ConvId) -> Op | None:
        """The visible op that last took `user` out of `conv`."""
        state = self.logs[conv].state
        found = None
        for op in self.logs[conv].ops():
            if op.kind == "member_remove" and op.target == user and op.op_id not in state.hidden:
                found = op
        return found

    def _reindex(self, conv: ConvId) -> tuple[frozenset[str], frozenset[str]]:
        """Refresh the user -> conversations index; returns (members before, members after)."""
        before = self._members.get(conv, frozenset())
        after = frozenset(self.logs[conv].state.members)
        if before != after:
            for user in before - after:
                self._convs_of.get(user, set()).discard(conv)
                self._former.setdefault(user, set()).add(conv)
            for user in after - before:
                self._convs_of.setdefault(user, set()).add(conv)
                self._former.get(user, set()).discard(conv)
            self._members[conv] = after
        return before, after

    # -- queries ------------------------------------------------------------------------------

    def conversations_of(self, user: str) -> list[ConvId]:
        return sorted(self._convs_of.get(user, ()))

    def member_log(self, user: str, conv: str) -> MessageLog:
        mlog = self.logs.get(ConvId(conv))
        if mlog is None:
            raise ClientError("not_found", f"no conversation {conv}")
        if user not in self._members.get(ConvId(conv), ()):
            raise ClientError("not_member", f"you are not a member of {conv}")
        return mlog

    def contacts(self, user: str) -> set[str]:
        """Everyone who shares a conversation with `user` (presence goes to them)."""
        found: set[str] = set()
        for conv in self._convs_of.get(user, ()):
            found |= self._members.get(conv, frozenset())
        return found

    def members(self, conv: ConvId) -> frozenset[str]:
        return self._members.get(conv, frozenset())

    # -- accepting ops ------------------------------------------------------------------------

    async def submit(self, who: Identity, send: Send) -> Ack:
        """Validate, stamp, durably commit, apply and fan out one client op (exactly once)."""
        key = _send_id_key(who.user, who.device, send.conv, send.cmid)
        pending = self._inflight.get(key)
        if pending is not None:
            return Ack(await asyncio.shield(pending), send.cmid)
        done = self._already_done(key)
        if done is not None:
            return Ack(done, send.cmid)
        content = self._validate(who, send)
        if isinstance(content, Op):
            return Ack(content, send.cmid)  # a retry of an op not in send_ids (see _validate)
        stamping = self._stamp(content, send.dsig)
        future: asyncio.Future[Op] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        conv, dot = content.conv, stamping.dot
        try:
            await self.store.commit(
                [
                    PutMade("ops", _op_key(conv, dot), stamping.make),
                    Put("send_ids", key, json.dumps([conv, *dot.to_json()]).encode()),
                ]
            )
            op, wire = stamping.result()
            self._send_ids.add(key, op)  # before the _inflight entry goes (no await between)
        except Exception as exc:
            log.exception("commit failed for conv %s", conv)
            # Give the seq back if nothing was stamped after it; otherwise it stays a hole in
            # this origin's dots (cursors stall below it until the operator restarts the node,
            # which re-derives seqs from what LMDB holds).
            if self._next_seq.get(conv) == dot.seq + 1:
                self._next_seq[conv] = dot.seq
            err = ClientError("unavailable", "the node could not store the op; retry later")
            future.set_exception(err)
            future.exception()  # retrieved: waiters re-raise it
            raise err from exc
        finally:
            del self._inflight[key]
        self.accept(op, wire)
        future.set_result(op)
        return Ack(op, send.cmid)

    def _already_done(self, key: bytes) -> Op | None:
        """The op a previous send with this client message id produced, if it was committed."""
        recent = self._send_ids.recent.get(key)
        if recent is not None:
            return recent
        if not self._send_ids.may_hold(key):
            return None  # never committed: no need to ask LMDB
        raw = self.store.get("send_ids", key)
        if raw is None:
            return None
        conv, origin, seq = json.loads(raw)
        mlog = self.logs.get(ConvId(conv))
        return None if mlog is None else mlog.by_dot(Dot(origin, seq))

    def _validate(self, who: Identity, send: Send) -> Content | Op:
        try:
            content = Content(
                conv=ConvId(send.conv),
                kind=send.kind,  # type: ignore[arg-type]
                author=UserId(who.user),
                device=DeviceId(who.device),
                target=send.target,
                attrs=send.attrs,
                body=send.body,
            )
        except CrdtError as exc:
            raise ClientError("bad_frame", str(exc)) from None
        if "cmid" in content.attrs and content.attrs["cmid"] != send.cmid:
            raise ClientError("bad_frame", "attrs.cmid, when present, must equal the send's cmid")
        self._check_signature(content, send.dsig)
        conv = ConvId(send.conv)
        if send.kind == "create":
            self._check_create(who, content)
            state = MessageLog(conv).state
        else:
            state = self.member_log(who.user, conv).state
        reason = state.refusal(content)
        if reason is not None:
            retried = state.retry_of(content)
            if retried is not None and send.kind != "create":
                # The fold would hide it as a retry: answer with the op it retries (held
                # here, e.g. replicated before this node indexed peer ops by cmid).
                op = self.logs[conv].get(retried) if conv in self.logs else None
                if op is not None:
                    return op
            raise ClientError(REFUSAL_CODES[reason.kind], reason)
        if send.kind == "unreact":
            self._check_unreact(state, content)
        if send.kind == "delete":
            self._check_recall(who, state.message(send.target), state.role(who.user))
        if send.kind == "member_add" and len(state.members) >= self.max_group_members:
            raise ClientError(
                "forbidden", f"groups are limited to {self.max_group_members} members"
            )
        if send.kind == "member_add" and not self.devices.user_exists(send.target):
            raise ClientError("not_found", f"no user {send.target}")
        return content

    @staticmethod
    def _check_unreact(state: ConversationState, probe: Content) -> None:
        """Every id in attrs.removes must be one of the author's reactions on the target: an
        unknown id would park the op forever (it waits for its targets) and remove nothing."""
        removes = probe.attrs.get("removes")
        target = state.message(probe.target)
        assert isinstance(removes, list) and target is not None  # refusal() checked both
        if len(state.own_reacts(probe, target)) != len(set(removes)):
            raise ClientError(
                "bad_frame", "attrs.removes must name only your own reactions on the target"
            )

    def _check_signature(self, content: Content, dsig: bytes) -> None:
        if not dsig:
            if self.require_device_signatures:
                raise ClientError("bad_signature", "this node requires a device signature (dsig)")
            return
        key = self.devices.device_key(content.author, content.device)
        if key is None:
            raise ClientError("bad_signature", "no signing key is registered for this device")
        try:
            verify_content(content, dsig, key)
        except SignatureError:
            raise ClientError(
                "bad_signature", "dsig does not verify against the device key"
            ) from None

    def _check_create(self, who: Identity, content: Content) -> None:
        conv = content.conv
        if conv in self.logs:
            raise ClientError("conflict", f"conversation {conv} already exists")
        if conv.startswith(DIRECT_PREFIX) and content.attrs.get("type") != "direct":
            # Reserved: a group squatting a pair's direct id would lock the pair out of it.
            raise ClientError("bad_frame", f"ids starting {DIRECT_PREFIX!r} are for direct chats")
        members = content.attrs.get("members", [])
        if not isinstance(members, list):
            raise ClientError("bad_frame", "attrs.members must be a list of user ids")
        for user in members:
            if not self.devices.user_exists(user):
                raise ClientError("not_found", f"no user {user}")
        if len(set(members) | {who.user}) > self.max_group_members:
            raise ClientError(
                "forbidden", f"groups are limited to {self.max_group_members} members"
            )
        if (
            content.attrs.get("type") == "direct"
            and len(members) == 1
            and conv != direct_conv_id(who.user, members[0])
        ):
            raise ClientError(
                "bad_frame",
                f"a direct conversation with {members[0]} must have id "
                f"{direct_conv_id(who.user, members[0])}",
            )

    def _check_recall(self, who: Identity, message: Any, role: str | None) -> None:
        if message is None or role in ("admin", "owner"):
            return
        age = self.clock_ms() - message.op.hlc.l
        if age > self.recall_window_ms:
            raise ClientError(
                "recall_window",
                f"messages can be recalled for {self.recall_window_ms // 1000} s; this one is "
                f"{age // 1000} s old",
            )

    def _stamp(self, content: Content, dsig: bytes) -> _Stamping:
        conv = content.conv
        mlog = self.logs.get(conv)
        floor = mlog.next_seq(self.node_id) if mlog is not None else 1
        seq = max(floor, self._next_seq.get(conv, 1))
        self._next_seq[conv] = seq + 1
        hlc = self.clock.tick(self.clock_ms())
        return _Stamping(content, hlc, Dot(self.node_id, seq), dsig, self.node_key)

    def accept(self, op: Op, wire: bytes | None = None) -> None:
        """Apply a durable local op to its log and deliver it to every member's sessions.
        `wire`: op.to_bytes(), if the caller has it already."""
        self._apply_and_deliver(op, wire)
        for callback in self.on_local_op:
            callback(op)

    def _apply_and_deliver(self, op: Op, wire: bytes | None = None) -> None:
        self._log(op.conv, create=True).apply(op)
        if op.kind in MEMBERSHIP_KINDS:
            before, after = self._reindex(op.conv)
            recipients = before | after | {op.target}
        else:
            recipients = self._members.get(op.conv, frozenset())
        self.fanout.deliver(recipients, _op_frame(op, wire))

    async def accept_remote(self, ops: Iterable[Op]) -> RemoteResult:
        """Make ops from peers durable, apply them and deliver them to local sessions.

        The caller has authenticated them (envelope and origin signatures, roster). Duplicates
        are skipped; an op whose HLC is too far ahead, or that reuses a known dot with other
        content (an origin equivocating), is refused and reported, and changes nothing.
        """
        now = self.clock_ms()
        fresh: list[Op] = []
        refused: list[tuple[Op, str]] = []
        duplicates = 0
        for op in ops:
            mlog = self.logs.get(op.conv)
            if op.op_id in self._remote_pending or (mlog is not None and op.op_id in mlog):
                duplicates += 1
                continue
            if mlog is not None and mlog.by_dot(op.dot) is not None:
                refused.append((op, "equivocation: the dot already holds another op"))
                continue
            try:
                self.clock.check(op.hlc, now)
            except ClockDriftError as exc:
                refused.append((op, str(exc)))
                continue
            self._remote_pending.add(op.op_id)
            fresh.append(op)
        if fresh:
            try:
                wires = {op.op_id: op.to_bytes() for op in fresh}
                retried = self._remote_send_ids(fresh)
                await self.store.commit(
                    [Put("ops", _op_key(op.conv, op.dot), wires[op.op_id]) for op in fresh]
                    + [
                        Put("send_ids", key, json.dumps([op.conv, *op.dot.to_json()]).encode())
                        for key, op in retried.items()
                    ]
                )
                for key, op in retried.items():
                    self._send_ids.add(key, op)
                self._apply_remote(fresh, now, wires)
            finally:
                self._remote_pending.difference_update(op.op_id for op in fresh)
        return RemoteResult(accepted=fresh, refused=refused, duplicates=duplicates)

    def _remote_send_ids(self, fresh: list[Op]) -> dict[bytes, Op]:
        """send_ids entries for peer ops that carry attrs.cmid, so a client that fails over
        and retries here gets the original op's ack. Of two ops with one key (sent at two
        nodes while partitioned), the first in total order wins, as in the fold."""
        out: dict[bytes, Op] = {}
        for op in fresh:
            cmid = op.content.attrs.get("cmid")
            if not isinstance(cmid, str):
                continue
            key = _send_id_key(op.author, op.content.device, op.conv, cmid)
            known = out.get(key) or self._already_done(key)
            if known is None or op.order_key < known.order_key:
                out[key] = op
        return out

    def _apply_remote(self, fresh: list[Op], now: int, wires: dict[OpId, bytes]) -> None:
        """Apply a durable batch of peer ops, then deliver them.

        Membership is recomputed once per conversation per batch, not per op: peer ops often
        arrive out of order (anti-entropy pages), and every recomputation of an out-of-order
        log rebuilds its whole materialised state.
        """
        by_conv: dict[ConvId, list[Op]] = {}
        for op in sorted(fresh, key=lambda o: o.order_key):
            self.clock.observe(op.hlc, max(now, self.clock_ms()))
            self._log(op.conv, create=True).apply(op)
            by_conv.setdefault(op.conv, []).append(op)
        for conv, ops in by_conv.items():
            before = self._members.get(conv, frozenset())
            if any(op.kind in MEMBERSHIP_KINDS for op in ops):
                before, after = self._reindex(conv)
            else:
                after = before
            for op in ops:
                recipients = after
                if op.kind in MEMBERSHIP_KINDS:
                    recipients = before | after | {op.target}
                self.fanout.deliver(recipients, _op_frame(op, wires[op.op_id]))
            self._catch_up_new_members(conv, before, ops)

    def _catch_up_new_members(self, conv: ConvId, before: frozenset[str], fresh: list[Op]) -> None:
        """Hand users who just became members here the conversation's earlier ops.

        Peer ops can arrive before the op that makes a local user a member (a message before
        its conversation's create): they were applied with nobody to deliver them to. Without
        this, a client would hold later dots only and never notice the hole until its next op.
        At most the newest CATCH_UP_OPS are sent; a client seeing a gap before them catches up
        over HTTP, as on any gap.
        """
        added = self._members.get(conv, frozenset()) - before
        if not added:
            return
        sent = {op.op_id for op in fresh}
        earlier = [op for op in self.logs[conv].ops() if op.op_id not in sent]
        for op in earlier[-CATCH_UP_OPS:]:
            self.fanout.deliver(added, _op_frame(op))

    # -- catch-up -----------------------------------------------------------------------------

    def sync(self, user: str, cursor: Cursor, limit: int) -> tuple[list[Op], Cursor, bool]:
        """Ops the cursor lacks in the user's conversations, paged; returns the advanced cursor."""
        out: list[Op] = []
        new_cursor: Cursor = {conv: dict(vv) for conv, vv in cursor.items()}
        more = False
        for conv in self.conversations_of(user):
            remaining = limit - len(out)
            if remaining <= 0:
                more = True
                break
            vv = cursor_vv(cursor, conv)
            page = _continuing(self.logs[conv].missing_for(vv), vv)
            if len(page) > remaining:
                page, more = page[:remaining], True
            for op in page:
                vv.add(op.dot)
            advance(new_cursor, conv, vv)
            out.extend(page)
        if not more:
            more = self._sync_former(user, cursor, new_cursor, out, limit)
        return out, new_cursor, more

    def _sync_former(
        self, user: str, cursor: Cursor, new_cursor: Cursor, out: list[Op], limit: int
    ) -> bool:
        """For conversations `user` was removed from: hand them the removal (a client offline
        at the time would otherwise never learn it) and move their cursor past everything
        there, which they may no longer read. Returns whether the page is full."""
        for conv in sorted(self._former.get(user, ())):
            mlog = self.logs[conv]
            removal = self._removal_of(user, conv)
            if removal is not None and removal.dot not in cursor_vv(cursor, conv):
                if len(out) >= limit:
                    return True
                out.append(removal)
            advance(new_cursor, conv, mlog.version_vector)
        return False

    def history(
        self, user: str, conv: str, before: str | None, limit: int
    ) -> tuple[list[Any], bool]:
        state = self.member_log(user, conv).state
        key: OrderKey | None = None
        if before:
            anchor = state.message(before)
            if anchor is None:
                raise ClientError("not_found", f"no message {before} in {conv}")
            key = anchor.op.order_key
        page = state.messages_before(key, limit + 1)
        more = len(page) > limit
        return [m.to_json() for m in page[-limit:]], more

    def conversation_list(self, user: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for conv in self.conversations_of(user):
            state = self.logs[conv].state
            last = state.last_message()
            marker = self.markers.get(conv, ReadMarkers()).get(user)
            rows.append(
                {
                    "conv": conv,
                    "type": state.conv_type,
                    "settings": dict(state.settings),
                    "members": dict(state.members),
                    "last_message": None if last is None else last.to_json(),
                    "unread": state.unread_count(user, marker),
                    "read_marker": None if marker is None else list(marker),
                }
            )
        rows.sort(
            key=lambda r: r["last_message"]["hlc"] if r["last_message"] else [0, 0], reverse=True
        )
        return rows

    async def mark_read(self, user: str, conv: str, op_id: str) -> bool:
        state = self.member_log(user, conv).state
        message = state.message(op_id)
        if message is None:
            raise ClientError("not_found", f"no message {op_id} in {conv}")
        markers = self.markers.setdefault(ConvId(conv), ReadMarkers())
        key = message.op.order_key
        if not markers.set(user, key):
            return False
        try:
            await self.store.commit(
                [Put("markers", f"{conv}\x00{user}".encode(), json.dumps(list(key)).encode())]
            )
        except Exception as exc:  # a StoreError here used to end the whole WebSocket session
            log.exception("marker commit failed for conv %s", conv)
            raise ClientError("unavailable", "the node could not store the marker") from exc
        frame = {"type": "read", "conv": conv, "user": user, "op_id": op_id}
        self.fanout.deliver(self.members(ConvId(conv)), encode(frame))
        return True

    def typing(self, user: str, conv: str, active: bool) -> None:
        self.member_log(user, conv)
        frame = {"type": "typing", "conv": conv, "user": user, "active": active}
        self.fanout.deliver(self.members(ConvId(conv)) - {user}, encode(frame))
