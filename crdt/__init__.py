"""Yanzi's pure core: HLC, ops, canonical encoding, the per-conversation CRDT log and its view.

Nothing here performs I/O, reads a clock or draws randomness: time and ids come in as arguments.
"""

from crdt.canonical import b64decode, b64encode, canonical_json, strict_loads
from crdt.cursor import Cursor, advance, cursor_from_json, cursor_vv, decode_cursor, encode_cursor
from crdt.errors import ClockDriftError, CrdtError, DecodeError, SignatureError
from crdt.hlc import HybridClock, Timestamp
from crdt.log import MessageLog, Outcome, dependencies
from crdt.markers import ReadMarkers, marker_from_json
from crdt.op import (
    OP_KINDS,
    ROLES,
    AttrValue,
    Content,
    ConvId,
    DeviceId,
    Dot,
    NodeId,
    Op,
    OpBytes,
    OpId,
    OpKind,
    OrderKey,
    Role,
    UserId,
    check_id,
)
from crdt.signing import (
    node_id_for,
    sign_content,
    sign_envelope,
    stamp,
    verify_content,
    verify_envelope,
)
from crdt.state import ConversationState, ConversationView, MessageState, Refusal
from crdt.vv import VersionVector

__all__ = [
    "OP_KINDS",
    "ROLES",
    "AttrValue",
    "ClockDriftError",
    "Content",
    "ConvId",
    "ConversationState",
    "ConversationView",
    "CrdtError",
    "Cursor",
    "DecodeError",
    "DeviceId",
    "Dot",
    "HybridClock",
    "MessageLog",
    "MessageState",
    "NodeId",
    "Op",
    "OpBytes",
    "OpId",
    "OpKind",
    "OrderKey",
    "Outcome",
    "ReadMarkers",
    "Refusal",
    "Role",
    "SignatureError",
    "Timestamp",
    "UserId",
    "VersionVector",
    "advance",
    "b64decode",
    "b64encode",
    "canonical_json",
    "check_id",
    "cursor_from_json",
    "cursor_vv",
    "decode_cursor",
    "dependencies",
    "encode_cursor",
    "marker_from_json",
    "node_id_for",
    "sign_content",
    "sign_envelope",
    "stamp",
    "strict_loads",
    "verify_content",
    "verify_envelope",
]
