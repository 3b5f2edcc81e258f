"""The op: the immutable, content-addressed unit of every conversation's history.

Wire form (a JSON object; binary values are unpadded base64url):

    {"content": {"v": 1, "conv": ..., "kind": ..., "author": ..., "device": ...,
                 "target": ..., "attrs": {...}, "body": "<b64>"},
     "dsig": "<b64 Ed25519 by the author's device over canonical(content)>" | "",
     "hlc": [l, c], "dot": [origin, seq],
     "nsig": "<b64 Ed25519 by the origin node over canonical(header + dsig)>" | ""}

`op_id` = base64url(SHA-256(canonical({"content", "hlc", "dot"}))): the header without signatures.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, NewType, get_args

from crdt.canonical import (
    DEFAULT_MAX_BYTES,
    MAX_SAFE_INT,
    b64decode,
    b64encode,
    canonical_json_trusted,
    strict_loads,
)
from crdt.errors import DecodeError
from crdt.hlc import Timestamp

ConvId = NewType("ConvId", str)
UserId = NewType("UserId", str)
DeviceId = NewType("DeviceId", str)
NodeId = NewType("NodeId", str)
OpId = NewType("OpId", str)

OpKind = Literal[
    "create",
    "message",
    "edit",
    "delete",
    "react",
    "unreact",
    "member_add",
    "member_remove",
    "member_role",
    "key_share",
    "settings",
]
OP_KINDS: Final[frozenset[str]] = frozenset(get_args(OpKind))
Role = Literal["owner", "admin", "member"]
ROLES: Final[tuple[str, ...]] = ("member", "admin", "owner")  # ascending power

WIRE_VERSION: Final = 1
MAX_ID_LEN: Final = 128
MAX_BODY_BYTES: Final = 64 * 1024
MAX_ATTRS: Final = 32
MAX_ATTR_LIST: Final = 256
MAX_ATTR_STR: Final = 1024
_ID_RE = re.compile(r"[A-Za-z0-9._:@=+/-]{1,128}")

AttrValue = str | int | bool | list[str]
OrderKey = tuple[int, int, str, str]
"""(HLC l, HLC c, origin node, op id): the total order of a conversation's ops."""
EMPTY_ATTRS: Final[Mapping[str, AttrValue]] = MappingProxyType({})  # shared, read-only


def check_id(value: object, what: str) -> str:
    """Ids are short printable ASCII (letters, digits and ._:@=+/-)."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise DecodeError(f"{what} must be 1-{MAX_ID_LEN} chars of [A-Za-z0-9._:@=+/-]")
    # One shared copy per distinct id: 100k decoded ops of one conversation would otherwise
    # hold 100k copies of its id, author and origin strings.
    return sys.intern(value)


@dataclass(frozen=True, slots=True, order=False)
class Dot:
    """(origin node, seq): seq is dense per (conversation, origin), starting at 1."""

    origin: NodeId
    seq: int

    def __post_init__(self) -> None:
        check_id(self.origin, "dot origin")
        if type(self.seq) is not int or not 1 <= self.seq <= 2**53 - 1:
            raise DecodeError("dot seq must be an integer >= 1")

    def to_json(self) -> list[Any]:
        return [self.origin, self.seq]

    @classmethod
    def from_json(cls, value: object) -> Dot:
        if not (isinstance(value, list) and len(value) == 2):
            raise DecodeError("dot must be [origin, seq]")
        return cls(NodeId(check_id(value[0], "dot origin")), value[1])


def check_attrs(attrs: object) -> Mapping[str, AttrValue]:
    """Validate op attrs and return a private copy (so a caller's later edits cannot change an
    op's id); raises only DecodeError."""
    if not isinstance(attrs, Mapping) or len(attrs) > MAX_ATTRS:
        raise DecodeError(f"attrs must be an object of at most {MAX_ATTRS} entries")
    if not attrs:
        return EMPTY_ATTRS
    copy: dict[str, AttrValue] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise DecodeError("attr keys must be 1-64 char strings")
        if isinstance(value, bool):
            copy[key] = value
        elif isinstance(value, int):
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
                raise DecodeError(f"attr {key!r} is outside ±(2**53-1)")
            copy[key] = value
        elif isinstance(value, str):
            if len(value) > MAX_ATTR_STR:
                raise DecodeError(f"attr {key!r} longer than {MAX_ATTR_STR}")
            copy[key] = value
        elif isinstance(value, list):
            if len(value) > MAX_ATTR_LIST or not all(
                isinstance(v, str) and len(v) <= MAX_ID_LEN for v in value
            ):
                raise DecodeError(
                    f"attr {key!r} must be a list of at most {MAX_ATTR_LIST} strings "
                    f"of at most {MAX_ID_LEN} chars"
                )
            copy[key] = list(value)
        else:
            raise DecodeError(f"attr {key!r} has an unsupported type")
    return copy


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """What the author's device writes and signs: everything but the node's stamps."""

    conv: ConvId
    kind: OpKind
    author: UserId
    device: DeviceId
    target: str = ""
    attrs: Mapping[str, AttrValue] = field(default_factory=lambda: EMPTY_ATTRS)
    body: bytes = b""

    def __post_init__(self) -> None:
        check_id(self.conv, "conv")
        check_id(self.author, "author")
        check_id(self.device, "device")
        if not isinstance(self.kind, str) or self.kind not in OP_KINDS:
            raise DecodeError(f"unknown op kind {self.kind!r}")
        if self.target != "":
            check_id(self.target, "target")
        object.__setattr__(self, "attrs", check_attrs(self.attrs))
        if not isinstance(self.body, bytes) or len(self.body) > MAX_BODY_BYTES:
            raise DecodeError(f"body must be at most {MAX_BODY_BYTES} bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION,
            "conv": self.conv,
            "kind": self.kind,
            "author": self.author,
            "device": self.device,
            "target": self.target,
            "attrs": dict(self.attrs),
            "body": b64encode(self.body),
        }

    def signing_bytes(self) -> bytes:
        """The bytes the device signs: canonical JSON of the content object."""
        return canonical_json_trusted(self.to_json())

    @classmethod
    def from_json(cls, value: object) -> Content:
        if not isinstance(value, dict):
            raise DecodeError("content must be an object")
        expected = {"v", "conv", "kind", "author", "device", "target", "attrs", "body"}
        if set(value) != expected:
            raise DecodeError(f"content must have exactly the fields {sorted(expected)}")
        if value["v"] != WIRE_VERSION or type(value["v"]) is not int:
            raise DecodeError(f"unsupported content version {value['v']!r}")
        target = value["target"]
        if not isinstance(target, str):
            raise DecodeError("target must be a string")
        return cls(
            conv=ConvId(check_id(value["conv"], "conv")),
            kind=_kind(value["kind"]),
            author=UserId(check_id(value["author"], "author")),
            device=DeviceId(check_id(value["device"], "device")),
            target=target,
            attrs=check_attrs(value["attrs"]),
            body=b64decode(value["body"], max_bytes=MAX_BODY_BYTES),
        )


def _kind(kind: object) -> OpKind:
    if isinstance(kind, str) and kind in OP_KINDS:
        return kind  # type: ignore[return-value]
    raise DecodeError(f"unknown op kind {kind!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """A stamped op: content + device signature + HLC + dot + node signature."""

    content: Content
    hlc: Timestamp
    dot: Dot
    dsig: bytes = b""
    nsig: bytes = b""
    op_id: OpId = field(init=False)

    def __post_init__(self) -> None:
        for sig in (self.dsig, self.nsig):
            if not isinstance(sig, bytes) or len(sig) not in (0, 64):
                raise DecodeError("signatures must be empty or 64 bytes")
        object.__setattr__(self, "op_id", compute_op_id(self.content, self.hlc, self.dot))

    def with_node_signature(self, nsig: bytes) -> Op:
        """A copy carrying `nsig`; the op id does not cover signatures, so it is reused."""
        if not isinstance(nsig, bytes) or len(nsig) not in (0, 64):
            raise DecodeError("signatures must be empty or 64 bytes")
        return Op._trusted(self.content, self.hlc, self.dot, self.dsig, nsig, self.op_id)

    def __hash__(self) -> int:
        # The generated hash would hash `attrs` (a dict); the op id already names the header.
        return hash((self.op_id, self.dsig, self.nsig))

    # Convenience accessors: the view code reads these on every op.
    @property
    def conv(self) -> ConvId:
        return self.content.conv

    @property
    def kind(self) -> OpKind:
        return self.content.kind

    @property
    def author(self) -> UserId:
        return self.content.author

    @property
    def target(self) -> str:
        return self.content.target

    @property
    def order_key(self) -> OrderKey:
        """The total order: (l, c, origin, op id)."""
        return (self.hlc.l, self.hlc.c, self.dot.origin, self.op_id)

    def header_json(self) -> dict[str, Any]:
        """The header without signatures: what `op_id` hashes."""
        return {
            "content": self.content.to_json(),
            "hlc": self.hlc.to_json(),
            "dot": self.dot.to_json(),
        }

    def envelope_signing_bytes(self) -> bytes:
        """The bytes the origin node signs: header plus the device signature."""
        return OpBytes.of(self.content, self.hlc, self.dot, self.dsig).envelope

    def to_json(self) -> dict[str, Any]:
        wire = self.header_json()
        wire["dsig"] = b64encode(self.dsig)
        wire["nsig"] = b64encode(self.nsig)
        return wire

    def to_bytes(self) -> bytes:
        return OpBytes.of(self.content, self.hlc, self.dot, self.dsig).wire(self.nsig)

    @classmethod
    def _trusted(
        cls, content: Content, hlc: Timestamp, dot: Dot, dsig: bytes, nsig: bytes, op_id: OpId
    ) -> Op:
        """An op from parts already validated and an id already computed from them (by
        `OpBytes`): skips `__post_init__`, which would encode the header once more."""
        op = object.__new__(cls)
        for name, value in (
            ("content", content),
            ("hlc", hlc),
            ("dot", dot),
            ("dsig", dsig),
            ("nsig", nsig),
            ("op_id", op_id),
        ):
            object.__setattr__(op, name, value)
        return op

    @classmethod
    def from_json(cls, value: object) -> Op:
        if not isinstance(value, dict):
            raise DecodeError("op must be an object")
        expected = {"content", "hlc", "dot", "dsig", "nsig"}
        if set(value) != expected:
            raise DecodeError(f"op must have exactly the fields {sorted(expected)}")
        return cls(
            content=Content.from_json(value["content"]),
            hlc=Timestamp.from_json(value["hlc"]),
            dot=Dot.from_json(value["dot"]),
            dsig=b64decode(value["dsig"], max_bytes=64),
            nsig=b64decode(value["nsig"], max_bytes=64),
        )

    @classmethod
    def from_bytes(cls, data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Op:
        return cls.from_json(strict_loads(data, max_bytes=max_bytes))


@dataclass(frozen=True, slots=True)
class OpBytes:
    """The canonical encodings of one op's header, built from one encoding of its content.

    Canonical JSON sorts keys, so every object an op is hashed, signed or sent as is the same
    members spliced in key order — `content` < `dot` < `dsig` < `hlc` < `nsig`:

        header   {"content":C,"dot":D,"hlc":L}                      hashed for the op id
        envelope {"content":C,"dot":D,"dsig":S,"hlc":L}             signed by the origin node
        wire     {"content":C,"dot":D,"dsig":S,"hlc":L,"nsig":N}    stored and sent

    Splicing gives byte-for-byte what `canonical_json_trusted` gives for the whole object
    (tests/crdt/test_op_codec.py checks it), at a third of the cost: the content, with its
    base64 body, is encoded once instead of three times.
    """

    content: bytes
    dot: bytes
    hlc: bytes
    dsig: bytes

    @classmethod
    def of(cls, content: Content, hlc: Timestamp, dot: Dot, dsig: bytes) -> OpBytes:
        return cls(
            canonical_json_trusted(content.to_json()),
            canonical_json_trusted(dot.to_json()),
            b"[%d,%d]" % (hlc.l, hlc.c),
            b64encode(dsig).encode("ascii"),
        )

    @property
    def header(self) -> bytes:
        return b'{"content":%s,"dot":%s,"hlc":%s}' % (self.content, self.dot, self.hlc)

    @property
    def op_id(self) -> OpId:
        return OpId(b64encode(hashlib.sha256(self.header).digest()))

    @property
    def envelope(self) -> bytes:
        return b'{"content":%s,"dot":%s,"dsig":"%s","hlc":%s}' % (
            self.content,
            self.dot,
            self.dsig,
            self.hlc,
        )

    def wire(self, nsig: bytes) -> bytes:
        return b'{"content":%s,"dot":%s,"dsig":"%s","hlc":%s,"nsig":"%s"}' % (
            self.content,
            self.dot,
            self.dsig,
            self.hlc,
            b64encode(nsig).encode("ascii"),
        )


def compute_op_id(content: Content, hlc: Timestamp, dot: Dot) -> OpId:
    return OpBytes.of(content, hlc, dot, b"").op_id
