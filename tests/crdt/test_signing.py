"""Ed25519 over canonical JSON: Matrix interop vectors, device and node signatures, tampering.

Vectors are copied verbatim from the Matrix specification, appendix "Cryptographic Test
Vectors" (https://spec.matrix.org/unstable/appendices/#cryptographic-test-vectors, source
matrix-org/matrix-spec content/appendices.md). Matrix writes binary values in standard unpadded
base64; Yanzi's wire uses unpadded base64url, so the tests translate the alphabet.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from crdt.canonical import b64decode, b64encode, canonical_json
from crdt.errors import DecodeError, SignatureError
from crdt.hlc import Timestamp
from crdt.op import Content, ConvId, DeviceId, Dot, NodeId, Op, UserId
from crdt.signing import (
    node_id_for,
    sign_content,
    sign_envelope,
    verify_content,
    verify_envelope,
    verify_key_for,
)
from tests.crdt.test_op_codec import contents, dots, one_field_changed, ops, timestamps

# ---------------------------------------------------------------------------------------------
# Matrix spec vectors
# ---------------------------------------------------------------------------------------------

MATRIX_SIGNING_KEY_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
# The spec's SERVER_NAME is "domain" and KEY_ID "ed25519:1": each signature below is the one
# found at signatures["domain"]["ed25519:1"] in the spec's signed output.

# (object, signature) from "JSON Signing".
MATRIX_JSON_SIGNING: list[tuple[dict[str, Any], str]] = [
    (
        {},
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
    ),
    (
        {"one": 1, "two": "Two"},
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
    ),
]

# (event as given, hashes.sha256, signature) from "Event Signing". These exercise canonical
# JSON over a bigger object (nested, arrays, integers) through SHA-256 and Ed25519.
MATRIX_EVENT_SIGNING: list[tuple[dict[str, Any], str, str]] = [
    (
        {
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "signatures": {},
            "hashes": {},
            "type": "X",
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "unsigned": {"age_ts": 1000000},
        },
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos",
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg",
    ),
    (
        {
            "content": {"body": "Here is the message content"},
            "event_id": "$0:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "type": "m.room.message",
            "room_id": "!r:domain",
            "sender": "@u:domain",
            "signatures": {},
            "unsigned": {"age_ts": 1000000},
        },
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g",
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA",
    ),
]


def matrix_to_b64url(text: str) -> str:
    """Matrix's unpadded standard base64 → Yanzi's unpadded base64url (same bits)."""
    return text.replace("+", "-").replace("/", "_")


def _matrix_b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@pytest.fixture(scope="module")
def matrix_key() -> SigningKey:
    seed = _matrix_b64decode(MATRIX_SIGNING_KEY_SEED)
    assert len(seed) == 32
    return SigningKey(seed)


def test_the_matrix_seed_is_not_canonical_base64(matrix_key: SigningKey) -> None:
    # 43 characters carry 258 bits; the last 2 must be zero in canonical base64 (RFC 4648 §3.5),
    # but the spec's final "1" (0b110101) sets one. Lenient decoders accept it; Yanzi's decoder
    # refuses non-canonical spellings so each value has one wire form, and spells it "...XA0".
    with pytest.raises(DecodeError, match="non-canonical"):
        b64decode(matrix_to_b64url(MATRIX_SIGNING_KEY_SEED))
    canonical_seed = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW-3XA0"
    assert b64encode(matrix_key.encode()) == canonical_seed
    assert b64decode(canonical_seed) == matrix_key.encode()


@pytest.mark.parametrize(("obj", "signature"), MATRIX_JSON_SIGNING)
def test_matrix_json_signing_vectors(
    matrix_key: SigningKey, obj: dict[str, Any], signature: str
) -> None:
    ours = matrix_key.sign(canonical_json(obj)).signature
    assert b64encode(ours) == matrix_to_b64url(signature)
    # And the published signature verifies with our decoder.
    matrix_key.verify_key.verify(canonical_json(obj), b64decode(matrix_to_b64url(signature)))


# The fields that survive redaction (room versions 1-10) and the content keys kept per type.
_REDACTION_KEEPS = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts",
    "membership",
}  # fmt: skip


@pytest.mark.parametrize(("event", "content_hash", "signature"), MATRIX_EVENT_SIGNING)
def test_matrix_event_signing_vectors(
    matrix_key: SigningKey, event: dict[str, Any], content_hash: str, signature: str
) -> None:
    # Content hash: canonical JSON of the event without unsigned, signatures and hashes.
    hashed = {k: v for k, v in event.items() if k not in {"unsigned", "signatures", "hashes"}}
    digest = hashlib.sha256(canonical_json(hashed)).digest()
    assert b64encode(digest) == matrix_to_b64url(content_hash)
    # Signature: over the redacted event (which keeps the hash) without signatures/unsigned.
    # Neither vector's type keeps any content key, so redaction empties content.
    redacted = {k: v for k, v in event.items() if k in _REDACTION_KEEPS}
    redacted["content"] = {}
    redacted["hashes"] = {"sha256": content_hash}
    del redacted["signatures"]
    ours = matrix_key.sign(canonical_json(redacted)).signature
    assert b64encode(ours) == matrix_to_b64url(signature)


# ---------------------------------------------------------------------------------------------
# Yanzi's two signatures
# ---------------------------------------------------------------------------------------------

DEVICE_KEY = SigningKey(bytes(range(32)))
NODE_KEY = SigningKey(bytes(range(32, 64)))
OTHER_KEY = SigningKey(bytes(range(64, 96)))
NODE_ID = node_id_for(NODE_KEY.verify_key)


def _signed(content: Content, hlc: Timestamp, seq: int = 1) -> Op:
    op = Op(
        content=content,
        hlc=hlc,
        dot=Dot(NODE_ID, seq),
        dsig=sign_content(content, DEVICE_KEY),
    )
    return sign_envelope(op, NODE_KEY)


def _example() -> Op:
    content = Content(
        conv=ConvId("conv-1"),
        kind="message",
        author=UserId("alice"),
        device=DeviceId("phone"),
        attrs={"mime": "text/plain"},
        body=b"\x00ciphertext\xff",
    )
    return _signed(content, Timestamp(1_700_000_000_000, 0))


def test_sign_and_verify_content_and_envelope() -> None:
    op = _example()
    assert len(op.dsig) == 64 and len(op.nsig) == 64
    verify_content(op.content, op.dsig, DEVICE_KEY.verify_key)
    verify_envelope(op, NODE_KEY.verify_key)
    # Signatures survive the wire.
    back = Op.from_bytes(op.to_bytes())
    verify_content(back.content, back.dsig, DEVICE_KEY.verify_key)
    verify_envelope(back, NODE_KEY.verify_key)
    # Ed25519 is deterministic: signing again gives the same bytes.
    assert sign_envelope(op, NODE_KEY) == op
    assert sign_content(op.content, DEVICE_KEY) == op.dsig


def test_signatures_cover_the_documented_bytes() -> None:
    op = _example()
    DEVICE_KEY.verify_key.verify(canonical_json(op.content.to_json()), op.dsig)
    header = {**op.header_json(), "dsig": b64encode(op.dsig)}
    NODE_KEY.verify_key.verify(canonical_json(header), op.nsig)


def test_wrong_key_is_refused() -> None:
    op = _example()
    with pytest.raises(SignatureError):
        verify_envelope(op, OTHER_KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_envelope(op, DEVICE_KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_content(op.content, op.dsig, OTHER_KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_content(op.content, op.dsig, NODE_KEY.verify_key)


def test_missing_signatures_are_refused() -> None:
    op = _example()
    with pytest.raises(SignatureError, match="missing node signature"):
        verify_envelope(dataclasses.replace(op, nsig=b""), NODE_KEY.verify_key)
    with pytest.raises(SignatureError, match="missing device signature"):
        verify_content(op.content, b"", DEVICE_KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_content(op.content, op.dsig[:63], DEVICE_KEY.verify_key)


def test_the_signatures_are_not_interchangeable() -> None:
    op = _example()
    with pytest.raises(SignatureError):
        verify_content(op.content, op.nsig, NODE_KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_envelope(dataclasses.replace(op, nsig=op.dsig), DEVICE_KEY.verify_key)


def _flip_bit(data: bytes, bit: int) -> bytes:
    index, shift = divmod(bit % (len(data) * 8), 8)
    return data[:index] + bytes([data[index] ^ (1 << shift)]) + data[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda op: dataclasses.replace(
            op, content=dataclasses.replace(op.content, body=op.content.body + b"!")
        ),
        lambda op: dataclasses.replace(
            op, content=dataclasses.replace(op.content, body=_flip_bit(op.content.body, 0))
        ),
        lambda op: dataclasses.replace(op, hlc=Timestamp(op.hlc.l, op.hlc.c + 1)),
        lambda op: dataclasses.replace(op, hlc=Timestamp(op.hlc.l - 1, op.hlc.c)),
        lambda op: dataclasses.replace(op, dot=Dot(op.dot.origin, op.dot.seq + 1)),
        lambda op: dataclasses.replace(op, dot=Dot(NodeId("someone-else"), op.dot.seq)),
        lambda op: dataclasses.replace(op, dsig=_flip_bit(op.dsig, 100)),
        lambda op: dataclasses.replace(op, dsig=b""),
        lambda op: dataclasses.replace(op, nsig=_flip_bit(op.nsig, 7)),
        lambda op: dataclasses.replace(
            op, content=dataclasses.replace(op.content, author=UserId("mallory"))
        ),
        lambda op: dataclasses.replace(op, content=dataclasses.replace(op.content, kind="delete")),
        lambda op: dataclasses.replace(
            op, content=dataclasses.replace(op.content, attrs={"mime": "text/html"})
        ),
        lambda op: dataclasses.replace(op, content=dataclasses.replace(op.content, target="x")),
    ],
)
def test_tampering_any_field_breaks_the_envelope(tamper: Any) -> None:
    op = _example()
    tampered = tamper(op)
    assert tampered != op
    with pytest.raises(SignatureError):
        verify_envelope(tampered, NODE_KEY.verify_key)
    # The tampered op still round-trips the wire: rejection is the verifier's job, not the codec's.
    assert Op.from_bytes(tampered.to_bytes()) == tampered


@given(
    one_field_changed(), st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)
)
def test_any_header_change_breaks_both_signatures(
    case: tuple[Op, Op, str], device_seed: bytes, node_seed: bytes
) -> None:
    original, changed, field = case
    device, node = SigningKey(device_seed), SigningKey(node_seed)
    signed = sign_envelope(
        dataclasses.replace(original, dsig=sign_content(original.content, device)), node
    )
    verify_envelope(signed, node.verify_key)
    verify_content(signed.content, signed.dsig, device.verify_key)
    forged = dataclasses.replace(signed, content=changed.content, hlc=changed.hlc, dot=changed.dot)
    with pytest.raises(SignatureError):
        verify_envelope(forged, node.verify_key)
    if field not in {"hlc", "dot"}:
        with pytest.raises(SignatureError):
            verify_content(forged.content, forged.dsig, device.verify_key)


@given(ops(), st.integers(0, 64 * 8 - 1))
def test_any_bit_flip_in_a_signature_is_refused(op: Op, bit: int) -> None:
    signed = sign_envelope(
        dataclasses.replace(op, dsig=sign_content(op.content, DEVICE_KEY)), NODE_KEY
    )
    with pytest.raises(SignatureError):
        verify_envelope(
            dataclasses.replace(signed, nsig=_flip_bit(signed.nsig, bit)), NODE_KEY.verify_key
        )
    with pytest.raises(SignatureError):
        verify_envelope(
            dataclasses.replace(signed, dsig=_flip_bit(signed.dsig, bit)), NODE_KEY.verify_key
        )
    with pytest.raises(SignatureError):
        verify_content(signed.content, _flip_bit(signed.dsig, bit), DEVICE_KEY.verify_key)


@given(contents(), timestamps, dots)
def test_sign_envelope_keeps_the_op_id(content: Content, hlc: Timestamp, dot: Dot) -> None:
    op = Op(content=content, hlc=hlc, dot=dot, dsig=sign_content(content, DEVICE_KEY))
    signed = sign_envelope(op, NODE_KEY)
    assert signed.op_id == op.op_id
    assert dataclasses.replace(signed, nsig=b"") == op


# ---------------------------------------------------------------------------------------------
# Node ids
# ---------------------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
def test_node_id_round_trips(seed: bytes) -> None:
    key = SigningKey(seed).verify_key
    node_id = node_id_for(key)
    assert len(node_id) == 43
    assert b64decode(node_id) == bytes(key)
    assert verify_key_for(node_id) == key
    assert node_id_for(verify_key_for(node_id)) == node_id
    # A node id is a valid dot origin, so the envelope names its own verifier.
    assert Dot(node_id, 1).origin == node_id


def test_node_id_of_the_matrix_key(matrix_key: SigningKey) -> None:
    node_id = node_id_for(matrix_key.verify_key)
    assert verify_key_for(node_id) == matrix_key.verify_key
    assert b64decode(node_id) == bytes(matrix_key.verify_key)


@given(st.text(max_size=60) | st.binary(min_size=31, max_size=33).map(b64encode))
def test_verify_key_for_refuses_anything_but_a_32_byte_key(text: str) -> None:
    try:
        raw = b64decode(text)
    except DecodeError:
        raw = b""
    assume(len(raw) != 32)
    with pytest.raises(DecodeError):
        verify_key_for(text)


def test_verify_key_for_is_a_verify_key() -> None:
    assert isinstance(verify_key_for(NODE_ID), VerifyKey)
    verify_envelope(_example(), verify_key_for(_example().dot.origin))
