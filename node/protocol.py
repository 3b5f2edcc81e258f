"""The client protocol codec: pure, sans-IO (like h11/wsproto).

`ServerConnection.receive(text)` turns one WebSocket text frame into a frozen event or raises
`ClientError` with a stable code; encoding helpers turn server events into frame text. The
connection's state (awaiting auth -> open -> closed) lives here; sockets and tasks live in
`node.ws`. docs/protocol.md is the normative description of every frame below.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from crdt import OP_KINDS, AttrValue, DecodeError, b64decode, check_id, strict_loads
from crdt.op import MAX_BODY_BYTES, check_attrs
from node.errors import ClientError

MAX_REQUEST_ID_LEN: Final = 64
MAX_CMID_LEN: Final = 64
MAX_TOKEN_LEN: Final = 256


class State(enum.Enum):
    AWAIT_AUTH = "await_auth"
    OPEN = "open"
    CLOSED = "closed"


RequestId = int | str | None


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    id: RequestId = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Submit one op. The node fills in author and device from the session."""

    id: RequestId
    cmid: str
    conv: str
    kind: str
    target: str = ""
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    body: bytes = b""
    dsig: bytes = b""


@dataclass(frozen=True, slots=True)
class Read:
    conv: str
    op_id: str
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Typing:
    conv: str
    active: bool
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


ClientEvent = Auth | Send | Read | Typing | Ping

_FIELDS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    # type: (required fields, optional fields) besides "type" and "id"
    "auth": (frozenset({"token"}), frozenset()),
    "send": (frozenset({"cmid", "conv", "kind"}), frozenset({"target", "attrs", "body", "dsig"})),
    "read": (frozenset({"conv", "op_id"}), frozenset()),
    "typing": (frozenset({"conv", "active"}), frozenset()),
    "ping": (frozenset(), frozenset()),
}


def _request_id(frame: dict[str, Any]) -> RequestId:
    rid = frame.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        raise ClientError("bad_frame", "id must be an integer or a string")
    if isinstance(rid, str) and len(rid) > MAX_REQUEST_ID_LEN:
        raise ClientError("bad_frame", f"id longer than {MAX_REQUEST_ID_LEN}")
    return rid


def _str(frame: dict[str, Any], name: str, rid: RequestId, *, max_len: int = 128) -> str:
    value = frame[name]
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise ClientError(
            "bad_frame", f"{name} must be a string of 1-{max_len} chars", request_id=rid
        )
    return value


def _ident(frame: dict[str, Any], name: str, rid: RequestId) -> str:
    try:
        return check_id(frame[name], name)
    except DecodeError as exc:
        raise ClientError("bad_frame", str(exc), request_id=rid) from None


def parse_frame(
    data: str | bytes, *, max_bytes: int, max_body_bytes: int = MAX_BODY_BYTES
) -> ClientEvent:
    """Decode one client frame; raises only ClientError."""
    # The limit is in UTF-8 bytes: a text frame of CJK characters is up to 4x its len().
    if len(data) > max_bytes or (
        isinstance(data, str)
        and len(data) * 4 > max_bytes
        and len(data.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise ClientError("too_large", f"frame larger than {max_bytes} bytes")
    try:
        frame = strict_loads(data, max_bytes=max_bytes)
    except DecodeError as exc:
        raise ClientError("bad_json", f"frame is not valid JSON: {exc}") from None
    return event_from_json(frame, max_body_bytes=max_body_bytes)


def event_from_json(frame: object, *, max_body_bytes: int = MAX_BODY_BYTES) -> ClientEvent:
    """Validate an already-parsed frame; raises only ClientError."""
    if not isinstance(frame, dict):
        raise ClientError("bad_frame", "a frame must be a JSON object")
    rid = _request_id(frame)
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ClientError("unknown_type", f"unknown frame type {kind!r}", request_id=rid)
    required, optional = _FIELDS[kind]
    present = set(frame) - {"type", "id"}
    if missing := required - present:
        raise ClientError("bad_frame", f"{kind} needs {', '.join(sorted(missing))}", request_id=rid)
    if extra := present - required - optional:
        raise ClientError(
            "bad_frame", f"{kind} has unknown {', '.join(sorted(extra))}", request_id=rid
        )
    if kind == "auth":
        return Auth(_str(frame, "token", rid, max_len=MAX_TOKEN_LEN), rid)
    if kind == "ping":
        return Ping(rid)
    if kind == "read":
        return Read(_ident(frame, "conv", rid), _ident(frame, "op_id", rid), rid)
    if kind == "typing":
        if not isinstance(frame["active"], bool):
            raise ClientError("bad_frame", "active must be true or false", request_id=rid)
        return Typing(_ident(frame, "conv", rid), frame["active"], rid)
    return _parse_send(frame, rid, max_body_bytes)


def _parse_send(frame: dict[str, Any], rid: RequestId, max_body_bytes: int) -> Send:
    op_kind = frame["kind"]
    if not isinstance(op_kind, str) or op_kind not in OP_KINDS:
        raise ClientError("bad_frame", f"unknown op kind {op_kind!r}", request_id=rid)
    target = frame.get("target", "")
    if target != "":
        target = _ident(frame, "target", rid)
    body_text = frame.get("body", "")
    # Decide too_large by length here: b64decode says "invalid or oversized" for both.
    if isinstance(body_text, str) and len(body_text) > (max_body_bytes * 4 + 2) // 3:
        raise ClientError("too_large", f"body larger than {max_body_bytes} bytes", request_id=rid)
    try:
        attrs = check_attrs(frame.get("attrs", {}))
        body = b64decode(body_text, max_bytes=max_body_bytes)
        dsig = b64decode(frame.get("dsig", ""), max_bytes=64)
    except DecodeError as exc:
        raise ClientError("bad_frame", str(exc), request_id=rid) from None
    if dsig and len(dsig) != 64:
        raise ClientError("bad_frame", "dsig must be a 64-byte Ed25519 signature", request_id=rid)
    return Send(
        id=rid,
        cmid=_str(frame, "cmid", rid, max_len=MAX_CMID_LEN),
        conv=_ident(frame, "conv", rid),
        kind=op_kind,
        target=target,
        attrs=attrs,
        body=body,
        dsig=dsig,
    )


class ServerConnection:
    """Per-socket protocol state: the first frame must authenticate; errors are counted."""

    def __init__(
        self, *, max_frame_bytes: int, max_errors: int, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.state = State.AWAIT_AUTH
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes
        self.max_errors = max_errors
        self.errors = 0

    def receive(self, data: str | bytes) -> ClientEvent:
        if self.state is State.CLOSED:
            raise ClientError("bad_frame", "connection is closed")
        try:
            event = parse_frame(
                data, max_bytes=self.max_frame_bytes, max_body_bytes=self.max_body_bytes
            )
        except ClientError:
            self.errors += 1
            if self.state is State.AWAIT_AUTH:
                self.state = State.CLOSED
                raise ClientError(
                    "auth_required", "the first frame must be a valid auth frame"
                ) from None
            raise
        if self.state is State.AWAIT_AUTH and not isinstance(event, Auth):
            self.state = State.CLOSED
            raise ClientError("auth_required", "the first frame must be an auth frame")
        if self.state is State.OPEN and isinstance(event, Auth):
            self.errors += 1
            raise ClientError("bad_frame", "already authenticated", request_id=event.id)
        return event

    def authenticated(self) -> None:
        self.state = State.OPEN

    def too_many_errors(self) -> bool:
        return self.errors >= self.max_errors

    def close(self) -> None:
        self.state = State.CLOSED


def encode(frame: dict[str, Any]) -> str:
    """Server frames are compact JSON (not necessarily canonical)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
