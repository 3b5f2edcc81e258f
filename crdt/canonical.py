"""Canonical JSON (Matrix spec, appendix "Canonical JSON") and strict decoding.

Canonical form: object keys sorted by code point, compact separators, UTF-8 without escaping
non-ASCII, integers only within ±(2**53 - 1), no floats. Strict decoding refuses duplicate keys,
floats, NaN/Infinity, integers outside that range, lone surrogates (they have no UTF-8 form),
more than `DEFAULT_MAX_DEPTH` nested arrays/objects and oversized input; it raises only
`DecodeError`.

`canonicalize` is the Matrix-compatible re-encoder for JSON text written by someone else: like
`strict_loads`, except that a number written with a fraction or exponent is accepted when its
value is an integer in range (the spec's example turns `{"a": -0, "b": 1e10}` into
`{"a":0,"b":10000000000}`). Yanzi's own wire never needs it: `canonical_json` only writes plain
integers, and `strict_loads` refuses every other spelling.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from crdt.errors import DecodeError

MAX_SAFE_INT = 2**53 - 1
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


# A lone surrogate is a valid Python str (and json.loads yields one for "\ud800") but has no
# UTF-8 encoding, so it can be neither signed nor sent: refuse it as input, not at encode time.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_str(text: str) -> None:
    if _SURROGATE.search(text):
        raise DecodeError("string contains a lone surrogate (not encodable as UTF-8)")


def _check(value: Any, depth: int) -> None:
    """Validate a JSON value; `depth` is the number of arrays/objects enclosing `value`."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_str(value)
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise DecodeError(f"integer {value} outside ±(2**53-1)")
        return
    if isinstance(value, float):
        raise DecodeError("floats are not allowed in canonical JSON")
    if isinstance(value, (list, tuple, dict)) and depth >= DEFAULT_MAX_DEPTH:
        # Count containers, not values, so that `[]` and `[0]` nest equally deep.
        raise DecodeError(f"more than {DEFAULT_MAX_DEPTH} nested arrays/objects")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DecodeError("object keys must be strings")
            _check_str(key)
            _check(item, depth + 1)
        return
    raise DecodeError(f"type {type(value).__name__} is not JSON")


def canonical_json(value: Any) -> bytes:
    """Encode `value` as canonical JSON bytes; raises DecodeError for non-canonical values."""
    _check(value, 0)
    return _ENCODER.encode(value).encode("utf-8")


def canonical_json_trusted(value: Any) -> bytes:
    """Canonical JSON of a value built from already-validated parts (op headers): skips the
    type walk, which costs more than the encoding itself. Lone surrogates still fail here."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise DecodeError(f"not canonical JSON: {exc}") from None


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


def _integral_number(text: str) -> int:
    """A number spelt with a fraction or exponent, accepted only if its value is an integer."""
    if len(text) > 64:  # bound Decimal's work; no sane integer needs more
        raise DecodeError("number too long")
    try:
        number = Decimal(text)
    except InvalidOperation as exc:  # exponent beyond what Decimal's context can hold
        raise DecodeError(f"number {text[:32]} out of range") from exc
    if number.is_zero():
        return 0  # "-0", "0.0", "0e999": Matrix forbids -0 in the output, so it becomes 0
    if number.adjusted() > 15 or number != number.to_integral_value():
        raise DecodeError(f"number {text[:32]} is not an integer within ±(2**53-1)")
    return _int(str(int(number)))


def _text_of(data: bytes | str, max_bytes: int) -> str:
    if isinstance(data, str):
        # Measure UTF-8 bytes, not characters: a 4-byte character counts 4 towards the limit.
        if len(data) > max_bytes or (
            len(data) * 4 > max_bytes and len(data.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise DecodeError(f"input larger than {max_bytes} bytes")
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise DecodeError(f"input larger than {max_bytes} bytes")
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("input is not valid UTF-8") from exc
    raise DecodeError(f"cannot decode {type(data).__name__}")


def _loads(data: bytes | str, max_bytes: int, parse_float: Callable[[str], Any]) -> Any:
    text = _text_of(data, max_bytes)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=parse_float,
            parse_int=_int,
            parse_constant=_no_constant,
        )
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"malformed JSON: {exc}") from exc
    _check(value, 0)
    return value


def strict_loads(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parse JSON strictly; raises only DecodeError."""
    return _loads(data, max_bytes, _no_float)


def canonicalize(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Re-encode JSON text written elsewhere as canonical JSON (Matrix appendix semantics).

    Numbers may be spelt any way JSON allows as long as their value is an integer within
    ±(2**53-1) (`1e10`, `-0`, `2.0`); everything else `strict_loads` refuses is refused too.
    Raises only DecodeError.
    """
    return canonical_json(_loads(data, max_bytes, _integral_number))


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
