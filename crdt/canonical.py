"""Canonical JSON (Matrix spec, appendix "Canonical JSON") and strict decoding.

Canonical form: object keys sorted by code point, compact separators, UTF-8 without escaping
non-ASCII, integers only within ±(2**53 - 1), no floats. Strict decoding refuses duplicate keys,
floats, NaN/Infinity, integers outside that range, excessive nesting and oversized input; it raises
only `DecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from crdt.errors import DecodeError

MAX_SAFE_INT = 2**53 - 1
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


def _check(value: Any, depth: int) -> None:
    if depth > DEFAULT_MAX_DEPTH:
        raise DecodeError("value nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise DecodeError(f"integer {value} outside ±(2**53-1)")
        return
    if isinstance(value, float):
        raise DecodeError("floats are not allowed in canonical JSON")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DecodeError("object keys must be strings")
            _check(item, depth + 1)
        return
    raise DecodeError(f"type {type(value).__name__} is not JSON")


def canonical_json(value: Any) -> bytes:
    """Encode `value` as canonical JSON bytes; raises DecodeError for non-canonical values."""
    _check(value, 0)
    return _ENCODER.encode(value).encode("utf-8")


def _no_float(text: str) -> Any:
    raise DecodeError(f"floats are not allowed: {text[:32]}")


def _no_constant(text: str) -> Any:
    raise DecodeError(f"{text} is not allowed")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DecodeError("duplicate key in object")
    return obj


def _int(text: str) -> int:
    if len(text) > 17:
        raise DecodeError("integer too long")
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise DecodeError(f"integer {value} outside ±(2**53-1)")
    return value


def strict_loads(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parse JSON strictly; raises only DecodeError."""
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise DecodeError(f"input larger than {max_bytes} bytes")
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise DecodeError(f"input larger than {max_bytes} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("input is not valid UTF-8") from exc
    else:
        raise DecodeError(f"cannot decode {type(data).__name__}")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_no_float,
            parse_int=_int,
            parse_constant=_no_constant,
        )
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"malformed JSON: {exc}") from exc
    _check(value, 0)
    return value


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64encode(data: bytes) -> str:
    """Unpadded base64url, the one binary-to-text encoding used everywhere in Yanzi."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: object, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Strictly decode unpadded base64url; raises only DecodeError."""
    if not isinstance(text, str):
        raise DecodeError("expected a base64url string")
    if len(text) > (max_bytes * 4 + 2) // 3 or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise DecodeError("invalid or oversized base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("invalid base64url") from exc
    if b64encode(raw) != text:
        raise DecodeError("non-canonical base64url")
    return raw
