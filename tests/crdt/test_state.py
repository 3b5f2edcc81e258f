"""Who wins each conflict, on every replica, whatever arrives first (docs/crdt.md)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import (
    AttrValue,
    ConversationState,
    DecodeError,
    MessageLog,
    Op,
    OpKind,
    OrderKey,
    ReadMarkers,
    b64encode,
    marker_from_json,
)
from tests.crdt.strategies import (
    CONV,
    OWNER,
    REACTION_KEYS,
    USERS,
    Origin,
    create_group,
    json_values,
    log_of,
    shuffled_with_duplicates,
)

u0, u1, u2, u3, u4 = USERS


def converged(ops: Sequence[Op]) -> ConversationState:
    """The state every delivery order gives (all of them for small sets), asserted identical."""
    orders: list[Sequence[Op]]
    if len(ops) <= 6:
        orders = list(itertools.permutations(ops))
    else:
        listed = list(ops)
        orders = [listed[::-1], *(listed[i:] + listed[:i] for i in range(len(listed)))]
    logs = [log_of(order) for order in orders]
    expected = logs[0].view().to_bytes()
    for log in logs:
        assert log.view().to_bytes() == expected
        assert log.version_vector == logs[0].version_vector
        assert not log.parked
    return logs[0].state


def pair(now: int = 1, members: Sequence[str] = (u1, u2)) -> tuple[Origin, Origin, Op]:
    """Two nodes that both hold the group's create op."""
    a, b = Origin("n0"), Origin("n1")
    create = create_group(a, now, members=members)
    b.receive(create, now)
    return a, b, create


def body_of(state: ConversationState, op: Op) -> bytes | None:
    shown = state.message(op.op_id)
    return None if shown is None else shown.body


# -- edits --------------------------------------------------------------------------------------


def test_only_the_author_edits() -> None:
    a, _, create = pair()
    msg = a.stamp("message", u1, 2, body=b"hi")
    by_owner = a.stamp("edit", u0, 3, target=msg.op_id, body=b"owner")
    by_other = a.stamp("edit", u2, 4, target=msg.op_id, body=b"other")
    state = converged([create, msg, by_owner, by_other])
    assert body_of(state, msg) == b"hi"
    assert {by_owner.op_id, by_other.op_id} <= state.hidden

    by_author = a.stamp("edit", u1, 5, target=msg.op_id, body=b"mine")
    state = converged([create, msg, by_owner, by_other, by_author])
    shown = state.message(msg.op_id)
    assert shown is not None and shown.body == b"mine" and shown.edited_by == by_author.op_id


@pytest.mark.parametrize(("now_a", "now_b"), [(10, 10), (11, 10), (10, 11)])
def test_last_edit_in_order_wins(now_a: int, now_b: int) -> None:
    a, b, create = pair()
    msg = a.stamp("message", u1, 2, body=b"hi")
    b.receive(msg, 2)
    edit_a = a.stamp("edit", u1, now_a, target=msg.op_id, body=b"from a")
    edit_b = b.stamp("edit", u1, now_b, target=msg.op_id, body=b"from b")
    winner = max(edit_a, edit_b, key=lambda op: op.order_key)  # an (l, c) tie: origin decides
    state = converged([create, msg, edit_a, edit_b])
    assert body_of(state, msg) == winner.content.body


# -- deletes ------------------------------------------------------------------------------------


def test_delete_wins_over_edits_and_purges_body_and_reactions() -> None:
    a, b, create = pair()
    msg = a.stamp("message", u1, 2, body=b"secret")
    b.receive(msg, 2)
    early_edit = a.stamp("edit", u1, 3, target=msg.op_id, body=b"edited")
    react = a.stamp("react", u2, 4, target=msg.op_id, attrs={"key": "+1"})
    delete = a.stamp("delete", u1, 5, target=msg.op_id)
    # b has not seen the delete: its edit and reaction come later in the order.
    late_edit = b.stamp("edit", u1, 9, target=msg.op_id, body=b"too late")
    late_react = b.stamp("react", u2, 9, target=msg.op_id, attrs={"key": "x"})
    ops = [create, msg, early_edit, react, delete, late_edit, late_react]
    for order in itertools.permutations(ops[2:]):
        log = log_of([*ops[:2], *order])
        state = log.state
        shown = state.message(msg.op_id)
        assert shown is not None and shown.deleted_by == delete.op_id
        assert shown.body == b"" and shown.reactions == {}
        assert {late_edit.op_id, late_react.op_id} <= state.hidden
        assert b64encode(b"secret").encode() not in log.view().to_bytes()
        assert log.view().to_bytes() == log_of(ops).view().to_bytes()


def test_who_may_delete() -> None:
    a, _, create = pair(members=(u1, u2, u3))
    promote = a.stamp("member_role", u0, 2, target=u3, attrs={"role": "admin"})
    m1 = a.stamp("message", u1, 3)
    m2 = a.stamp("message", u1, 4)
    by_member = a.stamp("delete", u2, 5, target=m1.op_id)
    by_admin = a.stamp("delete", u3, 6, target=m2.op_id)
    state = converged([create, promote, m1, m2, by_member, by_admin])
    assert by_member.op_id in state.hidden
    m1_state, m2_state = state.message(m1.op_id), state.message(m2.op_id)
    assert m1_state is not None and not m1_state.deleted
    assert m2_state is not None and m2_state.deleted


# -- reactions ----------------------------------------------------------------------------------


def test_reaction_add_wins_over_an_unseen_remove() -> None:
    a, b, create = pair()
    msg = a.stamp("message", u1, 2)
    first = a.stamp("react", u2, 3, target=msg.op_id, attrs={"key": "+1"})
    b.receive(msg, 3)
    b.receive(first, 3)
    remove = b.stamp("unreact", u2, 4, target=msg.op_id, attrs={"removes": [first.op_id]})
    again = a.stamp("react", u2, 4, target=msg.op_id, attrs={"key": "+1"})  # a never saw remove
    state = converged([create, msg, first, remove, again])
    shown = state.message(msg.op_id)
    assert shown is not None
    assert shown.reaction_summary() == {"+1": [u2]}
    assert set(shown.reactions["+1"]) == {again.op_id}


def test_only_the_reactor_removes_a_reaction() -> None:
    a, _, create = pair()
    msg = a.stamp("message", u1, 2)
    react = a.stamp("react", u2, 3, target=msg.op_id, attrs={"key": "+1"})
    theft = a.stamp("unreact", u1, 4, target=msg.op_id, attrs={"removes": [react.op_id]})
    bad_key = a.stamp("react", u1, 5, target=msg.op_id, attrs={"key": ""})
    state = converged([create, msg, react, theft, bad_key])
    shown = state.message(msg.op_id)
    assert shown is not None and shown.reaction_summary() == {"+1": [u2]}
    assert {theft.op_id, bad_key.op_id} <= state.hidden


def test_an_unreact_may_name_a_reaction_twice() -> None:
    a, _, create = pair()
    msg = a.stamp("message", u1, 2)
    keep = a.stamp("react", u1, 3, target=msg.op_id, attrs={"key": "+1"})
    react = a.stamp("react", u1, 4, target=msg.op_id, attrs={"key": "x"})
    twice = a.stamp(
        "unreact", u1, 5, target=msg.op_id, attrs={"removes": [react.op_id, react.op_id]}
    )
    state = converged([create, msg, keep, react, twice])
    shown = state.message(msg.op_id)
    assert shown is not None and shown.reaction_summary() == {"+1": [u1]}
    assert twice.op_id not in state.hidden


# -- membership ---------------------------------------------------------------------------------


@pytest.mark.parametrize("post_first", [True, False])
def test_removal_and_post_resolve_identically_everywhere(post_first: bool) -> None:
    """Admin removes u1 on n0 while u1 posts on n1: the order decides, the same on every replica."""
    admin_node, member_node, create = pair()
    remove_at, post_at = (20, 10) if post_first else (10, 20)
    remove = admin_node.stamp("member_remove", u0, remove_at, target=u1)
    post = member_node.stamp("message", u1, post_at, body=b"am I still here?")
    assert (post.order_key < remove.order_key) is post_first

    # Each replica receives the other's op after its own, then a third gets both in either order.
    admin_node.receive(post, 30)
    member_node.receive(remove, 30)
    third_a, third_b = log_of([create, post, remove]), log_of([create, remove, post])
    views = {log.view().to_bytes() for log in (admin_node.log, member_node.log, third_a, third_b)}
    assert len(views) == 1
    state = third_a.state
    assert u1 not in state.members
    assert (state.message(post.op_id) is not None) is post_first
    assert (post.op_id in state.hidden) is not post_first

    # Whatever happened to the post, u1 cannot touch anything after the removal.
    late_edit = admin_node.stamp("edit", u1, 40, target=post.op_id, body=b"x")
    state = converged([create, post, remove, late_edit])
    assert late_edit.op_id in state.hidden


@pytest.mark.parametrize("demote_first", [True, False])
def test_role_race_demoted_admin_adds_a_member(demote_first: bool) -> None:
    a, b, create = pair()
    promote = a.stamp("member_role", u0, 2, target=u1, attrs={"role": "admin"})
    b.receive(promote, 2)
    demote_at, add_at = (5, 6) if demote_first else (6, 5)
    demote = a.stamp("member_role", u0, demote_at, target=u1, attrs={"role": "member"})
    add = b.stamp("member_add", u1, add_at, target=u4, attrs={"role": "member"})
    state = converged([create, promote, demote, add])
    assert state.role(u1) == "member"
    assert state.is_member(u4) is not demote_first
    assert (add.op_id in state.hidden) is demote_first


def test_role_race_two_owners_demote_each_other() -> None:
    a, b, create = pair(members=(u1, u3))
    crown = a.stamp("member_role", u0, 2, target=u3, attrs={"role": "owner"})
    b.receive(crown, 2)
    by_u0 = a.stamp("member_role", u0, 10, target=u3, attrs={"role": "member"})
    by_u3 = b.stamp("member_role", u3, 10, target=u0, attrs={"role": "member"})
    first, second = sorted([by_u0, by_u3], key=lambda op: op.order_key)
    state = converged([create, crown, by_u0, by_u3])
    assert second.op_id in state.hidden  # its author was no longer an owner at its position
    assert state.role(first.author) == "owner"
    assert state.role(second.author) == "member"


def test_membership_rules() -> None:
    a, _, create = pair(members=(u1,))
    ops = [
        create,
        a.stamp("member_add", u0, 2, target=u2, attrs={"role": "admin"}),  # owner: ok
        a.stamp("member_add", u2, 3, target=u3, attrs={"role": "owner"}),  # admin above own rank
        a.stamp("member_add", u2, 4, target=u3, attrs={"role": "member"}),  # ok
        a.stamp("member_add", u1, 5, target=u4, attrs={"role": "member"}),  # member can't add
        a.stamp("member_add", u0, 6, target=u3, attrs={"role": "member"}),  # already a member
        a.stamp("member_remove", u2, 7, target=u0, attrs={}),  # admin removes owner: no
        a.stamp("member_role", u2, 8, target=u1, attrs={"role": "admin"}),  # only owners
        a.stamp("member_role", u0, 9, target=u1, attrs={"role": "king"}),  # no such role
        a.stamp("member_remove", u3, 10, target=u3, attrs={}),  # leaving: ok
        a.stamp("member_add", u0, 11, target=u4, attrs={"role": ["admin"]}),  # role not a str
        a.stamp("member_role", u0, 12, target=u1, attrs={}),  # a role change names its role
        a.stamp("member_add", u0, 13, target=u4, attrs={}),  # an add defaults to member
    ]
    state = converged(ops)
    assert state.members == {u0: "owner", u1: "member", u2: "admin", u4: "member"}
    hidden = [i for i, op in enumerate(ops) if op.op_id in state.hidden]
    assert hidden == [2, 4, 5, 6, 7, 8, 10, 11]


def test_direct_conversation_refuses_member_ops() -> None:
    a = Origin("n0")
    create = a.stamp("create", u0, 1, attrs={"type": "direct", "members": [u1]})
    ops = [
        create,
        a.stamp("member_add", u0, 2, target=u2, attrs={"role": "member"}),
        a.stamp("member_remove", u0, 3, target=u1),
        a.stamp("member_role", u0, 4, target=u1, attrs={"role": "admin"}),
        a.stamp("message", u2, 5),  # not a member
    ]
    settings = a.stamp("settings", u1, 6, attrs={"title": "us"})
    state = converged([*ops, settings])
    assert state.conv_type == "direct"
    assert state.members == {u0: "member", u1: "member"}
    assert {op.op_id for op in ops[1:]} <= state.hidden
    assert state.settings == {"title": "us"}


def test_only_the_first_valid_create_counts() -> None:
    a, b = Origin("n0"), Origin("n1")
    invalid = a.stamp("create", u2, 1, attrs={"type": "channel"})
    direct_to_self = a.stamp("create", u2, 2, attrs={"type": "direct", "members": [u2]})
    first = b.stamp("create", u1, 3, attrs={"type": "group", "members": [u2], "title": "b"})
    second = create_group(a, 4)
    state = converged([invalid, direct_to_self, first, second])
    assert state.members == {u1: "owner", u2: "member"}
    assert state.settings == {"title": "b"}
    assert {invalid.op_id, direct_to_self.op_id, second.op_id} == state.hidden


def test_settings_need_an_admin_in_a_group() -> None:
    a, _, create = pair()
    by_member = a.stamp("settings", u1, 2, attrs={"title": "mine"})
    by_owner = a.stamp("settings", OWNER, 3, attrs={"title": "ours", "mute": True})
    state = converged([create, by_member, by_owner])
    assert state.settings == {"title": "ours", "mute": True}
    assert by_member.op_id in state.hidden


# -- reading: unread counts and pages -----------------------------------------------------------


def test_unread_count_and_messages_before() -> None:
    a, _, create = pair()
    m = [a.stamp("message", USERS[i % 3], 10 + i, body=bytes([i])) for i in range(6)]
    outsider = a.stamp("message", u4, 20)  # hidden: not in the view, never unread
    delete = a.stamp("delete", u2, 21, target=m[5].op_id)
    log = log_of([create, *m, outsider, delete])
    state = log.state
    authors = [op.author for op in m]  # u0 u1 u2 u0 u1 u2; m[5] is deleted
    assert state.unread_count(u0, None) == sum(1 for x in authors[:5] if x != u0)
    marker: OrderKey = m[2].order_key
    assert state.unread_count(u0, marker) == 1  # m[4]; m[3] is u0's own, m[5] deleted
    assert state.unread_count(u1, marker) == 1  # m[3]
    assert state.unread_count(u1, delete.order_key) == 0

    newest = state.messages_before(None, 2)
    assert [s.op.op_id for s in newest] == [m[4].op_id, m[5].op_id]
    page = state.messages_before(m[3].order_key, 10)
    assert [s.op.op_id for s in page] == [op.op_id for op in m[:3]]
    assert state.messages_before(m[0].order_key, 10) == []
    assert state.messages_before(None, 0) == []
    last = state.last_message()
    assert last is not None and last.op.op_id == m[5].op_id


# -- any op at all: the fold never raises and still converges -----------------------------------

attr_values: st.SearchStrategy[AttrValue] = st.one_of(
    st.sampled_from(("member", "admin", "owner", "group", "direct", "+1", "u1", "")),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.booleans(),
    st.lists(st.sampled_from((*USERS, "x", "")), max_size=3),
)
attr_maps = st.dictionaries(
    st.sampled_from(("role", "key", "removes", "type", "members", "title", "z")),
    attr_values,
    max_size=3,
)
ANY_KINDS: tuple[OpKind, ...] = (
    "create",
    "message",
    "message",
    "message",
    "edit",
    "delete",
    "react",
    "react",
    "unreact",
    "unreact",
    "member_add",
    "member_remove",
    "member_role",
    "key_share",
    "settings",
)


@st.composite
def arbitrary_ops(draw: st.DrawFn) -> list[Op]:
    """Well-formed ops with any kind, author, target and attrs, in causal order on one node.

    Targets and attrs are biased towards ones that pass the checks, so the fold's mutations run
    on odd inputs too (a reaction named twice, a role change without a role, ...).
    """
    origin = Origin("n0")
    ops = [create_group(origin, 1)]
    for now in range(2, draw(st.integers(2, 24))):
        kind = draw(st.sampled_from(ANY_KINDS))
        op_ids = [op.op_id for op in ops]
        messages = [op.op_id for op in ops if op.kind == "message"] or op_ids
        reacts = [op for op in ops if op.kind == "react"]
        author = draw(st.sampled_from((OWNER, OWNER, *USERS)))  # the owner may do the most
        attrs = draw(attr_maps)
        if kind in ("edit", "delete", "react", "unreact"):
            target = draw(st.one_of(st.sampled_from(messages), st.sampled_from(["", *op_ids])))
        else:
            target = draw(st.one_of(st.sampled_from(USERS), st.sampled_from(["", *op_ids])))
        if kind == "react" and draw(st.booleans()):
            attrs["key"] = draw(st.sampled_from(REACTION_KEYS))
        if kind == "unreact" and reacts and draw(st.booleans()):
            # Aim at a real reaction, maybe naming it more than once, maybe by its reactor.
            react = draw(st.sampled_from(reacts))
            target = react.target
            pool: list[str] = [react.op_id, draw(st.sampled_from(op_ids))]
            attrs["removes"] = draw(st.lists(st.sampled_from(pool), max_size=3))
            author = react.author if draw(st.booleans()) else author
        ops.append(origin.stamp(kind, author, now, target=target, attrs=attrs))
    return ops


@given(st.data())
def test_any_well_formed_ops_fold_without_error_and_converge(data: st.DataObject) -> None:
    ops = data.draw(arbitrary_ops())
    expected = log_of(ops).view().to_bytes()
    log = MessageLog(CONV)
    for op in data.draw(shuffled_with_duplicates(ops)):
        log.apply(op)
    assert log.view().to_bytes() == expected


# -- read markers -------------------------------------------------------------------------------

order_keys = st.tuples(
    st.integers(0, 5), st.integers(0, 3), st.sampled_from(("n0", "n1")), st.sampled_from("ab")
)
marker_maps = st.dictionaries(st.sampled_from(USERS), order_keys, max_size=4)


def markers_of(marks: dict[str, OrderKey]) -> ReadMarkers:
    markers = ReadMarkers()
    for user, key in marks.items():
        markers.set(user, key)
    return markers


def merged(*parts: ReadMarkers) -> ReadMarkers:
    out = ReadMarkers()
    for part in parts:
        out.merge(part)
    return out


@given(marker_maps, marker_maps, marker_maps)
def test_read_markers_merge_laws(
    x: dict[str, OrderKey], y: dict[str, OrderKey], z: dict[str, OrderKey]
) -> None:
    a, b, c = markers_of(x), markers_of(y), markers_of(z)
    assert merged(a, b) == merged(b, a)
    ab = merged(a, b)
    ab.merge(c)
    bc = merged(b, c)
    a_bc = merged(a)
    a_bc.merge(bc)
    assert ab == a_bc
    assert merged(a, a) == a
    for user in USERS:  # pointwise max
        keys = [k for k in (x.get(user), y.get(user)) if k is not None]
        assert merged(a, b).get(user) == (max(keys) if keys else None)


@given(marker_maps, st.sampled_from(USERS), order_keys)
def test_read_markers_never_move_back(x: dict[str, OrderKey], user: str, key: OrderKey) -> None:
    markers = markers_of(x)
    before = markers.get(user)
    moved = markers.set(user, key)
    after = markers.get(user)
    assert after is not None and after == (key if before is None else max(before, key))
    assert moved == (before is None or key > before)
    assert marker_from_json(markers.to_json()[user]) == after


@given(json_values)
def test_marker_from_json_raises_only_decode_error(value: object) -> None:
    try:
        marker = marker_from_json(value)
    except DecodeError:
        return
    assert isinstance(marker, tuple) and len(marker) == 4


# -- retries (attrs.cmid) -----------------------------------------------------------------------


@st.composite
def retried_sends(draw: st.DrawFn) -> list[Op]:
    """A group, then sends of a few kinds at several nodes, many reusing a (user, cmid)."""
    origins = [Origin(f"n{i}") for i in range(draw(st.integers(1, 3)))]
    create = create_group(origins[0], 1, members=USERS[1:3])
    for other in origins[1:]:
        other.receive(create, 1)
    ops = [create]
    for now in range(2, draw(st.integers(2, 12)) + 2):
        origin = draw(st.sampled_from(origins))
        author = draw(st.sampled_from([OWNER, *USERS[1:3]]))
        attrs: dict[str, AttrValue] = {"cmid": draw(st.sampled_from(["c1", "c2", "c3"]))}
        if draw(st.booleans()):
            ops.append(origin.stamp("message", author, now, attrs=attrs, body=b"x"))
        else:
            ops.append(origin.stamp("settings", author, now, attrs={**attrs, "title": str(now)}))
    return ops


@given(retried_sends(), st.data())
def test_retries_converge_and_count_once(ops: list[Op], data: st.DataObject) -> None:
    order = data.draw(shuffled_with_duplicates(ops))
    state = log_of(order).state
    assert log_of(ops).view().to_bytes() == log_of(order).view().to_bytes()
    first: dict[tuple[str, str, object], Op] = {}
    for op in sorted(ops, key=lambda o: o.order_key):
        key = (op.author, op.content.device, op.content.attrs.get("cmid"))
        if op.op_id not in state.hidden:
            assert key not in first, "a retry shows twice"
            first[key] = op
    shown = [(m.op.author, m.attrs["cmid"]) for m in state]
    assert len(shown) == len(set(shown))
    assert "cmid" not in state.settings


def test_a_retry_is_refused_as_exists_and_answers_with_the_first() -> None:
    a, b, create = pair()
    first = a.stamp("message", u1, 2, attrs={"cmid": "m-1"}, body=b"hi")
    again = b.stamp("message", u1, 3, attrs={"cmid": "m-1"}, body=b"hi")
    other_device = b.stamp("message", u2, 4, attrs={"cmid": "m-1"}, body=b"hi")
    state = converged([create, first, again, other_device])
    assert again.op_id in state.hidden and first.op_id not in state.hidden
    assert other_device.op_id not in state.hidden  # another author: another key
    reason = state.refusal(again.content)
    assert reason is not None and reason.kind == "exists" and "same cmid" in reason
    assert state.retry_of(again.content) == first.op_id
    bad = a.stamp("message", u1, 5, attrs={"cmid": 7})
    assert bad.op_id in converged([create, bad]).hidden
