"""Version vectors (a dot-set lattice) and the portable cursor: laws, round-trips, strictness."""

from __future__ import annotations

import contextlib
import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import (
    ConvId,
    Cursor,
    DecodeError,
    Dot,
    NodeId,
    VersionVector,
    advance,
    b64encode,
    cursor_from_json,
    cursor_vv,
    decode_cursor,
    encode_cursor,
)
from tests.crdt.strategies import cursors, dot_sets, dots, ids, json_values, version_vectors

ALL_DOTS = [Dot(NodeId(o), s) for o in ("a", "b", "c", "d") for s in range(1, 15)]


def joined(*parts: VersionVector) -> VersionVector:
    out = VersionVector()
    for part in parts:
        out.merge(part)
    return out


# -- the dot set --------------------------------------------------------------------------------


@given(dot_sets)
def test_a_version_vector_holds_exactly_its_dots(present: frozenset[Dot]) -> None:
    vv = VersionVector.from_dots(present)
    assert [d for d in ALL_DOTS if d in vv] == [d for d in ALL_DOTS if d in present]
    assert len(vv) == len(present)
    assert vv.has_gaps() == any(
        Dot(d.origin, s) not in present for d in present for s in range(1, d.seq)
    )
    for origin in ("a", "b", "c", "d"):
        seqs = [d.seq for d in present if d.origin == origin]
        assert vv.top(NodeId(origin)) == max(seqs, default=0)
        assert vv.next_seq(NodeId(origin)) == max(seqs, default=0) + 1
        contiguous = 0
        while Dot(NodeId(origin), contiguous + 1) in present:
            contiguous += 1
        assert vv.contiguous().get(NodeId(origin), 0) == contiguous


@given(dot_sets, st.permutations(ALL_DOTS[:20]))
def test_add_order_does_not_matter(present: frozenset[Dot], order: list[Dot]) -> None:
    vv = VersionVector()
    for dot in order:
        if dot in present:
            assert vv.add(dot)
            assert not vv.add(dot)
    for dot in present:
        vv.add(dot)
    assert vv == VersionVector.from_dots(present)


@given(dot_sets, dot_sets)
def test_dots_beyond_is_the_set_difference(mine: frozenset[Dot], theirs: frozenset[Dot]) -> None:
    beyond = list(VersionVector.from_dots(mine).dots_beyond(VersionVector.from_dots(theirs)))
    assert beyond == sorted(mine - theirs, key=lambda d: (d.origin, d.seq))


@given(version_vectors, version_vectors, version_vectors)
def test_merge_is_commutative_associative_idempotent(
    a: VersionVector, b: VersionVector, c: VersionVector
) -> None:
    assert joined(a, b) == joined(b, a)
    ab_c = joined(a, b)
    ab_c.merge(c)
    a_bc = joined(a)
    a_bc.merge(joined(b, c))
    assert ab_c == a_bc
    aa = a.copy()
    aa.merge(aa)
    aa.merge(a)
    assert aa == a


@given(dot_sets, dot_sets)
def test_merge_is_the_union(x: frozenset[Dot], y: frozenset[Dot]) -> None:
    a, b = VersionVector.from_dots(x), VersionVector.from_dots(y)
    before = b.copy()
    a.merge(b)
    assert a == VersionVector.from_dots(x | y)
    assert b == before  # the argument is untouched


@given(version_vectors, dots)
def test_copies_are_independent(vv: VersionVector, dot: Dot) -> None:
    copy = vv.copy()
    copy.add(dot)
    copy.add(Dot(dot.origin, dot.seq + 20))
    assert vv == VersionVector.from_dots(d for d in ALL_DOTS if d in vv)


@pytest.mark.timeout(10)
def test_merging_a_huge_decoded_prefix_is_cheap() -> None:
    """A peer may claim {origin: 2**53-1}; the join must not walk every seq below it."""
    vv = VersionVector.from_dots([Dot(NodeId("a"), 3), Dot(NodeId("a"), 2**40 + 1)])
    vv.merge(VersionVector({NodeId("a"): 2**40, NodeId("b"): 2**53 - 1}))
    assert vv.contiguous() == {"a": 2**40 + 1, "b": 2**53 - 1}
    assert not vv.has_gaps()
    assert list(vv.dots_beyond(VersionVector({NodeId("a"): 2**40, NodeId("b"): 2**53 - 1}))) == [
        Dot(NodeId("a"), 2**40 + 1)
    ]


# -- version vector wire form -------------------------------------------------------------------


@given(version_vectors)
def test_version_vector_json_round_trip(vv: VersionVector) -> None:
    wire = json.loads(json.dumps(vv.to_json()))
    assert VersionVector.from_json(wire) == vv
    assert VersionVector.from_json(wire).to_json() == vv.to_json()
    for origin, seqs in wire["x"].items():  # extras are sorted, beyond a gap, never empty
        assert seqs == sorted(set(seqs)) and seqs[0] > wire["c"].get(origin, 0) + 1


@given(json_values)
def test_version_vector_from_any_json_raises_only_decode_error(value: object) -> None:
    for candidate in (
        value,
        {"c": value, "x": {}},
        {"c": {}, "x": value},
        {"c": {"a": value}, "x": {}},
    ):
        with contextlib.suppress(DecodeError):
            VersionVector.from_json(candidate)


@pytest.mark.parametrize(
    "wire",
    [
        {"c": {}},
        {"c": {}, "x": {}, "y": {}},
        {"c": {"a": True}, "x": {}},
        {"c": {"a": 1.0}, "x": {}},
        {"c": {"a": -1}, "x": {}},
        {"c": {"a": 2**53}, "x": {}},
        {"c": {"bad id": 1}, "x": {}},
        {"c": {"": 1}, "x": {}},
        {"c": {}, "x": {"a": [0]}},
        {"c": {}, "x": {"a": [False]}},
        {"c": {}, "x": {"a": 3}},
        {"c": {}, "x": {"bad id": []}},
        {"c": [], "x": {}},
        [],
    ],
)
def test_version_vector_from_json_is_strict(wire: object) -> None:
    with pytest.raises(DecodeError):
        VersionVector.from_json(wire)


# -- cursors ------------------------------------------------------------------------------------

URL_SAFE = set(string.ascii_letters + string.digits + "-_")


@given(cursors)
def test_cursor_round_trip(cursor: Cursor) -> None:
    text = encode_cursor(cursor)
    assert set(text) <= URL_SAFE
    assert decode_cursor(text) == cursor
    assert cursor_from_json(json.loads(json.dumps(cursor))) == cursor
    assert decode_cursor("") == {}


def test_encode_cursor_writes_the_normal_form() -> None:
    cursor = {ConvId("c1"): {NodeId("a"): 0, NodeId("b"): 2}, ConvId("c2"): {}}
    assert decode_cursor(encode_cursor(cursor)) == {"c1": {"b": 2}, "c2": {}}
    with pytest.raises(DecodeError):  # never hand out a cursor that decode_cursor refuses
        encode_cursor({ConvId("c1"): {NodeId("bad id"): 1}})


@given(st.one_of(st.text(), st.text(alphabet="".join(sorted(URL_SAFE)) + "=+/")))
def test_decode_cursor_of_any_text_raises_only_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        decode_cursor(text)


@given(st.one_of(st.binary(), st.none(), st.integers(), json_values))
def test_decode_cursor_of_any_bytes_or_object_raises_only_decode_error(value: object) -> None:
    candidates: list[object] = [value]
    if isinstance(value, bytes):
        candidates.append(b64encode(value))
    else:
        candidates.append(b64encode(json.dumps(value).encode()))
        candidates.append(b64encode(json.dumps({"v": 1, "vv": value}).encode()))
    for candidate in candidates:
        with contextlib.suppress(DecodeError):
            decode_cursor(candidate)


@given(json_values)
def test_cursor_from_any_json_raises_only_decode_error(value: object) -> None:
    for candidate in (value, {"c1": value}, {"c1": {"a": value}}):
        try:
            cursor = cursor_from_json(candidate)
        except DecodeError:
            continue
        assert decode_cursor(encode_cursor(cursor)) == cursor


@given(cursors, ids, version_vectors)
def test_advance_never_lowers_a_cursor(cursor: Cursor, conv: str, vv: VersionVector) -> None:
    before = {c: dict(entry) for c, entry in cursor.items()}
    advance(cursor, ConvId(conv), vv)
    entry = cursor[ConvId(conv)]
    old = before.get(ConvId(conv), {})
    for origin in {*old, *vv.contiguous()}:
        assert entry[origin] == max(old.get(origin, 0), vv.contiguous().get(origin, 0))
    assert {c: e for c, e in cursor.items() if c != conv} == {
        c: e for c, e in before.items() if c != conv
    }
    assert cursor_vv(cursor, ConvId(conv)).contiguous() == entry
