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
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crdt.canonical import b64encode, canonical_json
from crdt.hlc import Timestamp
from crdt.op import ROLES, AttrValue, Dot, Op, OpId, OrderKey, UserId

ConvType = Literal["direct", "group"]
RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
MAX_REACTION_KEY = 64


@dataclass(slots=True)
class MessageState:
    """One message as currently visible. Mutable inside the fold; read-only to everyone else."""

    op: Op
    body: bytes
    attrs: Mapping[str, AttrValue]
    edited_by: OpId | None = None
    deleted_by: OpId | None = None
    # reaction key -> {react op id: user}
    reactions: dict[str, dict[OpId, UserId]] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.deleted_by is not None

    def reaction_summary(self) -> dict[str, list[str]]:
        summary: dict[str, list[str]] = {}
        for key, adds in sorted(self.reactions.items()):
            users: list[str] = sorted(set(adds.values()))
            if users:
                summary[key] = users
        return summary

    def to_json(self) -> dict[str, Any]:
        op = self.op
        return {
            "op_id": op.op_id,
            "author": op.author,
            "device": op.content.device,
            "hlc": op.hlc.to_json(),
            "dot": op.dot.to_json(),
            "body": b64encode(self.body),
            "attrs": dict(self.attrs),
            "edited_by": self.edited_by,
            "deleted_by": self.deleted_by,
            "reactions": self.reaction_summary(),
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

    def __iter__(self) -> Iterator[MessageState]:
        return iter(self.messages.values())

    # -- the fold ----------------------------------------------------------------------------

    def fold(self, op: Op) -> bool:
        """Apply one ready op at the end of the order; returns whether it was visible."""
        self.last_key = op.order_key
        visible = self._apply(op)
        if not visible:
            self.hidden.add(op.op_id)
        return visible

    def _rank(self, user: str) -> int:
        role = self.members.get(UserId(user))
        return RANK[role] if role is not None else 0

    def _apply(self, op: Op) -> bool:
        kind = op.kind
        author = op.author
        if kind == "create":
            return self._create(op)
        if author not in self.members:
            return False
        if kind == "message":
            key = op.order_key
            self.messages[op.op_id] = MessageState(op=op, body=op.content.body, attrs=op.content.attrs)
            self._keys.append(key)
            self._ids.append(op.op_id)
            return True
        if kind == "key_share":
            return True
        if kind in ("edit", "delete", "react", "unreact"):
            target = self.messages.get(OpId(op.target))
            if target is None or target.deleted:
                return False
            if kind == "edit":
                if target.op.author != author:
                    return False
                target.body = op.content.body
                target.edited_by = op.op_id
                return True
            if kind == "delete":
                if target.op.author != author and self._rank(author) < RANK["admin"]:
                    return False
                target.body = b""
                target.deleted_by = op.op_id
                for adds in target.reactions.values():
                    for react_id in adds:
                        self._reacts.pop(react_id, None)
                target.reactions.clear()
                return True
            if kind == "react":
                rkey = op.content.attrs.get("key")
                if not isinstance(rkey, str) or not 0 < len(rkey) <= MAX_REACTION_KEY:
                    return False
                target.reactions.setdefault(rkey, {})[op.op_id] = author
                self._reacts[op.op_id] = (target.op.op_id, rkey)
                return True
            return self._unreact(op, target)
        if kind == "settings":
            if self.conv_type == "group" and self._rank(author) < RANK["admin"]:
                return False
            self.settings.update(op.content.attrs)
            return True
        return self._membership(op)

    def _create(self, op: Op) -> bool:
        if self.conv_type is not None:
            return False
        attrs = op.content.attrs
        conv_type = attrs.get("type")
        others = attrs.get("members", [])
        if not isinstance(others, list):
            return False
        author = op.author
        if conv_type == "direct":
            if len(set(others)) != 1 or others[0] == author:
                return False
            self.members = {author: "member", UserId(others[0]): "member"}
        elif conv_type == "group":
            self.members = {author: "owner"}
            for user in others:
                if user != author:
                    self.members[UserId(user)] = "member"
        else:
            return False
        self.conv_type = "direct" if conv_type == "direct" else "group"
        title = attrs.get("title")
        if isinstance(title, str):
            self.settings["title"] = title
        return True

    def _unreact(self, op: Op, target: MessageState) -> bool:
        removes = op.content.attrs.get("removes")
        if not isinstance(removes, list) or not removes:
            return False
        removed = False
        for react_id in removes:
            found = self._reacts.get(OpId(react_id))
            if found is None or found[0] != target.op.op_id:
                continue
            adds = target.reactions.get(found[1], {})
            if adds.get(OpId(react_id)) != op.author:
                continue
            del adds[OpId(react_id)]
            if not adds:
                del target.reactions[found[1]]
            del self._reacts[OpId(react_id)]
            removed = True
        return removed

    def _membership(self, op: Op) -> bool:
        if self.conv_type != "group":
            return False
        author, target = op.author, UserId(op.target)
        author_rank, target_rank = self._rank(author), self._rank(target)
        role = op.content.attrs.get("role", "member")
        if op.kind == "member_add":
            if target_rank or role not in RANK or author_rank < RANK["admin"]:
                return False
            if RANK[str(role)] > author_rank:
                return False
            self.members[target] = str(role)
            return True
        if op.kind == "member_remove":
            if not target_rank:
                return False
            if target != author and not (author_rank >= RANK["admin"] and author_rank > target_rank):
                return False
            del self.members[target]
            return True
        if op.kind == "member_role":
            if not target_rank or target == author or role not in RANK:
                return False
            if author_rank < RANK["owner"]:
                return False
            self.members[target] = str(role)
            return True
        return False


@dataclass(frozen=True, slots=True)
class ConversationView:
    """An immutable snapshot of the state, with a canonical byte encoding for comparisons."""

    conv_type: ConvType | None
    members: tuple[tuple[str, str], ...]
    settings: tuple[tuple[str, AttrValue], ...]
    messages: tuple[dict[str, Any], ...]
    hidden: tuple[str, ...]
    parked: tuple[str, ...]

    @classmethod
    def of(cls, state: ConversationState, parked: set[OpId]) -> ConversationView:
        return cls(
            conv_type=state.conv_type,
            members=tuple(sorted(state.members.items())),
            settings=tuple(sorted(state.settings.items())),
            messages=tuple(m.to_json() for m in state.messages.values()),
            hidden=tuple(sorted(state.hidden)),
            parked=tuple(sorted(parked)),
        )

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


__all__ = ["ConversationState", "ConversationView", "Dot", "MessageState", "Timestamp"]
