"""Ed25519 signatures over canonical JSON: the device signs content, the origin node the envelope.

PyNaCl is pure computation here (no I/O), which is why `crdt` may use it.
"""

from __future__ import annotations

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crdt.canonical import b64decode, b64encode
from crdt.errors import DecodeError, SignatureError
from crdt.hlc import Timestamp
from crdt.op import Content, Dot, NodeId, Op, OpBytes


def sign_content(content: Content, key: SigningKey) -> bytes:
    """The author's device signature over canonical(content)."""
    return bytes(key.sign(content.signing_bytes()).signature)


def verify_content(content: Content, dsig: bytes, key: VerifyKey) -> None:
    """Raise SignatureError unless `dsig` is `key`'s signature over `content`."""
    _verify(key, content.signing_bytes(), dsig, "device")


def sign_envelope(op: Op, key: SigningKey) -> Op:
    """Return `op` with the origin node's signature over header + device signature."""
    nsig = bytes(key.sign(op.envelope_signing_bytes()).signature)
    return op.with_node_signature(nsig)


def stamp(
    content: Content, hlc: Timestamp, dot: Dot, dsig: bytes, key: SigningKey
) -> tuple[Op, bytes]:
    """A new op signed by its origin node, and its wire bytes: what `sign_envelope(Op(...))`
    then `to_bytes()` give, with the content encoded once (`OpBytes`) instead of four times.
    `content` is validated by its constructor; only `dsig`'s length is left to check."""
    if not isinstance(dsig, bytes) or len(dsig) not in (0, 64):
        raise DecodeError("signatures must be empty or 64 bytes")
    parts = OpBytes.of(content, hlc, dot, dsig)
    nsig = bytes(key.sign(parts.envelope).signature)
    return Op._trusted(content, hlc, dot, dsig, nsig, parts.op_id), parts.wire(nsig)


def verify_envelope(op: Op, key: VerifyKey) -> None:
    """Raise SignatureError unless the op carries `key`'s valid node signature."""
    _verify(key, op.envelope_signing_bytes(), op.nsig, "node")


def node_id_for(key: VerifyKey) -> NodeId:
    """A node's id is its Ed25519 public key in unpadded base64url: self-certifying."""
    return NodeId(b64encode(bytes(key)))


def verify_key_for(node_id: str) -> VerifyKey:
    """The inverse of `node_id_for`: the public key a node id names; raises DecodeError."""
    raw = b64decode(node_id, max_bytes=32)
    if len(raw) != 32:
        raise DecodeError("a node id is a 32-byte Ed25519 public key in unpadded base64url")
    return VerifyKey(raw)


def _verify(key: VerifyKey, message: bytes, signature: bytes, who: str) -> None:
    if len(signature) != 64:
        raise SignatureError(f"missing {who} signature")
    try:
        key.verify(message, signature)
    except BadSignatureError as exc:
        raise SignatureError(f"bad {who} signature") from exc
