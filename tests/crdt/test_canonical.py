"""Canonical JSON, strict decoding and base64url.

Interop vectors are copied verbatim from the Matrix specification, appendix "Canonical JSON"
(https://spec.matrix.org/unstable/appendices/#canonical-json, source
matrix-org/matrix-spec content/appendices.md) and appendix "Unpadded Base64".
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.canonical import (
    DEFAULT_MAX_DEPTH,
    MAX_SAFE_INT,
    b64decode,
    b64encode,
    canonical_json,
    canonicalize,
    strict_loads,
)
from crdt.errors import DecodeError

# ---------------------------------------------------------------------------------------------
# Matrix spec vectors
# ---------------------------------------------------------------------------------------------

# (input JSON text, canonical JSON), verbatim from the appendix's "Examples" list, in order.
MATRIX_CANONICAL_EXAMPLES: list[tuple[str, str]] = [
    ("{}", "{}"),
    (
        """{
    "one": 1,
    "two": "Two"
}""",
        '{"one":1,"two":"Two"}',
    ),
    (
        """{
    "b": "2",
    "a": "1"
}""",
        '{"a":"1","b":"2"}',
    ),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    (
        """{
    "a": "日本語"
}""",
        '{"a":"日本語"}',
    ),
    (
        """{
    "本": 2,
    "日": 1
}""",
        '{"日":1,"本":2}',
    ),
    (
        """{
    "a": "\\u65E5"
}""",
        '{"a":"日"}',
    ),
    (
        """{
    "a": null
}""",
        '{"a":null}',
    ),
    (
        """{
    "a": -0,
    "b": 1e10
}""",
        '{"a":0,"b":10000000000}',
    ),
]

# The one example that spells an integer as `1e10`: Yanzi's strict wire decoder refuses that
# spelling on purpose (our own encoder never writes it); `canonicalize` accepts it.
_EXPONENT_EXAMPLE = MATRIX_CANONICAL_EXAMPLES[-1]


@pytest.mark.parametrize(("given_text", "expected"), MATRIX_CANONICAL_EXAMPLES)
def test_matrix_canonical_examples_via_canonicalize(given_text: str, expected: str) -> None:
    assert canonicalize(given_text) == expected.encode("utf-8")
    assert canonicalize(given_text.encode("utf-8")) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("given_text", "expected"),
    [ex for ex in MATRIX_CANONICAL_EXAMPLES if ex is not _EXPONENT_EXAMPLE],
)
def test_matrix_canonical_examples_via_strict_loads(given_text: str, expected: str) -> None:
    assert canonical_json(strict_loads(given_text)) == expected.encode("utf-8")
    # And the canonical output is a fixed point.
    assert canonical_json(strict_loads(expected.encode("utf-8"))) == expected.encode("utf-8")


def test_strict_loads_refuses_the_exponent_spelling_of_an_integer() -> None:
    with pytest.raises(DecodeError):
        strict_loads(_EXPONENT_EXAMPLE[0])


# Appendix "Unpadded Base64", verbatim. None of these contain '+' or '/', so base64url agrees.
MATRIX_UNPADDED_BASE64 = [
    ("", ""),
    ("f", "Zg"),
    ("fo", "Zm8"),
    ("foo", "Zm9v"),
    ("foob", "Zm9vYg"),
    ("fooba", "Zm9vYmE"),
    ("foobar", "Zm9vYmFy"),
]


@pytest.mark.parametrize(("raw", "encoded"), MATRIX_UNPADDED_BASE64)
def test_matrix_unpadded_base64_examples(raw: str, encoded: str) -> None:
    assert b64encode(raw.encode("ascii")) == encoded
    assert b64decode(encoded) == raw.encode("ascii")


# The spec's grammar for a string's characters ("char = unescaped / %x5C escaped"): the only
# escapes allowed are \" \\ \b \f \n \r \t and \u00XX (lowercase hex) for the other control
# characters; everything else, including DEL, '/' and non-ASCII, appears raw.
_MATRIX_STRING = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\U0010ffff]'
    r'|\\["\\bfnrt]|\\u000[0-7bef]|\\u001[0-9a-f])*"'
)
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n"}
_SHORT_ESCAPES |= {"\r": "\\r", "\t": "\\t"}


def _matrix_char(ch: str) -> str:
    """The one encoding the Matrix grammar leaves for `ch` (shortest, no redundant escapes)."""
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    if ord(ch) < 0x20:
        return f"\\u{ord(ch):04x}"
    return ch


def test_every_ascii_character_is_encoded_as_the_matrix_grammar_requires() -> None:
    for code in range(0x80):
        ch = chr(code)
        out = canonical_json(ch).decode("utf-8")
        assert out == f'"{_matrix_char(ch)}"', (code, out)
        assert _MATRIX_STRING.fullmatch(out)


@given(st.text())
def test_strings_follow_the_matrix_grammar(text: str) -> None:
    out = canonical_json(text).decode("utf-8")
    assert _MATRIX_STRING.fullmatch(out)
    assert out == '"' + "".join(_matrix_char(ch) for ch in text) + '"'


def test_keys_sort_by_code_point_not_utf16() -> None:
    # U+FFFF < U+1F600 by code point; in UTF-16 (JavaScript's sort) the surrogate pair D83D
    # sorts first. Matrix says code point.
    assert canonical_json({"😀": 2, "\uffff": 1}) == '{"\uffff":1,"😀":2}'.encode()


@given(st.dictionaries(st.text(), st.integers(-5, 5)))
def test_keys_appear_in_code_point_order(obj: dict[str, int]) -> None:
    decoded_keys = list(json.loads(canonical_json(obj), object_pairs_hook=lambda p: p))
    keys = [k for k, _ in decoded_keys]
    assert keys == sorted(obj, key=lambda k: [ord(c) for c in k])


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def _depth(value: Any) -> int:
    """Number of nested arrays/objects."""
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


safe_ints = st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
json_scalars = st.none() | st.booleans() | safe_ints | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
).filter(lambda v: _depth(v) <= DEFAULT_MAX_DEPTH)


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (Python's == does)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(json_values)
def test_canonical_json_round_trips_through_strict_loads(value: Any) -> None:
    encoded = canonical_json(value)
    decoded = strict_loads(encoded)
    assert _same(decoded, value)
    assert canonical_json(decoded) == encoded
    assert strict_loads(encoded.decode("utf-8")) == decoded
    assert canonicalize(encoded) == encoded


@given(json_values, st.sampled_from([None, 0, 2]), st.booleans(), st.booleans())
def test_any_spelling_of_a_value_decodes_to_that_value(
    value: Any, indent: int | None, ensure_ascii: bool, sort_keys: bool
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    assert _same(strict_loads(text), value)
    assert canonicalize(text) == canonical_json(value)


@given(st.binary(max_size=300))
def test_b64_round_trips(data: bytes) -> None:
    text = b64encode(data)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", text)
    assert b64decode(text) == data
    assert b64decode(text, max_bytes=len(data)) == data


# ---------------------------------------------------------------------------------------------
# Decoders raise only DecodeError
# ---------------------------------------------------------------------------------------------


def _only_decode_error(decode: Any, data: Any) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(st.binary(max_size=500))
def test_strict_loads_on_any_bytes_raises_only_decode_error(data: bytes) -> None:
    _only_decode_error(strict_loads, data)
    _only_decode_error(canonicalize, data)


@given(st.text(max_size=500))
def test_strict_loads_on_any_text_raises_only_decode_error(text: str) -> None:
    _only_decode_error(strict_loads, text)
    _only_decode_error(canonicalize, text)


# Text built from JSON's own alphabet gets much further into the parser than random text.
json_ish = st.text(
    alphabet='[]{}",:0123456789-+.eEtrufalsnNIiy \\u\ud800\udc00/\x00\n', max_size=80
)


@given(json_ish)
def test_strict_loads_on_json_ish_text_raises_only_decode_error(text: str) -> None:
    _only_decode_error(strict_loads, text)
    _only_decode_error(canonicalize, text)
    _only_decode_error(strict_loads, text.encode("utf-8", "surrogatepass"))


@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_=+/-]{0,90}", fullmatch=True))
def test_b64decode_on_any_text_raises_only_decode_error(text: str) -> None:
    try:
        raw = b64decode(text, max_bytes=64)
    except DecodeError:
        return
    assert len(raw) <= 64
    assert b64encode(raw) == text  # whatever decodes is the one canonical spelling


@given(st.none() | st.integers() | st.binary() | st.lists(st.text()))
def test_b64decode_of_a_non_string_raises_decode_error(value: object) -> None:
    with pytest.raises(DecodeError):
        b64decode(value)


# ---------------------------------------------------------------------------------------------
# What strict decoding refuses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":1}',
        '{"a":1,"b":2,"a":3}',
        '[{"x":{"k":1,"k":2}}]',
        "1.0",
        "1.5",
        "-0.0",
        "1e10",
        "1E3",
        '{"a":2.5}',
        "NaN",
        "Infinity",
        "-Infinity",
        "[NaN]",
        str(MAX_SAFE_INT + 1),
        str(-MAX_SAFE_INT - 1),
        str(2**64),
        "9" * 400,
        "-" + "9" * 5000,
        "",
        " ",
        "{",
        "[1,]",
        '{"a":1,}',
        "[1] [2]",
        "'single'",
        '"\\ud800"',
        '"\\udc00x"',
        '{"\\ud800":1}',
        '"\\x41"',
        '"tab\tinside"',
        "\ufeff{}",
    ],
)
def test_strict_loads_refuses(text: str) -> None:
    with pytest.raises(DecodeError):
        strict_loads(text)
    with pytest.raises(DecodeError):
        strict_loads(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "text",
    ["1.5", "0.1", "1e-1", "1e16", "9007199254740992.0", "-9007199254740992", "1e999999999999"],
)
def test_canonicalize_refuses_non_integral_or_out_of_range_numbers(text: str) -> None:
    with pytest.raises(DecodeError):
        canonicalize(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-0", b"0"), ("2.0", b"2"), ("1E+2", b"100"), ("-9007199254740991e0", b"-9007199254740991")],
)
def test_canonicalize_accepts_integral_spellings(text: str, expected: bytes) -> None:
    assert canonicalize(text) == expected


def test_integer_range_is_inclusive_of_two_to_the_53_minus_one() -> None:
    assert strict_loads(str(MAX_SAFE_INT)) == MAX_SAFE_INT
    assert strict_loads(str(-MAX_SAFE_INT)) == -MAX_SAFE_INT
    assert canonical_json(MAX_SAFE_INT) == str(MAX_SAFE_INT).encode()


def _nested(depth: int, leaf: str = "") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("leaf", ["", "0", '{"a":1}'])
def test_nesting_limit(leaf: str) -> None:
    inner = 1 if leaf.startswith("{") else 0
    ok = DEFAULT_MAX_DEPTH - inner
    assert _depth(strict_loads(_nested(ok, leaf))) == DEFAULT_MAX_DEPTH
    with pytest.raises(DecodeError):
        strict_loads(_nested(ok + 1, leaf))


def test_absurd_nesting_is_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(DecodeError):
        strict_loads(_nested(100_000))
    with pytest.raises(DecodeError):
        strict_loads("[" * 500_000)


def test_oversize_input_is_refused_in_bytes_and_in_text() -> None:
    doc = '"' + "a" * 98 + '"'  # 100 bytes
    assert strict_loads(doc, max_bytes=100) == "a" * 98
    with pytest.raises(DecodeError):
        strict_loads(doc, max_bytes=99)
    with pytest.raises(DecodeError):
        strict_loads(doc.encode(), max_bytes=99)
    # The limit counts UTF-8 bytes, not characters: 30 × 4-byte characters = 122 bytes.
    wide = '"' + "😀" * 30 + '"'
    assert len(wide) < 100 < len(wide.encode())
    with pytest.raises(DecodeError):
        strict_loads(wide, max_bytes=100)
    assert strict_loads(wide, max_bytes=122) == "😀" * 30


def test_invalid_utf8_and_wrong_types_are_refused() -> None:
    for data in (b"\xff", b'"\xc3"', b'"\xed\xa0\x80"'):  # the last is an encoded surrogate
        with pytest.raises(DecodeError):
            strict_loads(data)
    for value in (None, 1, ["[]"], {"a": 1}):
        with pytest.raises(DecodeError):
            strict_loads(value)  # type: ignore[arg-type]
    assert strict_loads(bytearray(b"[1]")) == [1]  # type: ignore[arg-type]
    assert strict_loads(memoryview(b"[1]")) == [1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        float("nan"),
        float("inf"),
        {"a": 0.5},
        MAX_SAFE_INT + 1,
        -MAX_SAFE_INT - 1,
        {1: "int key"},
        {("t",): 1},
        {"a", "set"},
        b"bytes",
        object(),
        "\ud800",
        {"\udfff": 1},
        [["lone \udc00"]],
    ],
)
def test_canonical_json_refuses(value: Any) -> None:
    with pytest.raises(DecodeError):
        canonical_json(value)


def test_canonical_json_nesting_limit_counts_containers() -> None:
    value: Any = []
    for _ in range(DEFAULT_MAX_DEPTH - 1):
        value = [value]
    assert canonical_json(value) == _nested(DEFAULT_MAX_DEPTH).encode()
    with pytest.raises(DecodeError):
        canonical_json([value])
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(DecodeError):
        canonical_json(looped)


@given(st.text(min_size=1).map(lambda s: s + "\ud800") | st.just("\udbff\udbff"))
def test_lone_surrogates_are_refused_both_ways(text: str) -> None:
    with pytest.raises(DecodeError):
        canonical_json(text)
    with pytest.raises(DecodeError):
        strict_loads(json.dumps(text))  # ASCII escapes: "\ud800"
    with pytest.raises(DecodeError):
        strict_loads(json.dumps(text, ensure_ascii=False))  # the raw code unit in a str


@pytest.mark.parametrize(
    "text",
    [
        "Zh",  # 'f' is "Zg": non-zero trailing bits
        "Zm9=",
        "Zg==",
        "Z",  # impossible length
        "Zm9vY",
        "+/8",  # standard alphabet, not url-safe
        "Zm 9v",
        "Zm9v\n",
        "ｚｇ",
    ],
)
def test_b64decode_refuses_non_canonical_or_foreign_text(text: str) -> None:
    with pytest.raises(DecodeError):
        b64decode(text)


def test_b64decode_max_bytes_boundary() -> None:
    text = b64encode(bytes(64))
    assert b64decode(text, max_bytes=64) == bytes(64)
    with pytest.raises(DecodeError):
        b64decode(b64encode(bytes(65)), max_bytes=64)
