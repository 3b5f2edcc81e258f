"""`MessageLog`: one conversation's grow-only set of ops, its version vector and its view.

Applying is idempotent. An op whose targets have not arrived is *parked*: it is stored and counted
in the version vector (so anti-entropy does not fetch it again) but stays out of the view until
every target is present. The view is a left fold of the ready ops in total order
(`crdt.state`), kept incrementally while ops arrive in order and rebuilt when one arrives late.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

from crdt.errors import CrdtError, DecodeError
from crdt.op import ConvId, Dot, NodeId, Op, OpId
from crdt.state import ConversationState, ConversationView
from crdt.vv import VersionVector

DEPENDENT_KINDS = frozenset({"edit", "delete", "react", "unreact"})


class Outcome(enum.Enum):
    NEW = "new"  # stored and ready (in the view, visible or hidden)
    PARKED = "parked"  # stored, waiting for a target
    DUPLICATE = "duplicate"  # already had it: nothing changed


def dependencies(op: Op) -> tuple[OpId, ...]:
    """The op ids that must be present before `op` can take its place in the view."""
    if op.kind not in DEPENDENT_KINDS:
        return ()
    deps = [OpId(op.target)]
    if op.kind == "unreact":
        removes = op.content.attrs.get("removes")
        if isinstance(removes, list):
            deps.extend(OpId(r) for r in removes)
    return tuple(deps)


class MessageLog:
    """The CRDT for one conversation. Pure: no clock, no I/O."""

    __slots__ = ("_by_dot", "_dirty", "_ops", "_parked", "_state", "_vv", "_waiting", "conv")

    def __init__(self, conv: ConvId) -> None:
        self.conv = conv
        self._ops: dict[OpId, Op] = {}
        self._by_dot: dict[Dot, OpId] = {}
        self._vv = VersionVector()
        self._parked: set[OpId] = set()
        self._waiting: dict[OpId, set[OpId]] = {}  # missing target -> parked ops needing it
        self._state = ConversationState()
        self._dirty = False

    # -- applying ---------------------------------------------------------------------------

    def apply(self, op: Op) -> Outcome:
        if op.conv != self.conv:
            raise CrdtError(f"op for conversation {op.conv!r} applied to log {self.conv!r}")
        if op.op_id in self._ops:
            return Outcome.DUPLICATE
        if op.dot in self._vv:
            # Same dot, different content: an origin equivocated. Keep the first; never two.
            raise CrdtError(f"dot {op.dot} already holds another op")
        self._ops[op.op_id] = op
        self._by_dot[op.dot] = op.op_id
        self._vv.add(op.dot)
        missing = [d for d in dependencies(op) if d not in self._ops or d in self._parked]
        if missing:
            self._parked.add(op.op_id)
            for dep in missing:
                self._waiting.setdefault(dep, set()).add(op.op_id)
            return Outcome.PARKED
        self._ready([op, *self._release(op.op_id)])
        return Outcome.NEW

    def apply_all(self, ops: Iterable[Op]) -> int:
        """Apply many ops; returns how many were new (parked included)."""
        return sum(1 for op in ops if self.apply(op) is not Outcome.DUPLICATE)

    def merge(self, other: MessageLog) -> None:
        """Union with another replica of the same conversation."""
        self.apply_all(other._ops.values())

    def _release(self, op_id: OpId) -> list[Op]:
        """Unpark every op that was waiting only on `op_id` (transitively)."""
        released: list[Op] = []
        stack = [op_id]
        while stack:
            for waiter in sorted(self._waiting.pop(stack.pop(), ())):
                if waiter not in self._parked:
                    continue  # already released through another of its targets
                op = self._ops[waiter]
                if any(d not in self._ops or d in self._parked for d in dependencies(op)):
                    continue  # still registered under its other missing targets
                self._parked.discard(waiter)
                released.append(op)
                stack.append(waiter)
        return released

    def _ready(self, ops: list[Op]) -> None:
        if self._dirty:
            return
        ops.sort(key=_order_key)
        last = self._state.last_key
        if last is not None and ops[0].order_key < last:
            self._dirty = True  # arrived late: rebuild lazily on the next read
            return
        for op in ops:
            self._state.fold(op)

    # -- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> ConversationState:
        """The materialised conversation (rebuilt here if an op arrived out of order)."""
        if self._dirty:
            state = ConversationState()
            for op in sorted(self._ready_ops(), key=_order_key):
                state.fold(op)
            self._state = state
            self._dirty = False
        return self._state

    def view(self) -> ConversationView:
        return ConversationView.of(self.state, self._parked)

    def _ready_ops(self) -> Iterator[Op]:
        parked = self._parked
        return (op for op_id, op in self._ops.items() if op_id not in parked)

    @property
    def version_vector(self) -> VersionVector:
        """A copy: callers may keep or mutate it freely."""
        return self._vv.copy()

    @property
    def parked(self) -> frozenset[OpId]:
        return frozenset(self._parked)

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ops

    def get(self, op_id: str) -> Op | None:
        return self._ops.get(OpId(op_id))

    def by_dot(self, dot: Dot) -> Op | None:
        op_id = self._by_dot.get(dot)
        return None if op_id is None else self._ops[op_id]

    def next_seq(self, origin: NodeId) -> int:
        return self._vv.next_seq(origin)

    def ops(self) -> list[Op]:
        """Every op, parked included, in total order."""
        return sorted(self._ops.values(), key=_order_key)

    def missing_for(self, remote: VersionVector, limit: int | None = None) -> list[Op]:
        """Exactly the ops `remote` lacks, in total order; the first `limit` of them if given.

        A prefix in total order is a prefix per origin too (an origin stamps its seqs in HLC
        order), so a client that advances its cursor over a page never skips a dot.
        A negative `limit` raises DecodeError.
        """
        if limit is not None and limit < 0:
            # `missing[:-n]` would silently drop the *last* n ops instead of returning a page.
            raise DecodeError(f"limit must be >= 0, not {limit}")
        missing = [self._ops[self._by_dot[dot]] for dot in self._vv.dots_beyond(remote)]
        missing.sort(key=_order_key)
        return missing if limit is None else missing[:limit]


def _order_key(op: Op) -> tuple[int, int, str, str]:
    return op.order_key
