"""The materialised conversation: a left fold of ready ops in total order.

Authorization is evaluated at each op's position in the order (the state *before* the op), so an
op whose author lacked the right there is kept in the log but hidden, identically on every replica.
Rules (see docs/crdt.md for the reasoning):

- create: only the first valid create counts; it fixes the type (direct/group) and first members.
- message/key_share/react/unreact: the author must be a member.
- edit: only the message's author, while a member; last writer wins by order; never after delete.
- delete: the message's author or an admin/owner, while a member; delete wins over every edit and
  purges the body and reactions but keeps the header.
- unreact: removes exactly the react ops it names (observed-remove set: an unseen add survives).
- member_add/member_remove/member_role: group only; admins add members/admins, owners anyone;
  you may remove someone of lower rank, or yourself; only owners change roles.
- settings: group admins/owners, any member of a direct conversation.
- retries (every kind): among ops with the same (author, device, attrs.cmid), only the first
  that would count is visible; later ones are hidden ("exists"). attrs.cmid, when present,
  is a 1-64 char string, and it is never a setting.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from crdt.canonical import b64encode, canonical_json
from crdt.hlc import Timestamp
from crdt.op import ROLES, AttrValue, Content, Dot, Op, OpId, OrderKey, UserId

ConvType = Literal["direct", "group"]
_NO_REACTIONS: Mapping[str, Mapping[OpId, UserId]] = MappingProxyType({})
RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
MAX_REACTION_KEY = 64
MAX_CMID = 64


RefusalKind = Literal["missing", "forbidden", "invalid", "exists"]


class Refusal(str):
    """Why an op, placed at the end of the order, would be hidden (the text), and what kind
    of reason it is, so an I/O shell can pick an error code without parsing prose:
    "missing" (a target is not there), "forbidden" (the author lacks the right),
    "invalid" (the op is malformed), "exists" (it would create what already exists)."""

    kind: RefusalKind

    def __new__(cls, text: str, kind: RefusalKind) -> Refusal:
        obj = super().__new__(cls, text)
        obj.kind = kind
        return obj


@dataclass(slots=True)
class MessageState:
    """One message as currently visible. Mutable inside the fold; read-only to everyone else."""

    op: Op
    body: bytes
    attrs: Mapping[str, AttrValue]
    edited_by: OpId | None = None
    deleted_by: OpId | None = None
    # reaction key -> {react op id: user}; None until the first reaction (most messages never
    # get one, and an empty dict per message costs ~64 bytes: docs/benchmarks.md)
    _reactions: dict[str, dict[OpId, UserId]] | None = None

    @property
    def reactions(self) -> Mapping[str, Mapping[OpId, UserId]]:
        """reaction key -> {react op id: user} (read-only)."""
        return self._reactions if self._reactions is not None else _NO_REACTIONS

    @property
    def deleted(self) -> bool:
        return self.deleted_by is not None

    def reaction_summary(self) -> dict[str, list[str]]:
        if not self._reactions:
            return {}
        summary: dict[str, list[str]] = {}
        for key, adds in sorted(self.reactions.items()):
            users: list[str] = sorted(set(adds.values()))
            if users:
                summary[key] = users
        return summary

    def snapshot(self) -> MessageRow:
        """An immutable copy of what is visible now; JSON is built only when asked for."""
        return (self.op, self.body, self.edited_by, self.deleted_by, self.reaction_summary())

    def to_json(self) -> dict[str, Any]:
        return row_json(self.snapshot())


# (op, current body, winning edit, deleting op, reactions): cheap to copy, see ConversationView.
MessageRow = tuple[Op, bytes, "OpId | None", "OpId | None", dict[str, list[str]]]


def row_json(row: MessageRow) -> dict[str, Any]:
    op, body, edited_by, deleted_by, reactions = row
    return {
        "op_id": op.op_id,
        "author": op.author,
        "device": op.content.device,
        "hlc": op.hlc.to_json(),
        "dot": op.dot.to_json(),
        "body": b64encode(body),
        "attrs": dict(op.content.attrs),
        "edited_by": edited_by,
        "deleted_by": deleted_by,
        "reactions": reactions,
    }


class ConversationState:
    """The fold's accumulator, and the read API the node and SDK use."""

    def __init__(self) -> None:
        self.conv_type: ConvType | None = None
        self.members: dict[UserId, str] = {}
        self.settings: dict[str, AttrValue] = {}
        self.messages: dict[OpId, MessageState] = {}
        self._keys: list[OrderKey] = []  # order keys of `messages`, ascending
        self._ids: list[OpId] = []
        self.hidden: set[OpId] = set()
        self.last_key: OrderKey | None = None
        self._reacts: dict[OpId, tuple[OpId, str]] = {}  # react op -> (message, key)
        # (author, device, attrs.cmid) -> the visible op that used it first (retry de-dup)
        self._cmids: dict[tuple[str, str, str], OpId] = {}

    # -- queries -----------------------------------------------------------------------------

    def role(self, user: str) -> str | None:
        return self.members.get(UserId(user))

    def is_member(self, user: str) -> bool:
        return user in self.members

    def message(self, op_id: str) -> MessageState | None:
        return self.messages.get(OpId(op_id))

    def last_message(self) -> MessageState | None:
        return self.messages[self._ids[-1]] if self._ids else None

    def messages_before(self, key: OrderKey | None, limit: int) -> list[MessageState]:
        """Up to `limit` messages strictly before `key` (None: the newest), oldest first."""
        end = len(self._keys) if key is None else bisect.bisect_left(self._keys, key)
        return [self.messages[i] for i in self._ids[max(0, end - limit) : end]]

    def unread_count(self, user: str, marker: OrderKey | None) -> int:
        """Visible, undeleted messages by others after `marker` (None: never read)."""
        start = 0 if marker is None else bisect.bisect_right(self._keys, marker)
        return sum(
            1
            for i in self._ids[start:]
            if self.messages[i].op.author != user and not self.messages[i].deleted
        )

    def retry_of(self, op: Content) -> OpId | None:
        """The visible op an op with this content's (author, device, attrs.cmid) would retry."""
        cmid = op.attrs.get("cmid")
        if not isinstance(cmid, str):
            return None
        return self._cmids.get((op.author, op.device, cmid))

    def __iter__(self) -> Iterator[MessageState]:
        return iter(self.messages.values())

    # -- the fold ----------------------------------------------------------------------------

    def fold(self, op: Op) -> bool:
        """Apply one ready op at the end of the order; returns whether it was visible."""
        self.last_key = op.order_key
        if self.refusal(op.content) is not None:
            self.hidden.add(op.op_id)
            return False
        self._mutate(op)
        cmid = op.content.attrs.get("cmid")
        if isinstance(cmid, str):
            self._cmids[(op.author, op.content.device, cmid)] = op.op_id
        return True

    def _rank(self, user: str) -> int:
        role = self.members.get(UserId(user))
        return RANK[role] if role is not None else 0

    def refusal(self, op: Content) -> Refusal | None:
        """Why `op`, placed at the end of the order, would be hidden; None if it would count.

        The node asks this before accepting an op, so clients get a clear error instead of an
        op that every replica would hide.
        """
        kind, author = op.kind, op.author
        attrs = op.attrs
        if "cmid" in attrs:
            cmid = attrs["cmid"]
            if not isinstance(cmid, str) or not 0 < len(cmid) <= MAX_CMID:
                return Refusal(f"attrs.cmid must be a string of 1-{MAX_CMID} chars", "invalid")
            if (author, op.device, cmid) in self._cmids:
                return Refusal("a retry of an op already applied (same cmid)", "exists")
        if kind == "create":
            return self._create_refusal(op)
        if self.conv_type is None:
            return Refusal("the conversation does not exist yet", "missing")
        if author not in self.members:
            return Refusal("the author is not a member", "forbidden")
        if kind in ("message", "key_share"):
            return None
        if kind in ("edit", "delete", "react", "unreact"):
            target = self.messages.get(OpId(op.target))
            if target is None:
                return Refusal("the target is not a visible message", "missing")
            if target.deleted:
                return Refusal("the target message is deleted", "missing")
            if kind == "edit" and target.op.author != author:
                return Refusal("only the author may edit a message", "forbidden")
            if (
                kind == "delete"
                and target.op.author != author
                and self._rank(author) < RANK["admin"]
            ):
                return Refusal("only the author or an admin may delete a message", "forbidden")
            if kind == "react":
                rkey = attrs.get("key")
                if not isinstance(rkey, str) or not 0 < len(rkey) <= MAX_REACTION_KEY:
                    return Refusal(
                        f"a reaction needs attrs.key of 1-{MAX_REACTION_KEY} chars", "invalid"
                    )
            if kind == "unreact" and not self.own_reacts(op, target):
                return Refusal(
                    "attrs.removes names none of the author's reactions on the target", "invalid"
                )
            return None
        if kind == "settings":
            if self.conv_type == "group" and self._rank(author) < RANK["admin"]:
                return Refusal("only admins and owners change group settings", "forbidden")
            return None
        return self._membership_refusal(op)

    def _create_refusal(self, op: Content) -> Refusal | None:
        if self.conv_type is not None:
            return Refusal("the conversation already exists", "exists")
        attrs = op.attrs
        others = attrs.get("members", [])
        if not isinstance(others, list):
            return Refusal("attrs.members must be a list of user ids", "invalid")
        if attrs.get("type") == "direct":
            if len(others) != 1 or others[0] == op.author:
                return Refusal("a direct conversation names exactly one other member", "invalid")
            return None
        if attrs.get("type") == "group":
            return None
        return Refusal('attrs.type must be "direct" or "group"', "invalid")

    def own_reacts(self, op: Content, target: MessageState) -> list[OpId]:
        removes = op.attrs.get("removes")
        if not isinstance(removes, list):
            return []
        own: list[OpId] = []
        for react_id in removes:
            if react_id in own:
                # `removes: [r, r]` is well-formed; naming r twice must not pop it twice in
                # `_mutate` (a KeyError there broke the fold on every replica, mid-apply).
                continue
            found = self._reacts.get(OpId(react_id))
            if found is None or found[0] != target.op.op_id:
                continue
            adds = (target._reactions or {}).get(found[1], {})
            if adds.get(OpId(react_id)) == op.author:
                own.append(OpId(react_id))
        return own

    def _membership_refusal(self, op: Content) -> Refusal | None:
        if self.conv_type != "group":
            return Refusal("membership of a direct conversation cannot change", "forbidden")
        author, target = op.author, UserId(op.target)
        author_rank, target_rank = self._rank(author), self._rank(target)
        role = op.attrs.get("role", "member")
        if op.kind == "member_add":
            if target_rank:
                return Refusal("the user is already a member", "exists")
            if not isinstance(role, str) or role not in RANK:
                return Refusal("attrs.role must be owner, admin or member", "invalid")
            if author_rank < RANK["admin"] or RANK[role] > author_rank:
                return Refusal(
                    "only admins add members, and nobody grants a role above their own", "forbidden"
                )
            return None
        if op.kind == "member_remove":
            if not target_rank:
                return Refusal("the user is not a member", "missing")
            if target != author and not (
                author_rank >= RANK["admin"] and author_rank > target_rank
            ):
                return Refusal(
                    "you may remove yourself, or members of lower rank if you are an admin",
                    "forbidden",
                )
            return None
        if op.kind == "member_role":
            if not target_rank or target == author:
                return Refusal("the target must be another member", "invalid")
            # A role change names its role: no default here (`_mutate` reads attrs["role"], and
            # a missing key raised KeyError mid-fold on every replica).
            new_role = op.attrs.get("role")
            if not isinstance(new_role, str) or new_role not in RANK:
                return Refusal("attrs.role must be owner, admin or member", "invalid")
            if author_rank < RANK["owner"]:
                return Refusal("only owners change roles", "forbidden")
            return None
        return Refusal(f"unknown op kind {op.kind!r}", "invalid")

    def _mutate(self, op: Op) -> None:
        """Apply an op that `refusal` accepted."""
        kind, author = op.kind, op.author
        attrs = op.content.attrs
        if kind == "create":
            others = [UserId(u) for u in attrs.get("members", []) if isinstance(u, str)]  # type: ignore[union-attr]
            if attrs["type"] == "direct":
                self.conv_type = "direct"
                self.members = {author: "member", others[0]: "member"}
            else:
                self.conv_type = "group"
                self.members = {author: "owner"}
                self.members.update({u: "member" for u in others if u != author})
            title = attrs.get("title")
            if isinstance(title, str):
                self.settings["title"] = title
        elif kind == "message":
            self.messages[op.op_id] = MessageState(op=op, body=op.content.body, attrs=attrs)
            self._keys.append(op.order_key)
            self._ids.append(op.op_id)
        elif kind in ("edit", "delete", "react", "unreact"):
            target = self.messages[OpId(op.target)]
            if kind == "edit":
                target.body = op.content.body
                target.edited_by = op.op_id
            elif kind == "delete":
                target.body = b""
                target.deleted_by = op.op_id
                for adds in (target._reactions or {}).values():
                    for react_id in adds:
                        self._reacts.pop(react_id, None)
                target._reactions = None
            elif kind == "react":
                rkey = str(attrs["key"])
                if target._reactions is None:
                    target._reactions = {}
                target._reactions.setdefault(rkey, {})[op.op_id] = author
                self._reacts[op.op_id] = (target.op.op_id, rkey)
            else:
                for react_id in self.own_reacts(op.content, target):
                    rkey = self._reacts.pop(react_id)[1]
                    assert target._reactions is not None  # own_reacts found it there
                    adds = target._reactions[rkey]
                    del adds[react_id]
                    if not adds:
                        del target._reactions[rkey]
        elif kind == "settings":
            self.settings.update((k, v) for k, v in attrs.items() if k != "cmid")
        elif kind == "member_add":
            self.members[UserId(op.target)] = str(attrs.get("role", "member"))
        elif kind == "member_remove":
            del self.members[UserId(op.target)]
        elif kind == "member_role":
            self.members[UserId(op.target)] = str(attrs["role"])
        # key_share: no effect on the view; clients read key shares from the op stream


class ConversationView:
    """An immutable snapshot of the state, with a canonical byte encoding for comparisons.

    Messages are kept as row tuples and turned into JSON only on demand: snapshotting 100k
    messages must stay far below the fold's own cost (docs/benchmarks.md).
    """

    __slots__ = ("_messages", "_rows", "conv_type", "hidden", "members", "parked", "settings")

    def __init__(
        self,
        *,
        conv_type: ConvType | None,
        members: tuple[tuple[str, str], ...],
        settings: tuple[tuple[str, AttrValue], ...],
        rows: tuple[MessageRow, ...],
        hidden: tuple[str, ...],
        parked: tuple[str, ...],
    ) -> None:
        self.conv_type = conv_type
        self.members = members
        self.settings = settings
        self._rows = rows
        self._messages: tuple[dict[str, Any], ...] | None = None
        self.hidden = hidden
        self.parked = parked

    @classmethod
    def of(cls, state: ConversationState, parked: set[OpId]) -> ConversationView:
        return cls(
            conv_type=state.conv_type,
            members=tuple(sorted(state.members.items())),
            settings=tuple(sorted(state.settings.items())),
            # Inlined MessageState.snapshot(): this loop runs once per message of the view.
            rows=tuple(
                [
                    (m.op, m.body, m.edited_by, m.deleted_by, m.reaction_summary())
                    if m._reactions
                    else (m.op, m.body, m.edited_by, m.deleted_by, {})
                    for m in state.messages.values()
                ]
            ),
            hidden=tuple(sorted(state.hidden)),
            parked=tuple(sorted(parked)),
        )

    @property
    def messages(self) -> tuple[dict[str, Any], ...]:
        if self._messages is None:
            self._messages = tuple(row_json(r) for r in self._rows)
        return self._messages

    def __len__(self) -> int:
        return len(self._rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.conv_type,
            "members": dict(self.members),
            "settings": dict(self.settings),
            "messages": list(self.messages),
            "hidden": list(self.hidden),
            "parked": list(self.parked),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConversationView):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


__all__ = ["ConversationState", "ConversationView", "Dot", "MessageState", "Timestamp"]
