"""Signed federation envelopes: pure functions, no I/O.

Wire form: 64-byte Ed25519 signature || payload, where payload is canonical JSON
`{"v": 1, "kind": ..., "from": <node id>, "body": {...}}` and the signature covers
b"yanzi-envelope-v1\\x00" + payload (domain-separated from op and roster signatures). The
sender's id is its public key, so the envelope verifies without a lookup; whether the sender
may speak (roster membership) is the caller's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from crdt import DecodeError, NodeId, canonical_json, node_id_for, strict_loads
from crdt.signing import verify_key_for
from federation.errors import FederationError

DOMAIN: Final = b"yanzi-envelope-v1\x00"
KINDS: Final = frozenset(
    {
        "ops", "ae_req", "ae_rep", "convs_req", "convs_rep", "hello", "interest", "roster",
        "accounts", "acct_req", "acct_rep",
    }
)  # fmt: skip


class EnvelopeError(FederationError):
    """An envelope is malformed, oversized, of an unknown kind, or its signature is wrong."""


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    sender: NodeId
    body: dict[str, Any]


def seal(kind: str, body: dict[str, Any], key: SigningKey) -> bytes:
    if kind not in KINDS:
        raise EnvelopeError(f"unknown envelope kind {kind!r}")
    payload = canonical_json(
        {"v": 1, "kind": kind, "from": node_id_for(key.verify_key), "body": body}
    )
    return bytes(key.sign(DOMAIN + payload).signature) + payload


def open_envelope(data: bytes, *, max_bytes: int) -> Envelope:
    """Parse and verify; raises only EnvelopeError."""
    if len(data) > max_bytes or len(data) < 65:
        raise EnvelopeError("envelope size out of range")
    signature, payload = bytes(data[:64]), bytes(data[64:])
    try:
        value = strict_loads(payload, max_bytes=max_bytes)
    except DecodeError as exc:
        raise EnvelopeError(f"malformed payload: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"v", "kind", "from", "body"}:
        raise EnvelopeError("payload must be {v, kind, from, body}")
    if value["v"] != 1 or value["kind"] not in KINDS or not isinstance(value["body"], dict):
        raise EnvelopeError("unsupported version, kind or body")
    try:
        key = verify_key_for(value["from"])
        key.verify(DOMAIN + payload, signature)
    except (DecodeError, BadSignatureError, ValueError, TypeError) as exc:
        raise EnvelopeError(f"bad signature or sender: {exc}") from None
    return Envelope(value["kind"], NodeId(value["from"]), value["body"])
