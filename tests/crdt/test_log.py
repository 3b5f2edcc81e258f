"""MessageLog properties: order-independence, merge laws, exact deltas, parking."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import (
    ConvId,
    CrdtError,
    DecodeError,
    Dot,
    MessageLog,
    Op,
    OpId,
    Outcome,
    VersionVector,
    dependencies,
)
from tests.crdt.strategies import (
    CONV,
    Origin,
    conversation_ops,
    create_group,
    log_of,
    shuffled_with_duplicates,
    view_bytes,
)


def snapshot(log: MessageLog) -> tuple[bytes, VersionVector, list[OpId]]:
    return log.view().to_bytes(), log.version_vector, [op.op_id for op in log.ops()]


def copy_of(log: MessageLog) -> MessageLog:
    return log_of(log.ops())


def view_without_parked(log: MessageLog) -> dict[str, Any]:
    view = log.view().to_json()
    del view["parked"]
    return view


def ready_subset(pool: Sequence[Op], present: set[OpId]) -> list[Op]:
    """Independently: the ops of `present` whose targets are present and ready, transitively.

    `pool` is in creation order and a writer only names ops it has seen, so a target always
    comes before the ops naming it: one pass suffices.
    """
    ready: list[Op] = []
    ready_ids: set[OpId] = set()
    for op in pool:
        if op.op_id in present and all(d in ready_ids for d in dependencies(op)):
            ready.append(op)
            ready_ids.add(op.op_id)
    return ready


@st.composite
def subsets(draw: st.DrawFn, pool: Sequence[Op]) -> list[Op]:
    """Some of `pool`, in a drawn delivery order."""
    chosen = draw(st.lists(st.booleans(), min_size=len(pool), max_size=len(pool)))
    return draw(st.permutations([op for op, keep in zip(pool, chosen, strict=True) if keep]))


# -- order independence -------------------------------------------------------------------------


@given(st.data())
def test_any_permutation_and_duplication_gives_identical_view(data: st.DataObject) -> None:
    ops = data.draw(conversation_ops())
    reference = log_of(ops)
    assert not reference.parked  # every target was seen by its writer
    expected = reference.view().to_bytes()
    for _ in range(2):
        order = data.draw(shuffled_with_duplicates(ops))
        log = MessageLog(CONV)
        outcomes = [log.apply(op) for op in order]
        assert outcomes.count(Outcome.DUPLICATE) == len(order) - len(ops)
        assert log.view().to_bytes() == expected
        assert log.version_vector == reference.version_vector
        assert not log.parked


@given(st.data())
def test_view_after_every_delivery_matches_a_fresh_fold(data: st.DataObject) -> None:
    """The incremental fold (and its lazy rebuild on late arrivals) equals folding from scratch."""
    ops = data.draw(conversation_ops(max_steps=20))
    order = data.draw(shuffled_with_duplicates(ops))
    log = MessageLog(CONV)
    for i, op in enumerate(order, start=1):
        log.apply(op)
        if data.draw(st.booleans(), label="read now"):
            fresh = log_of(sorted(order[:i], key=lambda o: o.order_key))
            assert log.view().to_bytes() == fresh.view().to_bytes()


def test_duplicate_outcome_and_refusals() -> None:
    origin = Origin("n0")
    create = create_group(origin, 1)
    msg = origin.stamp("message", "u1", 2, body=b"hi")
    log = log_of([create])
    assert log.apply(msg) is Outcome.NEW
    assert log.apply(msg) is Outcome.DUPLICATE
    forged = Op(content=msg.content, hlc=msg.hlc, dot=Dot(msg.dot.origin, 1))  # equivocation
    with pytest.raises(CrdtError):
        log.apply(forged)
    with pytest.raises(CrdtError):
        MessageLog(ConvId("other")).apply(msg)
    assert len(log) == 2 and msg.op_id in log and log.by_dot(msg.dot) == msg


# -- merge laws ---------------------------------------------------------------------------------


@given(st.data())
def test_log_merge_is_commutative_associative_idempotent(data: st.DataObject) -> None:
    pool = data.draw(conversation_ops(max_steps=20))
    a, b, c = (log_of(data.draw(subsets(pool))) for _ in range(3))

    ab, ba = copy_of(a), copy_of(b)
    ab.merge(b)
    ba.merge(a)
    assert snapshot(ab) == snapshot(ba)
    assert snapshot(ab) == snapshot(log_of([*a.ops(), *b.ops()]))

    ab_c = copy_of(ab)
    ab_c.merge(c)
    bc = copy_of(b)
    bc.merge(c)
    a_bc = copy_of(a)
    a_bc.merge(bc)
    assert snapshot(ab_c) == snapshot(a_bc)

    aa = copy_of(a)
    aa.merge(a)
    aa.merge(aa)
    assert snapshot(aa) == snapshot(a)


# -- deltas -------------------------------------------------------------------------------------


@given(st.data())
def test_missing_for_is_exactly_what_the_other_side_lacks(data: st.DataObject) -> None:
    pool = data.draw(conversation_ops())
    a, b = log_of(data.draw(subsets(pool))), log_of(data.draw(subsets(pool)))
    a_ids = {op.op_id for op in a.ops()}
    b_ids = {op.op_id for op in b.ops()}

    missing = a.missing_for(b.version_vector)
    lacking = [op for op in a.ops() if op.op_id not in b_ids]  # ops() is in total order
    assert missing == lacking

    # A client cursor keeps only the contiguous part: it may get ops again, never fewer.
    portable = a.missing_for(VersionVector(b.version_vector.contiguous()))
    assert {op.op_id for op in missing} <= {op.op_id for op in portable}

    for op in missing:
        assert b.apply(op) is not Outcome.DUPLICATE
    assert a_ids <= {op.op_id for op in b.ops()}
    assert not list(a.version_vector.dots_beyond(b.version_vector))
    assert a.missing_for(b.version_vector) == []
    for op in portable:
        b.apply(op)  # the extras de-duplicate
    assert len(b) == len(a_ids | b_ids)


@given(st.data())
def test_missing_for_pages_are_per_origin_prefixes(data: st.DataObject) -> None:
    pool = data.draw(conversation_ops())
    a, b = log_of(data.draw(subsets(pool))), log_of(data.draw(subsets(pool)))
    limit = data.draw(st.integers(0, 6))
    everything = a.missing_for(b.version_vector)
    page = a.missing_for(b.version_vector, limit)
    assert page == everything[:limit]
    for origin in {op.dot.origin for op in everything}:
        all_seqs = [op.dot.seq for op in everything if op.dot.origin == origin]
        page_seqs = [op.dot.seq for op in page if op.dot.origin == origin]
        assert all_seqs == sorted(all_seqs)
        assert page_seqs == all_seqs[: len(page_seqs)]

    if limit:
        rounds = 0
        while page := a.missing_for(b.version_vector, limit):
            b.apply_all(page)
            rounds += 1
        assert rounds == -(-len(everything) // limit)
        assert {op.op_id for op in a.ops()} <= {op.op_id for op in b.ops()}


def test_missing_for_refuses_a_negative_limit() -> None:
    log = log_of([create_group(Origin("n0"), 1)])
    with pytest.raises(DecodeError):  # a CrdtError and a ValueError
        log.missing_for(VersionVector(), -1)


# -- parking ------------------------------------------------------------------------------------


@given(st.data())
def test_ops_wait_for_their_targets(data: st.DataObject) -> None:
    pool = data.draw(conversation_ops())
    first = data.draw(subsets(pool))
    log = log_of(first)
    present = {op.op_id for op in first}
    ready = ready_subset(pool, present)
    ready_ids = {op.op_id for op in ready}

    assert log.parked == present - ready_ids
    vv = log.version_vector
    assert all(op.dot in vv for op in first)  # parked ops count: anti-entropy won't refetch them
    # Parked ops have no effect on the view: it is the view of the ready ops alone.
    assert view_without_parked(log) == view_without_parked(log_of(ready))
    assert log.view().parked == tuple(sorted(present - ready_ids))

    rest = data.draw(st.permutations([op for op in pool if op.op_id not in present]))
    for op in rest:
        log.apply(op)
    assert not log.parked
    assert log.view().to_bytes() == view_bytes(pool)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_parked_chain_unreact_react_message(order: tuple[int, ...]) -> None:
    """unreact waits on its react, which waits on the message, whatever arrives first."""
    origin = Origin("n0")
    create = create_group(origin, 1)
    msg = origin.stamp("message", "u1", 2, body=b"hi")
    react = origin.stamp("react", "u2", 3, target=msg.op_id, attrs={"key": "+1"})
    unreact = origin.stamp("unreact", "u2", 4, target=msg.op_id, attrs={"removes": [react.op_id]})
    ops = [create, msg, react, unreact]

    log = MessageLog(CONV)
    arrived: set[int] = set()
    for i in order:
        outcome = log.apply(ops[i])
        arrived.add(i)
        waiting = (i == 2 and 1 not in arrived) or (i == 3 and not {1, 2} <= arrived)
        assert outcome is (Outcome.PARKED if waiting else Outcome.NEW)
        if 1 not in arrived:
            assert log.state.message(msg.op_id) is None
        assert (react.op_id in log.parked) == (2 in arrived and 1 not in arrived)
        assert (unreact.op_id in log.parked) == (3 in arrived and not {1, 2} <= arrived)

    assert not log.parked
    state = log.state
    shown = state.message(msg.op_id)
    assert shown is not None and shown.reactions == {}
    assert log.view().to_bytes() == view_bytes(ops)


def test_an_op_waiting_on_two_targets_waits_for_both() -> None:
    origin = Origin("n0")
    create = create_group(origin, 1)
    msg = origin.stamp("message", "u1", 2)
    r1 = origin.stamp("react", "u1", 3, target=msg.op_id, attrs={"key": "+1"})
    r2 = origin.stamp("react", "u1", 4, target=msg.op_id, attrs={"key": "x"})
    both = origin.stamp(
        "unreact", "u1", 5, target=msg.op_id, attrs={"removes": [r1.op_id, r2.op_id]}
    )
    log = log_of([create, both, r2, msg])
    assert log.parked == {both.op_id}
    shown = log.state.message(msg.op_id)
    assert shown is not None and shown.reaction_summary() == {"x": ["u1"]}
    assert log.apply(r1) is Outcome.NEW
    assert not log.parked
    shown = log.state.message(msg.op_id)
    assert shown is not None and shown.reactions == {}
