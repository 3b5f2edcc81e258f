"""The mesh roster: who may speak in a mesh, as a grow-only set of signed records (a tiny CRDT).

Pure: no I/O, no clock, no randomness. Every replica that holds the same set of records computes
the same members, whatever order or how many times the records arrived: `Roster.add` decides
validity from the record alone (never from what else is known), and the view is a deterministic
function of the set.

Records are canonical JSON objects with exactly the fields below. Signatures are Ed25519 over
``b"yanzi-roster-v1\\x00" + canonical_json(record without "nsig"/"osig"/"esig")``, in unpadded
base64url; ``nsig`` is by the enrolling node's key (its id), ``osig`` by the mesh's operator key.
Both signatures of a genesis record cover the same bytes.

- operator enrolment (``yanzi mesh init`` enrols the operator's own node this way)::

    {"t":"enrol","mesh":M,"node":N,"region":R,"urls":[...],"ts":T,"invite":null,"nsig":..,"osig":..}

- invited enrolment (``yanzi join``)::

    {"t":"enrol","mesh":M,"node":N,"region":R,"urls":[...],"ts":T,
     "invite":{<the signed invite object>},"isig":<operator's invite signature>,"nsig":..,"esig":..}

  ``invite`` and ``isig`` are the public part of the invite token (see `federation.invite`),
  without its one-time seed. ``esig`` is a signature by the invite's one-time ``enrol_key``
  over ``b"yanzi-enrol-v1\\x00" + canonical_json(record without "nsig"/"osig"/"esig")``: it
  binds this node, ``ts``, region and URLs to the invite, and only the token holder can make
  it. Valid iff the invite verifies for this mesh and operator, ``esig`` verifies,
  ``ts <= invite exp`` and ``region == invite region``.
- revocation: ``{"t":"revoke","mesh":M,"node":N,"ts":T,"osig":..}``.
- node info update: ``{"t":"info","mesh":M,"node":N,"region":R,"urls":[...],"ts":T,"nsig":..}``.

A record's id is ``b64encode(sha256(canonical_json(record)))`` (signatures included); the
roster digest is ``b64encode(sha256(concatenation of the sorted raw 32-byte record hashes))``,
so two replicas compare rosters with one string and exchange only `missing_for` the other's ids.

The view (`Roster.members`):

1. Single use: among the valid enrolments naming the same invite id, only the one with the
   smallest ``(ts, node, record id)`` counts; the others are kept (the set only grows) but
   ignored. Revocation spends an invite for good: if any enrolment with an invite names a
   revoked node, no enrolment with that invite counts (so the holder of a revoked node's
   token cannot come back with a fresh key and an earlier ``ts``).
2. A node is enrolled if at least one of its enrolments counts (operator enrolments always
   count); its region and ``enrolled_ts`` come from the counting enrolment with the smallest
   ``(ts, record id)``. The region never changes after that.
3. Its URLs are last-writer-wins by ``(ts, record id)`` over that enrolment and its info records;
   an info record naming another region than the enrolled one is ignored.
4. Members are the enrolled nodes minus every revoked node. Revocation is permanent for the
   node id (a revoked machine rejoins with a new key and a new invite).

What a roster holder sees is never reusable: an enrolment carries the signed invite but not
its seed, and ``esig`` covers the whole record, so a member (or an ex-member that kept a copy
of the roster) cannot enrol another key with an invite it saw, backdated or not.

Timestamps are the signer's claim (ms since the epoch); the roster cannot check them against a
clock without becoming order-dependent. So the one who holds a token can still backdate its
enrolment anywhere up to the invite's ``exp``; expiry is enforced when a node joins
(`parse_invite(..., now_ms=...)`) and by ``ts <= exp`` here. Keep invites short-lived and
their tokens secret (they are bearer secrets until used), and revoke if a stranger shows up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NewType

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crdt import DecodeError, NodeId, b64decode, b64encode, canonical_json, strict_loads
from crdt.signing import node_id_for, verify_key_for
from federation.errors import FederationError
from federation.invite import (
    InviteError,
    MeshId,
    mesh_id_for,
    parse_invite,
    valid_region,
    valid_ts,
    valid_urls,
    verify_invite,
)

RecordId = NewType("RecordId", str)

ROSTER_DOMAIN: Final = b"yanzi-roster-v1\x00"
# The one-time invite key signs with its own prefix, so its signature can never pass for a
# roster, invite, envelope or op signature (and vice versa).
ENROL_DOMAIN: Final = b"yanzi-enrol-v1\x00"
MAX_RECORD_BYTES: Final = 64 * 1024
_SIG_FIELDS: Final = ("nsig", "osig", "esig")
_BASE_ENROL: Final = frozenset({"t", "mesh", "node", "region", "urls", "ts", "invite", "nsig"})
_GENESIS: Final = _BASE_ENROL | {"osig"}
_ENROL: Final = _BASE_ENROL | {"isig", "esig"}
_REVOKE: Final = frozenset({"t", "mesh", "node", "ts", "osig"})
_INFO: Final = frozenset({"t", "mesh", "node", "region", "urls", "ts", "nsig"})


class RosterError(FederationError):
    """A roster record is malformed, forged, for another mesh, or uses an invalid invite."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    region: str
    urls: tuple[str, ...]
    enrolled_ts: int


@dataclass(frozen=True, slots=True)
class _Enrol:
    id: RecordId
    node: NodeId
    region: str
    urls: tuple[str, ...]
    ts: int
    invite_id: str | None  # None: enrolled by the operator


@dataclass(frozen=True, slots=True)
class _Revoke:
    id: RecordId
    node: NodeId
    ts: int


@dataclass(frozen=True, slots=True)
class _Info:
    id: RecordId
    node: NodeId
    region: str
    urls: tuple[str, ...]
    ts: int


_Entry = _Enrol | _Revoke | _Info


def record_id(record: dict[str, Any]) -> RecordId:
    """b64(sha256(canonical record bytes, signatures included)); raises RosterError."""
    return RecordId(b64encode(hashlib.sha256(encode_record(record)).digest()))


def encode_record(record: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of a record (its wire form); raises RosterError."""
    try:
        return canonical_json(record)
    except DecodeError as exc:
        raise RosterError(f"record is not canonical JSON: {exc}") from None


def decode_record(data: bytes | str) -> dict[str, Any]:
    """Parse a record's wire form (shape only; `Roster.add` verifies); raises only RosterError."""
    try:
        value = strict_loads(data, max_bytes=MAX_RECORD_BYTES)
    except DecodeError as exc:
        raise RosterError(f"malformed record: {exc}") from None
    if not isinstance(value, dict):
        raise RosterError("a roster record is a JSON object")
    return value


def signing_bytes(record: dict[str, Any], domain: bytes = ROSTER_DOMAIN) -> bytes:
    """What `nsig`/`osig` (and, with ENROL_DOMAIN, `esig`) sign: the record without them."""
    unsigned = {k: v for k, v in record.items() if k not in _SIG_FIELDS}
    return domain + encode_record(unsigned)


def genesis_record(
    operator_key: SigningKey,
    node_key: SigningKey,
    *,
    region: str,
    urls: Sequence[str],
    ts: int,
) -> dict[str, Any]:
    """An operator enrolment of `node_key`'s node, signed by both keys."""
    mesh = mesh_id_for(operator_key.verify_key)
    record = _enrolment(mesh, node_key, region=region, urls=urls, ts=ts)
    record["osig"] = _sign(operator_key, record)
    _check(record, mesh, operator_key.verify_key)
    return record


def enrol_record(
    node_key: SigningKey,
    invite_token: str,
    *,
    region: str,
    urls: Sequence[str],
    ts: int,
) -> dict[str, Any]:
    """An enrolment of `node_key`'s node using an invite token; raises RosterError if it would
    be invalid (bad or foreign invite, region other than the invite's, `ts` after expiry).

    The record carries the signed invite but not the token's seed: it is signed with the
    one-time key (`esig`) instead, so publishing it gives nobody the means to enrol again.
    """
    try:
        parsed = parse_invite(invite_token)
    except InviteError as exc:
        raise RosterError(f"bad invite: {exc}") from None
    invite = parsed.invite
    record = _enrolment(
        invite.mesh,
        node_key,
        region=region,
        urls=urls,
        ts=ts,
        invite=invite.body(),
        isig=invite.sig,
    )
    record["esig"] = _sign(parsed.enrol_signing_key(), record, ENROL_DOMAIN)
    _check(record, invite.mesh, _operator_key(invite.operator))
    return record


def revoke_record(
    operator_key: SigningKey, mesh_id: str, node_id: str, *, ts: int
) -> dict[str, Any]:
    """The operator's revocation of `node_id`."""
    if mesh_id != mesh_id_for(operator_key.verify_key):
        raise RosterError("this operator key does not own that mesh")
    record: dict[str, Any] = {"t": "revoke", "mesh": mesh_id, "node": node_id, "ts": ts}
    record["osig"] = _sign(operator_key, record)
    _check(record, mesh_id, operator_key.verify_key)
    return record


def info_record(
    node_key: SigningKey, mesh_id: str, *, region: str, urls: Sequence[str], ts: int
) -> dict[str, Any]:
    """A node's update of its own public URLs (`region` must stay the enrolled one)."""
    record: dict[str, Any] = {
        "t": "info",
        "mesh": mesh_id,
        "node": node_id_for(node_key.verify_key),
        "region": region,
        "urls": list(urls),
        "ts": ts,
    }
    record["nsig"] = _sign(node_key, record)
    _check(record, mesh_id, None)
    return record


class Roster:
    """The set of valid roster records of one mesh and the membership they imply."""

    def __init__(self, mesh_id: str, operator_pub: VerifyKey | str) -> None:
        operator = _operator_key(operator_pub) if isinstance(operator_pub, str) else operator_pub
        if mesh_id_for(operator) != mesh_id:
            raise RosterError("mesh id does not match the operator key")
        self.mesh_id = MeshId(mesh_id)
        self.operator = operator
        self._records: dict[RecordId, bytes] = {}
        self._entries: dict[RecordId, _Entry] = {}
        self._members: dict[NodeId, MemberInfo] | None = None
        self._revoked: frozenset[NodeId] = frozenset()

    def add(self, record: dict[str, Any]) -> bool:
        """Verify and keep `record`; False if already known. Raises RosterError if invalid,
        leaving the roster unchanged."""
        rid = record_id(record)
        if rid in self._records:
            return False  # byte-identical to a record that verified already
        entry = _check(record, self.mesh_id, self.operator)
        self._records[rid] = encode_record(record)
        self._entries[rid] = entry
        self._members = None
        if isinstance(entry, _Revoke):
            self._revoked = self._revoked | {entry.node}
        return True

    def add_all(self, records: Iterable[dict[str, Any]]) -> tuple[int, list[RosterError]]:
        """Add each record; return how many were new and the errors of the refused ones."""
        added, errors = 0, []
        for record in records:
            try:
                added += self.add(record)
            except RosterError as exc:
                errors.append(exc)
        return added, errors

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, rid: object) -> bool:
        return rid in self._records

    def ids(self) -> frozenset[RecordId]:
        return frozenset(self._records)

    def records(self) -> list[dict[str, Any]]:
        """Every record (fresh copies), ordered by (ts, record id)."""
        return [strict_loads(self._records[rid]) for rid in self._ordered(self._records)]

    def missing_for(self, other_hashes: Iterable[str]) -> list[dict[str, Any]]:
        """The records a replica holding `other_hashes` (record ids) lacks, in canonical order."""
        other = set(other_hashes)
        missing = [rid for rid in self._records if rid not in other]
        return [strict_loads(self._records[rid]) for rid in self._ordered(missing)]

    def digest(self) -> str:
        """b64(sha256 of the sorted raw record hashes): equal digests mean equal record sets."""
        raw = sorted(b64decode(rid) for rid in self._records)
        return b64encode(hashlib.sha256(b"".join(raw)).digest())

    def members(self) -> dict[NodeId, MemberInfo]:
        if self._members is None:
            self._members = self._compute_members()
        return dict(self._members)

    def is_member(self, node_id: str) -> bool:
        if self._members is None:
            self._members = self._compute_members()
        return node_id in self._members

    def is_revoked(self, node_id: str) -> bool:
        return node_id in self._revoked

    def revoked(self) -> frozenset[NodeId]:
        return self._revoked

    def _ordered(self, rids: Iterable[RecordId]) -> list[RecordId]:
        return sorted(rids, key=lambda rid: (self._entries[rid].ts, rid))

    def _compute_members(self) -> dict[NodeId, MemberInfo]:
        enrols = [e for e in self._entries.values() if isinstance(e, _Enrol)]
        winners: dict[str, _Enrol] = {}  # invite id -> the enrolment that holds it
        burnt: set[str] = set()  # invite ids used by a revoked node: spent, enrol nobody
        for e in enrols:
            if e.invite_id is not None:
                if e.node in self._revoked:
                    burnt.add(e.invite_id)
                held = winners.get(e.invite_id)
                if held is None or (e.ts, e.node, e.id) < (held.ts, held.node, held.id):
                    winners[e.invite_id] = e
        first: dict[NodeId, _Enrol] = {}  # node -> its earliest counting enrolment
        for e in enrols:
            if e.invite_id is not None and (winners[e.invite_id] is not e or e.invite_id in burnt):
                continue
            if e.node in self._revoked:
                continue
            held = first.get(e.node)
            if held is None or (e.ts, e.id) < (held.ts, held.id):
                first[e.node] = e
        latest: dict[NodeId, tuple[int, str, tuple[str, ...]]] = {
            node: (e.ts, e.id, e.urls) for node, e in first.items()
        }
        for entry in self._entries.values():
            if isinstance(entry, _Info) and entry.node in first:
                if entry.region != first[entry.node].region:
                    continue  # region is fixed by enrolment
                candidate = (entry.ts, entry.id, entry.urls)
                if candidate[:2] > latest[entry.node][:2]:
                    latest[entry.node] = candidate
        return {
            node: MemberInfo(region=e.region, urls=latest[node][2], enrolled_ts=e.ts)
            for node, e in first.items()
        }


def _operator_key(operator_b64: str) -> VerifyKey:
    try:
        raw = b64decode(operator_b64, max_bytes=32)
    except DecodeError:
        raise RosterError("an operator key is 32 bytes in base64url") from None
    if len(raw) != 32:
        raise RosterError("an operator key is 32 bytes in base64url")
    return VerifyKey(raw)


def _enrolment(
    mesh: str,
    node_key: SigningKey,
    *,
    region: str,
    urls: Sequence[str],
    ts: int,
    invite: dict[str, Any] | None = None,
    isig: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "t": "enrol",
        "mesh": mesh,
        "node": node_id_for(node_key.verify_key),
        "region": region,
        "urls": list(urls),
        "ts": ts,
        "invite": invite,
    }
    if invite is not None:
        record["isig"] = isig
    record["nsig"] = _sign(node_key, record)
    return record


def _sign(key: SigningKey, record: dict[str, Any], domain: bytes = ROSTER_DOMAIN) -> str:
    return b64encode(bytes(key.sign(signing_bytes(record, domain)).signature))


_SIGNERS: Final = {"nsig": "node", "osig": "operator", "esig": "invite's one-time key"}


def _verify(
    key: VerifyKey, record: dict[str, Any], field: str, domain: bytes = ROSTER_DOMAIN
) -> None:
    try:
        sig = b64decode(record[field], max_bytes=64)
    except DecodeError:
        raise RosterError(f"{field} is not base64url") from None
    if len(sig) != 64:
        raise RosterError(f"{field} must be a 64-byte signature")
    try:
        key.verify(signing_bytes(record, domain), sig)
    except BadSignatureError:
        raise RosterError(f"bad {_SIGNERS[field]} signature ({field})") from None


def _check(record: object, mesh_id: str, operator: VerifyKey | None) -> _Entry:
    """Validate one record on its own; raises RosterError. `operator` None: not known (only
    for checking a freshly built info record, which needs no operator signature)."""
    if not isinstance(record, dict):
        raise RosterError("a roster record is a JSON object")
    rid = record_id(record)
    kind = record.get("t")
    if kind == "enrol":
        invited = record.get("invite") is not None
        fields = _ENROL if invited else _GENESIS
    elif kind == "revoke":
        fields = _REVOKE
    elif kind == "info":
        fields = _INFO
    else:
        raise RosterError(f"unknown roster record type {kind!r}")
    if set(record) != fields:
        raise RosterError(f"a {kind} record has exactly the fields {sorted(fields)}")
    if record["mesh"] != mesh_id:
        raise RosterError("record is for another mesh")
    try:
        node_key = verify_key_for(record["node"])
    except DecodeError:
        raise RosterError("node must be a node id (32-byte key in base64url)") from None
    node = NodeId(record["node"])
    if not valid_ts(record["ts"]):
        raise RosterError("ts must be an integer of ms since the epoch")
    ts: int = record["ts"]
    if kind == "revoke":
        _verify(_need(operator), record, "osig")
        return _Revoke(rid, node, ts)
    if not valid_region(record["region"]):
        raise RosterError("region must be 1-64 printable characters without blanks")
    if not valid_urls(record["urls"]):
        raise RosterError("urls must be a list of at most 16 scheme://host URLs")
    region: str = record["region"]
    urls = tuple(record["urls"])
    _verify(node_key, record, "nsig")
    if kind == "info":
        return _Info(rid, node, region, urls, ts)
    if not invited:
        _verify(_need(operator), record, "osig")
        return _Enrol(rid, node, region, urls, ts, None)
    try:
        invite = verify_invite(record["invite"], record["isig"])
    except InviteError as exc:
        raise RosterError(f"bad invite: {exc}") from None
    if invite.mesh != mesh_id or (
        operator is not None and invite.operator != b64encode(bytes(operator))
    ):
        raise RosterError("invite is for another mesh")
    # Only the token holder has the one-time key: without this, anyone who saw the signed
    # invite (every roster holder) could enrol another node with it.
    _verify(invite.enrol_verify_key(), record, "esig", ENROL_DOMAIN)
    if ts > invite.exp:
        raise RosterError("enrolment is later than the invite's expiry")
    if region != invite.region:
        raise RosterError(f"invite is for region {invite.region!r}, not {region!r}")
    return _Enrol(rid, node, region, urls, ts, invite.id)


def _need(operator: VerifyKey | None) -> VerifyKey:
    if operator is None:
        raise RosterError("the operator key is needed to check this record")
    return operator
