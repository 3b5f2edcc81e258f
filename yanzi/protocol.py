"""The client side of the Yanzi wire protocol: pure, sans-IO (like h11/wsproto).

Encoders turn requests into frame text / HTTP bodies; `decode_frame` turns one server frame into
a frozen value or raises `ProtocolError`. No sockets here: `yanzi.client` moves the bytes.
docs/protocol.md is the normative description of every frame.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nacl.signing import SigningKey

from crdt import (
    AttrValue,
    Content,
    ConvId,
    DecodeError,
    DeviceId,
    Op,
    OpKind,
    UserId,
    b64encode,
    sign_content,
)
from yanzi.errors import InvalidRequest, ProtocolError
from yanzi.events import Presence, Read, Typing

RequestId = int

# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    """An op as the client writes it, before the node stamps it. Signed by `sign`."""

    cmid: str
    conv: str
    kind: OpKind
    target: str = ""
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    body: bytes = b""
    dsig: bytes = b""

    def content(self, user: str, device: str) -> Content:
        """The content the node will rebuild from this draft and the session's identity."""
        try:
            return Content(
                conv=ConvId(self.conv),
                kind=self.kind,
                author=UserId(user),
                device=DeviceId(device),
                target=self.target,
                attrs=dict(self.attrs),
                body=self.body,
            )
        except DecodeError as exc:
            raise InvalidRequest(str(exc)) from None

    def sign(self, user: str, device: str, key: SigningKey) -> Draft:
        """Attach the device's Ed25519 signature over canonical(content) (DESIGN.md decision 4).

        The signed content carries the cmid as attrs["cmid"], so every replica hides a retry
        of this op, whichever node it reaches (docs/crdt.md)."""
        attrs = {**self.attrs, "cmid": self.cmid}
        unsigned = Draft(
            cmid=self.cmid,
            conv=self.conv,
            kind=self.kind,
            target=self.target,
            attrs=attrs,
            body=self.body,
        )
        dsig = sign_content(unsigned.content(user, device), key)
        return Draft(
            cmid=self.cmid,
            conv=self.conv,
            kind=self.kind,
            target=self.target,
            attrs=attrs,
            body=self.body,
            dsig=dsig,
        )

    def to_json(self) -> dict[str, Any]:
        """The body of `POST /v1/ops`; a `send` frame is this plus type and id."""
        out: dict[str, Any] = {"cmid": self.cmid, "conv": self.conv, "kind": self.kind}
        if self.target:
            out["target"] = self.target
        if self.attrs:
            out["attrs"] = dict(self.attrs)
        if self.body:
            out["body"] = b64encode(self.body)
        if self.dsig:
            out["dsig"] = b64encode(self.dsig)
        return out


def direct_conv_id(a: str, b: str) -> str:
    """The id of the direct conversation of two users, the same on every node (docs/protocol.md):
    "d_" + base64url(SHA-256(sorted pair joined by NUL)[:18])."""
    pair = "\x00".join(sorted((a, b))).encode()
    return "d_" + b64encode(hashlib.sha256(pair).digest()[:18])


def _encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def auth_frame(token: str) -> str:
    return _encode({"type": "auth", "token": token})


def send_frame(rid: RequestId, draft: Draft) -> str:
    return _encode({"type": "send", "id": rid, **draft.to_json()})


def read_frame(rid: RequestId, conv: str, op_id: str) -> str:
    return _encode({"type": "read", "id": rid, "conv": conv, "op_id": op_id})


def typing_frame(conv: str, active: bool) -> str:
    return _encode({"type": "typing", "conv": conv, "active": active})


def ping_frame(rid: RequestId) -> str:
    return _encode({"type": "ping", "id": rid})


# -- server frames ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    user: str
    device: str
    node: str
    session: int
    limits: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A frame answering one request: ack (send), ok (read), pong (ping) or error."""

    id: RequestId
    kind: Literal["ack", "ok", "pong", "error"]
    frame: Mapping[str, Any]

    @property
    def error(self) -> tuple[str, str] | None:
        if self.kind != "error":
            return None
        return str(self.frame.get("code", "")), str(self.frame.get("message", ""))


@dataclass(frozen=True, slots=True)
class OpFrame:
    op: Op


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An error frame without a request id (or with one we did not send)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A frame type this SDK does not know: ignored, so nodes can add frames compatibly."""

    type: str


ServerFrame = Ready | Reply | OpFrame | ErrorFrame | Read | Typing | Presence | Unknown


def decode_frame(text: str | bytes) -> ServerFrame:
    """Decode one server frame; raises only ProtocolError."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("a frame must be an object with a string type")
    try:
        return _decode(frame)
    except (KeyError, TypeError, ValueError) as exc:  # crdt's DecodeError is a ValueError
        raise ProtocolError(f"malformed {frame['type']} frame: {exc}") from None


def _decode(frame: dict[str, Any]) -> ServerFrame:
    kind = frame["type"]
    rid = frame.get("id")
    if kind in ("ack", "ok", "pong", "error") and isinstance(rid, int):
        return Reply(id=rid, kind=kind, frame=frame)
    if kind == "op":
        return OpFrame(Op.from_json(frame["op"]))
    if kind == "error":
        return ErrorFrame(str(frame["code"]), str(frame["message"]))
    if kind == "ready":
        return Ready(
            user=_s(frame["user"]),
            device=_s(frame["device"]),
            node=_s(frame["node"]),
            session=int(frame["session"]),
            limits=dict(frame.get("limits") or {}),
        )
    if kind == "read":
        return Read(_s(frame["conv"]), _s(frame["user"]), _s(frame["op_id"]))
    if kind == "typing":
        return Typing(_s(frame["conv"]), _s(frame["user"]), _b(frame["active"]))
    if kind == "presence":
        return Presence(_s(frame["user"]), _b(frame["online"]))
    return Unknown(kind)


def _s(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _b(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true/false, got {type(value).__name__}")
    return value
