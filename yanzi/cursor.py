"""The client's sync state: local logs per conversation and the portable cursor. Pure.

`SyncState.ingest(op)` is the one entry point for every op, whether it came live over the
WebSocket or from an HTTP catch-up page, so the overlap of the two is de-duplicated in one place
(`MessageLog.apply` is idempotent by op id).

The cursor (DESIGN.md decision 6) is `{conv: {origin: highest contiguous seq}}`. It only ever
advances contiguously: each conversation keeps a `VersionVector` of the dots this client holds,
*seeded from the persisted cursor* — a new process knows it already delivered everything up to
the cursor even though its in-memory logs start empty — and `crdt.advance` raises the cursor to
that vector's contiguous prefix. A dot beyond a hole leaves the vector with a gap; the client
reacts by running an HTTP catch-up, which asks from the cursor and so fills exactly the hole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crdt import (
    ConversationState,
    ConversationView,
    ConvId,
    CrdtError,
    Cursor,
    MessageLog,
    NodeId,
    Op,
    Outcome,
    VersionVector,
    advance,
    encode_cursor,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ingested:
    new: bool  # not seen before by this client (nor by an earlier process, per the cursor)
    cursor_moved: bool
    gap: bool  # the conversation now holds a dot beyond a hole: catch up over HTTP


class SyncState:
    def __init__(self, cursor: Cursor | None = None) -> None:
        self.cursor: Cursor = {c: dict(vv) for c, vv in (cursor or {}).items()}
        self.logs: dict[ConvId, MessageLog] = {}
        self._held: dict[ConvId, VersionVector] = {}
        # conv -> contiguous prefix at which a catch-up already failed to fill its hole: a hole
        # the node cannot fill either must not turn every later live op into another catch-up.
        self._hole_tried: dict[ConvId, dict[NodeId, int]] = {}

    def ingest(self, op: Op) -> Ingested:
        conv = op.conv
        mlog = self.logs.get(conv)
        if mlog is None:
            mlog = self.logs[conv] = MessageLog(conv)
        try:
            outcome = mlog.apply(op)
        except CrdtError as exc:
            # Another op already holds this dot: an origin equivocated. Keep the first (as the
            # node does) and never show two.
            log.warning("dropped op %s in %s: %s", op.op_id, conv, exc)
            return Ingested(new=False, cursor_moved=False, gap=False)
        held = self._held.get(conv)
        if held is None:
            held = self._held[conv] = VersionVector(self.cursor.get(conv, {}))
        if outcome is Outcome.DUPLICATE:
            return Ingested(new=False, cursor_moved=False, gap=self._untried_gap(conv, held))
        delivered_before = op.dot in held  # covered by the persisted cursor (a backfill)
        held.add(op.dot)
        before = self.cursor.get(conv, {}).get(op.dot.origin, 0)
        advance(self.cursor, conv, held)
        moved = self.cursor[conv].get(op.dot.origin, 0) != before
        return Ingested(
            new=not delivered_before, cursor_moved=moved, gap=self._untried_gap(conv, held)
        )

    def _untried_gap(self, conv: ConvId, held: VersionVector) -> bool:
        return held.has_gaps() and self._hole_tried.get(conv) != held.contiguous()

    def note_caught_up(self) -> None:
        """A catch-up just finished: holes still open are ones the node cannot fill now."""
        self._hole_tried = {
            conv: held.contiguous() for conv, held in self._held.items() if held.has_gaps()
        }

    def encoded_cursor(self, *, without: ConvId | None = None) -> str:
        """The cursor for `GET /v1/sync`; `without` drops one conversation (a full backfill)."""
        return encode_cursor({c: vv for c, vv in self.cursor.items() if c != without})

    def has_gaps(self, conv: ConvId) -> bool:
        held = self._held.get(conv)
        return held is not None and held.has_gaps()

    def state(self, conv: str) -> ConversationState:
        mlog = self.logs.get(ConvId(conv))
        return ConversationState() if mlog is None else mlog.state

    def view(self, conv: str) -> ConversationView:
        mlog = self.logs.get(ConvId(conv))
        return (mlog or MessageLog(ConvId(conv))).view()
