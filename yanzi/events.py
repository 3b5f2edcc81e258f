"""What the SDK hands to applications: acks, messages, conversations and the event stream.

All are frozen dataclasses. Events arrive through `Client.events()`; the union `Event` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from crdt import AttrValue, Dot, MessageState, Op, Timestamp, b64decode
from yanzi.errors import ProtocolError

#: plain: not encrypted; decrypted: `body` is the plaintext; pending: waiting for its key share;
#: failed: cannot be decrypted (tampered, bad signature, key not shared with this device).
E2eeStatus = Literal["plain", "decrypted", "pending", "failed"]

# -- replies and read models ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The node's promise that an op is durable: its id, HLC stamp and dot."""

    op_id: str
    conv: str
    hlc: Timestamp
    dot: Dot
    cmid: str

    @classmethod
    def from_json(cls, frame: Mapping[str, Any], cmid: str) -> Ack:
        try:
            return cls(
                op_id=_text(frame["op_id"]),
                conv=_text(frame["conv"]),
                hlc=Timestamp.from_json(frame["hlc"]),
                dot=Dot.from_json(frame["dot"]),
                cmid=cmid,
            )
        except (KeyError, ValueError) as exc:  # DecodeError is a ValueError
            raise ProtocolError(f"malformed ack: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message as currently visible: body after edits, reactions as key -> users."""

    conv: str
    op_id: str
    author: str
    device: str
    hlc: Timestamp
    dot: Dot
    body: bytes
    attrs: Mapping[str, AttrValue]
    edited_by: str | None
    deleted_by: str | None
    reactions: Mapping[str, tuple[str, ...]]
    # End-to-end encryption (docs/e2ee.md): `e2ee` says what `body` is; `verified` is True when
    # the op carrying the current body is signed by a trusted key of its device (and decrypted).
    e2ee: E2eeStatus = "plain"
    verified: bool = False

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def deleted(self) -> bool:
        return self.deleted_by is not None

    @classmethod
    def from_state(cls, conv: str, state: MessageState) -> Message:
        op = state.op
        return cls(
            conv=conv,
            op_id=op.op_id,
            author=op.author,
            device=op.content.device,
            hlc=op.hlc,
            dot=op.dot,
            body=state.body,
            attrs=dict(state.attrs),
            edited_by=state.edited_by,
            deleted_by=state.deleted_by,
            reactions={k: tuple(v) for k, v in state.reaction_summary().items()},
        )

    @classmethod
    def from_json(cls, conv: str, value: Mapping[str, Any]) -> Message:
        """Parse one entry of `GET /v1/conversations/{conv}/messages` (MessageState.to_json)."""
        try:
            reactions = value["reactions"]
            return cls(
                conv=conv,
                op_id=_text(value["op_id"]),
                author=_text(value["author"]),
                device=_text(value["device"]),
                hlc=Timestamp.from_json(value["hlc"]),
                dot=Dot.from_json(value["dot"]),
                body=b64decode(value["body"]),
                attrs=dict(value["attrs"]),
                edited_by=value["edited_by"],
                deleted_by=value["deleted_by"],
                reactions={str(k): tuple(v) for k, v in dict(reactions).items()},
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed message: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPage:
    messages: tuple[Message, ...]  # oldest first
    more: bool  # older messages exist: ask again with before=messages[0].op_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """One row of `GET /v1/conversations`."""

    conv: str
    type: str | None
    settings: Mapping[str, AttrValue]
    members: Mapping[str, str]  # user -> role
    last_message: Message | None
    unread: int

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Conversation:
        try:
            conv = _text(row["conv"])
            last = row.get("last_message")
            return cls(
                conv=conv,
                type=row.get("type"),
                settings=dict(row.get("settings") or {}),
                members=dict(row.get("members") or {}),
                last_message=None if last is None else Message.from_json(conv, last),
                unread=int(row.get("unread", 0)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed conversation: {exc}") from None


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The WebSocket is open and authenticated (catch-up follows; see CaughtUp)."""

    user: str
    device: str
    node: str
    session: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The WebSocket closed. `will_retry` is False after close()/disconnect() or a dead token."""

    code: int | None
    reason: str
    will_retry: bool


@dataclass(frozen=True, slots=True)
class EdgeChanged:
    """The client is connecting to a different edge (base URL) than last time: the nearest one
    at the first connect (`old` None), the next one after a failure, a nearer one after a
    re-measure, or one named in `move_to`. Connected and CaughtUp follow as on any reconnect."""

    old: str | None
    new: str


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """An HTTP catch-up finished; `new_ops` of its ops were not seen before."""

    new_ops: int


@dataclass(frozen=True, slots=True)
class OpReceived:
    """An op this client had not seen (from the live socket or a catch-up; never twice)."""

    conv: str
    op: Op
    live: bool


@dataclass(frozen=True, slots=True)
class Read:
    conv: str
    user: str
    op_id: str


@dataclass(frozen=True, slots=True)
class Typing:
    conv: str
    user: str
    active: bool


@dataclass(frozen=True, slots=True)
class Presence:
    user: str
    online: bool


@dataclass(frozen=True, slots=True)
class ServerNotice:
    """An error frame that answers no request of ours (e.g. a refused typing frame)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """The key directory shows a new Ed25519 key (`new`, base64url) for a device id whose key
    was `old`: the device is untrusted — no chain keys go to it, its messages are unverified —
    until `Client.trust(user, device)` (docs/e2ee.md §2)."""

    user: str
    device: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class DeviceAdded:
    """A new device of a user seen before: trusted on first use, and the safety number with
    that user changes."""

    user: str
    device: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Op `op_id` repeats the ciphertext position of `original` (same sender device, chain and
    index): it is not shown (docs/e2ee.md §7)."""

    conv: str
    op_id: str
    original: str
    user: str
    device: str


@dataclass(frozen=True, slots=True)
class Undecryptable:
    """A message or edit cannot be read (yet). `reason`: missing_key (its key share has not
    arrived; a key request was sent), tampered, bad_signature, before_share, out_of_range,
    malformed."""

    conv: str
    op_id: str
    reason: str


Event = (
    Connected
    | Disconnected
    | EdgeChanged
    | CaughtUp
    | OpReceived
    | Read
    | Typing
    | Presence
    | ServerNotice
    | KeyChanged
    | DeviceAdded
    | Replay
    | Undecryptable
)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value
