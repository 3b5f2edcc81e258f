"""Shared builders and hypothesis strategies for the crdt tests.

`Origin` plays one node: its own HybridClock, its own knowledge of the conversation (a MessageLog)
and dense seqs from `log.next_seq`. `conversation_ops` simulates several origins writing
concurrently and gossiping, so the op sets the property tests shuffle are ones real nodes produce:
HLCs that respect causality, targets that name ops the writer had seen, ties in `l` broken by `c`.
Every choice is drawn from hypothesis, so failures shrink and replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

from crdt import (
    ROLES,
    AttrValue,
    Content,
    ConvId,
    DeviceId,
    Dot,
    HybridClock,
    MessageLog,
    NodeId,
    Op,
    OpId,
    OpKind,
    UserId,
    VersionVector,
)

CONV = ConvId("c1")
USERS: tuple[UserId, ...] = tuple(UserId(f"u{i}") for i in range(5))
OWNER = USERS[0]
REACTION_KEYS = ("+1", "heart", "x")
TITLES = ("t", "lunch", "燕子")
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@=+/-"

# -- building ops by hand ---------------------------------------------------------------------


def device_of(user: str) -> DeviceId:
    return DeviceId(f"d-{user}")


class Origin:
    """One node writing into one conversation: it stamps, it observes, it remembers."""

    def __init__(self, node: str, conv: ConvId = CONV, *, skew_ms: int = 0) -> None:
        self.node = NodeId(node)
        self.conv = conv
        self.clock = HybridClock()
        self.log = MessageLog(conv)
        self.skew_ms = skew_ms
        self.written: list[Op] = []

    def stamp(
        self,
        kind: OpKind,
        author: str,
        now_ms: int,
        *,
        target: str = "",
        attrs: Mapping[str, AttrValue] | None = None,
        body: bytes = b"",
    ) -> Op:
        """Accept a new op here: tick the clock, take the next dense seq, apply it locally."""
        content = Content(
            conv=self.conv,
            kind=kind,
            author=UserId(author),
            device=device_of(author),
            target=target,
            attrs=dict(attrs or {}),
            body=body,
        )
        op = Op(
            content=content,
            hlc=self.clock.tick(now_ms + self.skew_ms),
            dot=Dot(self.node, self.log.next_seq(self.node)),
        )
        self.log.apply(op)
        self.written.append(op)
        return op

    def receive(self, op: Op, now_ms: int) -> None:
        """What a node does with a remote op: observe its HLC, then apply it."""
        self.clock.observe(op.hlc, now_ms + self.skew_ms)
        self.log.apply(op)


def create_group(
    origin: Origin, now_ms: int, members: Sequence[str] = USERS[1:3], title: str = "t"
) -> Op:
    attrs: dict[str, AttrValue] = {"type": "group", "members": list(members), "title": title}
    return origin.stamp("create", OWNER, now_ms, attrs=attrs)


def log_of(ops: Iterable[Op], conv: ConvId = CONV) -> MessageLog:
    log = MessageLog(conv)
    for op in ops:
        log.apply(op)
    return log


def view_bytes(ops: Iterable[Op]) -> bytes:
    return log_of(ops).view().to_bytes()


# -- simulated origins ------------------------------------------------------------------------

PRODUCE_KINDS: tuple[OpKind, ...] = (
    "message",
    "message",
    "message",
    "edit",
    "delete",
    "react",
    "react",
    "unreact",
    "member_add",
    "member_remove",
    "member_role",
    "settings",
    "key_share",
    "create",
)


def _user(draw: st.DrawFn, preferred: Iterable[str]) -> str:
    """Mostly a sensible author (`preferred`), sometimes anyone, to exercise hiding."""
    candidates = sorted(preferred)
    sensible = draw(st.integers(0, 3)) > 0
    if candidates and sensible:
        return draw(st.sampled_from(candidates))
    return draw(st.sampled_from(USERS))


def _produce(draw: st.DrawFn, origin: Origin, now_ms: int) -> None:
    state = origin.log.state
    members = sorted(state.members)
    admins = [u for u, r in state.members.items() if r in ("admin", "owner")]
    messages = list(state.messages.values())
    live = [m for m in messages if not m.deleted]
    kind = draw(st.sampled_from(PRODUCE_KINDS))
    if kind in ("edit", "delete", "react") and not live:
        kind = "message"
    reacted = [m for m in live if m.reactions]
    if kind == "unreact" and not reacted:
        kind = "react" if live else "message"

    if kind == "message":
        body = draw(st.binary(max_size=6))
        origin.stamp(kind, _user(draw, members), now_ms, body=body)
    elif kind == "edit":
        msg = draw(st.sampled_from(live))
        author: str = msg.op.author if draw(st.integers(0, 3)) else draw(st.sampled_from(USERS))
        body = draw(st.binary(min_size=1, max_size=6))
        origin.stamp(kind, author, now_ms, target=msg.op.op_id, body=body)
    elif kind == "delete":
        msg = draw(st.sampled_from(live))
        author = msg.op.author if draw(st.booleans()) else _user(draw, admins)
        origin.stamp(kind, author, now_ms, target=msg.op.op_id)
    elif kind == "react":
        msg = draw(st.sampled_from(live))
        key = draw(st.sampled_from(REACTION_KEYS))
        origin.stamp(kind, _user(draw, members), now_ms, target=msg.op.op_id, attrs={"key": key})
    elif kind == "unreact":
        msg = draw(st.sampled_from(reacted))
        rkey = draw(st.sampled_from(sorted(msg.reactions)))
        adds = msg.reactions[rkey]
        react_ids: list[str] = sorted(adds)
        removes = draw(st.lists(st.sampled_from(react_ids), min_size=1, max_size=3))  # dups ok
        by_reactor = draw(st.integers(0, 3)) > 0
        author = adds[OpId(removes[0])] if by_reactor else draw(st.sampled_from(USERS))
        attrs: dict[str, AttrValue] = {"removes": removes}
        origin.stamp(kind, author, now_ms, target=msg.op.op_id, attrs=attrs)
    elif kind in ("member_add", "member_remove", "member_role"):
        role = draw(st.sampled_from((*ROLES, "king")))
        target = draw(st.sampled_from(USERS))
        author = _user(draw, admins)
        origin.stamp(kind, author, now_ms, target=target, attrs={"role": role})
    elif kind == "settings":
        title = draw(st.sampled_from(TITLES))
        origin.stamp(kind, _user(draw, admins), now_ms, attrs={"title": title})
    elif kind == "key_share":
        body = draw(st.binary(min_size=1, max_size=6))
        origin.stamp(
            kind, _user(draw, members), now_ms, target=draw(st.sampled_from(USERS)), body=body
        )
    else:  # a concurrent create: only the first in order counts, on every replica
        create_group(origin, now_ms, members=[draw(st.sampled_from(USERS))])


@st.composite
def conversation_ops(draw: st.DrawFn, *, max_steps: int = 30, max_origins: int = 4) -> list[Op]:
    """The op set several origins produce while writing concurrently and gossiping.

    Returned in creation order; every target names an op its writer had seen, so the complete
    set parks nothing. Physical time is drawn per step; each origin has its own skew.
    """
    count = draw(st.integers(1, max_origins))
    origins = [Origin(f"n{i}", skew_ms=draw(st.integers(0, 50))) for i in range(count)]
    now = draw(st.integers(0, 1000))
    pool: list[Op] = [create_group(origins[0], now)]
    for _ in range(draw(st.integers(0, max_steps))):
        now += draw(st.integers(0, 3))  # small steps: many HLC ties in `l`, broken by `c`
        origin = draw(st.sampled_from(origins))
        unseen = [op for op in pool if op.op_id not in origin.log]
        if unseen and draw(st.integers(0, 2)) == 0:
            origin.receive(draw(st.sampled_from(unseen)), now)
            continue
        _produce(draw, origin, now)
        pool.append(origin.written[-1])
    return pool


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn, ops: Sequence[Op]) -> list[Op]:
    """A delivery order: any permutation of `ops` with some of them delivered again."""
    extra = draw(st.lists(st.sampled_from(list(ops)), max_size=5)) if ops else []
    return draw(st.permutations([*ops, *extra]))


# -- ids, dots, version vectors, cursors ------------------------------------------------------

ids = st.text(ID_ALPHABET, min_size=1, max_size=12)
origins_small = st.sampled_from([NodeId(n) for n in ("a", "b", "c")])
dots = st.builds(Dot, origins_small, st.integers(1, 12))
dot_sets = st.frozensets(dots, max_size=20)
version_vectors = dot_sets.map(VersionVector.from_dots)
seqs = st.integers(0, 2**53 - 1)
cursors = st.dictionaries(
    ids, st.dictionaries(ids, st.integers(1, 2**53 - 1), max_size=4), max_size=4
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
