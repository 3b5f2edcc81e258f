"""The op wire codec: round trips, content addressing, and decoders that raise only DecodeError.

The strategies here (`ids`, `contents`, `ops`, `op_json`) are imported by other crdt tests.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from typing import Any, cast

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from crdt.canonical import MAX_SAFE_INT, b64encode, canonical_json, strict_loads
from crdt.errors import DecodeError
from crdt.hlc import MAX_C, MAX_L, Timestamp
from crdt.op import (
    MAX_ATTR_STR,
    OP_KINDS,
    Content,
    ConvId,
    DeviceId,
    Dot,
    NodeId,
    Op,
    OpKind,
    UserId,
    compute_op_id,
)
from crdt.signing import sign_envelope, stamp, verify_envelope

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@=+/-"
ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128)
short_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=12)
kinds = cast(st.SearchStrategy[OpKind], st.sampled_from(sorted(OP_KINDS)))
attr_values = (
    st.text(max_size=40)
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.booleans()
    | st.lists(st.text(max_size=20), max_size=5)
)
attrs = st.dictionaries(st.text(min_size=1, max_size=64), attr_values, max_size=5)
signatures = st.just(b"") | st.binary(min_size=64, max_size=64)
STAMP_KEY = SigningKey(bytes(range(32)))


@st.composite
def contents(draw: st.DrawFn) -> Content:
    return Content(
        conv=ConvId(draw(short_ids | ids)),
        kind=draw(kinds),
        author=UserId(draw(short_ids | ids)),
        device=DeviceId(draw(short_ids)),
        target=draw(st.just("") | short_ids),
        attrs=draw(attrs),
        body=draw(st.binary(max_size=200)),
    )


timestamps = st.builds(
    Timestamp, st.integers(0, MAX_L) | st.integers(0, 2000), st.integers(0, MAX_C) | st.just(0)
)
dots = st.builds(Dot, short_ids.map(NodeId), st.integers(1, MAX_SAFE_INT) | st.integers(1, 50))


@st.composite
def ops(draw: st.DrawFn) -> Op:
    return Op(
        content=draw(contents()),
        hlc=draw(timestamps),
        dot=draw(dots),
        dsig=draw(signatures),
        nsig=draw(signatures),
    )


op_json = ops().map(lambda op: op.to_json())


# ---------------------------------------------------------------------------------------------
# Round trips and content addressing
# ---------------------------------------------------------------------------------------------


@given(ops())
def test_op_round_trips_through_bytes(op: Op) -> None:
    wire = op.to_bytes()
    back = Op.from_bytes(wire)
    assert back == op
    assert back.op_id == op.op_id
    assert back.to_bytes() == wire
    assert Op.from_bytes(wire.decode("utf-8")) == op
    assert Op.from_json(strict_loads(wire)) == op
    assert canonical_json(op.to_json()) == wire  # the wire form is canonical


@given(ops())
def test_op_id_is_stable_and_ignores_signatures(op: Op) -> None:
    assert op.op_id == compute_op_id(op.content, op.hlc, op.dot)
    rebuilt = Op(content=op.content, hlc=op.hlc, dot=op.dot, dsig=op.dsig, nsig=op.nsig)
    assert rebuilt.op_id == op.op_id
    # Signatures are not part of the header that op_id hashes (module docstring of crdt.op).
    unsigned = dataclasses.replace(op, dsig=b"", nsig=b"")
    assert unsigned.op_id == op.op_id
    assert len(op.op_id) == 43  # SHA-256, unpadded base64url


@given(ops())
def test_spliced_encodings_equal_canonical_json_of_the_whole_object(op: Op) -> None:
    # OpBytes splices members in key order instead of encoding each object whole.
    header = op.header_json()
    digest = hashlib.sha256(canonical_json(header)).digest()
    assert op.op_id == b64encode(digest)
    assert op.envelope_signing_bytes() == canonical_json({**header, "dsig": b64encode(op.dsig)})
    assert op.to_bytes() == canonical_json(op.to_json())


@given(contents(), timestamps, dots, signatures)
def test_stamp_is_sign_envelope_of_a_new_op(
    content: Content, hlc: Timestamp, dot: Dot, dsig: bytes
) -> None:
    op, wire = stamp(content, hlc, dot, dsig, STAMP_KEY)
    expected = sign_envelope(Op(content=content, hlc=hlc, dot=dot, dsig=dsig), STAMP_KEY)
    assert op == expected and op.op_id == expected.op_id
    assert wire == expected.to_bytes()
    verify_envelope(Op.from_bytes(wire), STAMP_KEY.verify_key)


def test_stamp_refuses_a_malformed_device_signature() -> None:
    content = Content(conv=ConvId("c"), kind="message", author=UserId("u"), device=DeviceId("d"))
    with pytest.raises(DecodeError):
        stamp(content, Timestamp(1, 0), Dot(NodeId("n"), 1), b"short", STAMP_KEY)


def test_op_id_known_answer() -> None:
    # Pins the hashing rule: a change here breaks every stored op id and every peer.
    op = Op(
        content=Content(
            conv=ConvId("c1"), kind="message", author=UserId("u1"), device=DeviceId("d1")
        ),
        hlc=Timestamp(1000, 0),
        dot=Dot(NodeId("n1"), 1),
    )
    assert op.to_bytes() == (
        b'{"content":{"attrs":{},"author":"u1","body":"","conv":"c1","device":"d1",'
        b'"kind":"message","target":"","v":1},"dot":["n1",1],"dsig":"","hlc":[1000,0],"nsig":""}'
    )
    header = (
        b'{"content":{"attrs":{},"author":"u1","body":"","conv":"c1","device":"d1",'
        b'"kind":"message","target":"","v":1},"dot":["n1",1],"hlc":[1000,0]}'
    )
    assert op.op_id == b64encode(hashlib.sha256(header).digest())


_CONTENT_FIELDS = ("conv", "kind", "author", "device", "target", "attrs", "body")


@st.composite
def one_field_changed(draw: st.DrawFn) -> tuple[Op, Op, str]:
    op = draw(ops())
    field = draw(st.sampled_from((*_CONTENT_FIELDS, "hlc", "dot")))
    new_values: dict[str, st.SearchStrategy[Any]] = {
        "conv": ids,
        "kind": kinds,
        "author": ids,
        "device": short_ids,
        "target": st.just("") | short_ids,
        "attrs": attrs,
        "body": st.binary(max_size=50),
        "hlc": timestamps,
        "dot": dots,
    }
    value = draw(new_values[field])
    if field in _CONTENT_FIELDS:
        assume(getattr(op.content, field) != value)
        changed = dataclasses.replace(op, content=dataclasses.replace(op.content, **{field: value}))
    else:
        assume(getattr(op, field) != value)
        changed = dataclasses.replace(op, **{field: value})
    return op, changed, field


@given(one_field_changed())
def test_changing_any_header_field_changes_the_op_id(case: tuple[Op, Op, str]) -> None:
    op, changed, _field = case
    assert changed.op_id != op.op_id
    assert changed.to_bytes() != op.to_bytes()


# ---------------------------------------------------------------------------------------------
# Decoders raise only DecodeError
# ---------------------------------------------------------------------------------------------


def _decode_or_decode_error(value: Any) -> Op | None:
    try:
        return Op.from_json(value)
    except DecodeError:
        return None


@given(st.binary(max_size=400))
def test_from_bytes_on_any_bytes_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Op.from_bytes(data)


@given(st.text(max_size=400))
def test_from_bytes_on_any_text_raises_only_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        Op.from_bytes(text)


safe_json = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Python values a careless caller might pass straight to from_json, beyond what JSON can spell.
wild_values = (
    safe_json | st.floats() | st.integers() | st.binary(max_size=8) | st.tuples(st.integers())
)


@given(wild_values)
def test_from_json_on_any_value_raises_only_decode_error(value: Any) -> None:
    _decode_or_decode_error(value)


_PATHS = [
    ("content",),
    ("hlc",),
    ("dot",),
    ("dsig",),
    ("nsig",),
    *(("content", field) for field in ("v", *_CONTENT_FIELDS)),
    ("hlc", 0),
    ("hlc", 1),
    ("dot", 0),
    ("dot", 1),
]


def _unhashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return True
    return False


@given(op_json, st.sampled_from(_PATHS), wild_values)
def test_from_json_with_one_field_replaced_raises_only_decode_error(
    wire: dict[str, Any], path: tuple[str | int, ...], value: Any
) -> None:
    mutated = copy.deepcopy(wire)
    target: Any = mutated
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    op = _decode_or_decode_error(mutated)
    if op is not None:
        # Whatever is accepted must be a real op that re-encodes to a decodable wire form.
        assert Op.from_bytes(op.to_bytes()) == op


@given(op_json, st.sampled_from(["content", "hlc", "dot", "dsig", "nsig"]))
def test_from_json_with_a_field_missing_is_refused(wire: dict[str, Any], field: str) -> None:
    del wire[field]
    with pytest.raises(DecodeError):
        Op.from_json(wire)


@given(op_json, st.sampled_from(["v", *_CONTENT_FIELDS]))
def test_from_json_with_a_content_field_missing_is_refused(
    wire: dict[str, Any], field: str
) -> None:
    del wire["content"][field]
    with pytest.raises(DecodeError):
        Op.from_json(wire)


@given(op_json, st.text(max_size=10), safe_json)
def test_from_json_with_an_extra_field_is_refused(
    wire: dict[str, Any], key: str, value: Any
) -> None:
    assume(key not in wire)
    wire[key] = value
    with pytest.raises(DecodeError):
        Op.from_json(wire)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("content", "v"), 2),
        (("content", "v"), True),
        (("content", "kind"), "mesage"),
        (("content", "conv"), ""),
        (("content", "conv"), "x" * 129),
        (("content", "conv"), "has space"),
        (("content", "target"), "bad target"),
        (("content", "attrs"), {"": 1}),
        (("content", "attrs"), {"k": "x" * (MAX_ATTR_STR + 1)}),
        (("content", "attrs"), {"k": [1]}),
        (("content", "attrs"), {"k": None}),
        (("content", "attrs"), {"k": {"nested": 1}}),
        (("content", "body"), "not base64!"),
        (("content", "body"), "Zh"),
        (("hlc",), [-1, 0]),
        (("hlc",), [0, 0, 0]),
        (("dot",), ["n", 0]),
        (("dot",), ["", 1]),
        (("dsig",), b64encode(bytes(63))),
        (("nsig",), b64encode(bytes(65))),
    ],
)
def test_from_json_refuses(path: tuple[str, ...], value: Any) -> None:
    wire = Op(
        content=Content(conv=ConvId("c"), kind="message", author=UserId("u"), device=DeviceId("d")),
        hlc=Timestamp(1, 0),
        dot=Dot(NodeId("n"), 1),
    ).to_json()
    target: Any = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(DecodeError):
        Op.from_json(wire)


@pytest.mark.parametrize("kind", [[], {}, ["message"]])
def test_unhashable_kind_is_a_decode_error(kind: Any) -> None:
    wire = Op(
        content=Content(conv=ConvId("c"), kind="message", author=UserId("u"), device=DeviceId("d")),
        hlc=Timestamp(1, 0),
        dot=Dot(NodeId("n"), 1),
    ).to_json()
    wire["content"]["kind"] = kind
    with pytest.raises(DecodeError):
        Op.from_json(wire)
