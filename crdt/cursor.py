"""The portable sync cursor: {conversation: {origin: highest contiguous seq}}.

Encoded for URLs and storage as unpadded base64url of canonical JSON `{"v": 1, "vv": {...}}`.
Clients may also keep and send the decoded map as JSON; both forms mean the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping

from crdt.canonical import b64decode, b64encode, canonical_json, strict_loads
from crdt.errors import DecodeError
from crdt.op import ConvId, NodeId, check_id
from crdt.vv import MAX_SEQ, VersionVector

CURSOR_VERSION = 1
MAX_CURSOR_BYTES = 256 * 1024
MAX_CURSOR_CONVS = 10_000
MAX_CURSOR_ORIGINS = 1_000

Cursor = dict[ConvId, dict[NodeId, int]]


def cursor_from_json(value: object) -> Cursor:
    """Validate a decoded cursor map; raises only DecodeError."""
    if not isinstance(value, dict) or len(value) > MAX_CURSOR_CONVS:
        raise DecodeError(f"cursor must be an object of at most {MAX_CURSOR_CONVS} conversations")
    cursor: Cursor = {}
    for conv, vv in value.items():
        check_id(conv, "cursor conversation")
        if not isinstance(vv, dict) or len(vv) > MAX_CURSOR_ORIGINS:
            raise DecodeError("each cursor entry must be an object of origin -> seq")
        entry: dict[NodeId, int] = {}
        for origin, seq in vv.items():
            check_id(origin, "cursor origin")
            if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
                raise DecodeError("cursor seqs must be integers >= 0")
            if seq:
                entry[NodeId(origin)] = seq
        cursor[ConvId(conv)] = entry
    return cursor


def encode_cursor(cursor: Mapping[ConvId, Mapping[NodeId, int]]) -> str:
    """Encode in normal form; raises DecodeError for what `decode_cursor` would refuse.

    Normalising through `cursor_from_json` means zero seqs are dropped (so
    `decode_cursor(encode_cursor(c)) == c` for every normal-form cursor) and a cursor the node
    could never read back is refused here rather than handed to a client.
    """
    normal = cursor_from_json({c: dict(vv) for c, vv in cursor.items()})
    return b64encode(canonical_json({"v": CURSOR_VERSION, "vv": normal}))


def decode_cursor(text: object) -> Cursor:
    """Strictly decode an encoded cursor; the empty string is the empty cursor."""
    if text == "":
        return {}
    raw = b64decode(text, max_bytes=MAX_CURSOR_BYTES)
    value = strict_loads(raw, max_bytes=MAX_CURSOR_BYTES)
    if not isinstance(value, dict) or set(value) != {"v", "vv"}:
        raise DecodeError("cursor must be {'v': 1, 'vv': {...}}")
    if value["v"] != CURSOR_VERSION or type(value["v"]) is not int:
        raise DecodeError(f"unsupported cursor version {value['v']!r}")
    return cursor_from_json(value["vv"])


def cursor_vv(cursor: Cursor, conv: ConvId) -> VersionVector:
    return VersionVector(cursor.get(conv, {}))


def advance(cursor: Cursor, conv: ConvId, vv: VersionVector) -> None:
    """Raise the cursor entry of `conv` to the contiguous part of `vv` (never lowers it)."""
    entry = cursor.setdefault(conv, {})
    for origin, seq in vv.contiguous().items():
        if seq > entry.get(origin, 0):
            entry[origin] = seq
