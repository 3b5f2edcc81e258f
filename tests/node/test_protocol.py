"""The sans-IO client frame codec: decoders raise only ClientError, valid frames parse, and the
per-connection state machine (auth first, once; errors counted) holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdt import OP_KINDS, b64encode
from crdt.op import MAX_BODY_BYTES
from node.errors import ERROR_CODES, ClientError
from node.protocol import (
    Auth,
    Ping,
    Read,
    Send,
    ServerConnection,
    State,
    Typing,
    encode,
    event_from_json,
    parse_frame,
)

MAX = 4096

ids = st.from_regex(r"[A-Za-z0-9._:@=+/-]{1,40}", fullmatch=True)
request_ids = st.one_of(
    st.none(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(min_size=0, max_size=64)
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["type", "id", "token", "cmid", "conv", "kind", "target", "attrs", "body", "dsig", "op_id",
     "active", "extra"]
)  # fmt: skip
frame_types = st.sampled_from(["auth", "send", "read", "typing", "ping", "pong", "", "SEND"])


def parse(data: str | bytes, **kw: Any) -> Any:
    return parse_frame(data, max_bytes=kw.pop("max_bytes", MAX), **kw)


def code_of(data: str | bytes | object, **kw: Any) -> str:
    with pytest.raises(ClientError) as info:
        if isinstance(data, str | bytes):
            parse(data, **kw)
        else:
            event_from_json(data)
    return info.value.code


# -- fuzz: nothing but ClientError ---------------------------------------------------------


def only_client_errors(fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except ClientError as err:
        assert err.code in ERROR_CODES
        assert err.message
        frame = err.to_json()
        assert frame["type"] == "error" and frame["code"] == err.code
        json.dumps(frame)  # always encodable


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_client_error(data: bytes) -> None:
    only_client_errors(parse, data)


@given(st.text(max_size=600))
def test_arbitrary_text_raises_only_client_error(data: str) -> None:
    only_client_errors(parse, data)


@given(json_values)
def test_arbitrary_json_values_raise_only_client_error(value: Any) -> None:
    only_client_errors(event_from_json, value)
    try:
        text = json.dumps(value)
    except ValueError:
        return
    only_client_errors(parse, text)


@given(
    st.dictionaries(field_names, json_values, max_size=8),
    frame_types,
)
def test_frame_shaped_objects_raise_only_client_error(fields: dict[str, Any], kind: str) -> None:
    """Objects with real field names reach the per-type validators, not just the outer checks."""
    frame = {**fields, "type": kind}
    only_client_errors(event_from_json, frame)
    if "kind" not in fields:
        only_client_errors(event_from_json, {**frame, "kind": "message"})


@given(st.binary(max_size=300), st.integers(1, 300))
def test_the_connection_raises_only_client_error_in_every_state(
    data: bytes, max_errors: int
) -> None:
    conn = ServerConnection(max_frame_bytes=MAX, max_errors=max_errors)
    only_client_errors(conn.receive, data)
    conn.authenticated()
    only_client_errors(conn.receive, data)
    conn.close()
    only_client_errors(conn.receive, data)


# -- valid frames parse --------------------------------------------------------------------

attr_values = st.one_of(
    st.booleans(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.text(max_size=30),
    st.lists(st.text(max_size=10), max_size=5),
)
sends = st.fixed_dictionaries(
    {"type": st.just("send"), "cmid": st.text(min_size=1, max_size=64), "conv": ids,
     "kind": st.sampled_from(sorted(OP_KINDS))},
    optional={
        "id": request_ids,
        "target": ids,
        "attrs": st.dictionaries(st.text(min_size=1, max_size=10), attr_values, max_size=5),
        "body": st.binary(max_size=200).map(b64encode),
        "dsig": st.binary(min_size=64, max_size=64).map(b64encode),
    },
)  # fmt: skip
valid_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("auth"), "token": st.text(min_size=1, max_size=256)},
        optional={"id": request_ids},
    ),
    st.fixed_dictionaries({"type": st.just("ping")}, optional={"id": request_ids}),
    st.fixed_dictionaries(
        {"type": st.just("read"), "conv": ids, "op_id": ids}, optional={"id": request_ids}
    ),
    st.fixed_dictionaries(
        {"type": st.just("typing"), "conv": ids, "active": st.booleans()},
        optional={"id": request_ids},
    ),
    sends,
)


def _no_lone_surrogates(frame: dict[str, Any]) -> bool:
    try:
        json.dumps(frame, ensure_ascii=False).encode()
        return True
    except UnicodeEncodeError:
        return False


@given(valid_frames.filter(_no_lone_surrogates))
def test_every_valid_frame_parses_to_its_event(frame: dict[str, Any]) -> None:
    text = json.dumps(frame, ensure_ascii=False)
    event = parse(text, max_bytes=1 << 20)
    assert event == parse(text.encode(), max_bytes=1 << 20)  # bytes and text alike
    assert event.id == frame.get("id")
    kind = frame["type"]
    if kind == "auth":
        assert isinstance(event, Auth) and event.token == frame["token"]
    elif kind == "ping":
        assert isinstance(event, Ping)
    elif kind == "read":
        assert isinstance(event, Read) and (event.conv, event.op_id) == (
            frame["conv"],
            frame["op_id"],
        )
    elif kind == "typing":
        assert isinstance(event, Typing) and event.active is frame["active"]
    else:
        assert isinstance(event, Send)
        assert (event.cmid, event.conv, event.kind) == (frame["cmid"], frame["conv"], frame["kind"])
        assert event.target == frame.get("target", "")
        assert event.attrs == frame.get("attrs", {})
        assert b64encode(event.body) == frame.get("body", "")
        assert b64encode(event.dsig) == frame.get("dsig", "")


def test_send_defaults() -> None:
    event = parse('{"type":"send","cmid":"c","conv":"x","kind":"message"}')
    assert event == Send(id=None, cmid="c", conv="x", kind="message")


# -- specific refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("", "bad_json"),
        ("{", "bad_json"),
        (b"\xff", "bad_json"),
        ('{"type":"ping","type":"ping"}', "bad_json"),
        ('{"type":"ping","x":1.5}', "bad_json"),
        ('{"type":"ping","x":NaN}', "bad_json"),
        ("[" * 40 + "]" * 40, "bad_json"),
        ("[]", "bad_frame"),
        ('{"type":"nope"}', "unknown_type"),
        ('{"type":5}', "unknown_type"),
        ('{"id":1}', "unknown_type"),
        ('{"type":"ping","id":true}', "bad_frame"),
        ('{"type":"ping","id":[1]}', "bad_frame"),
        ('{"type":"ping","extra":1}', "bad_frame"),
        ('{"type":"auth"}', "bad_frame"),
        ('{"type":"auth","token":""}', "bad_frame"),
        ('{"type":"typing","conv":"c","active":1}', "bad_frame"),
        ('{"type":"read","conv":"bad id","op_id":"o"}', "bad_frame"),
        ('{"type":"send","cmid":"c","conv":"c","kind":"nope"}', "bad_frame"),
        ('{"type":"send","cmid":"c","conv":"c","kind":"message","body":"!!"}', "bad_frame"),
        ('{"type":"send","cmid":"c","conv":"c","kind":"message","body":"QQ=="}', "bad_frame"),
        ('{"type":"send","cmid":"c","conv":"c","kind":"message","dsig":"AAAA"}', "bad_frame"),
        ('{"type":"send","cmid":"c","conv":"c","kind":"message","target":""}', None),
    ],
)
def test_refusal_codes(data: str | bytes, code: str | None) -> None:
    if code is None:
        parse(data)
    else:
        assert code_of(data) == code


def test_request_id_is_echoed_once_it_is_valid() -> None:
    with pytest.raises(ClientError) as info:
        parse('{"type":"typing","id":"r1","conv":"c","active":"yes"}')
    assert info.value.request_id == "r1" and info.value.to_json()["id"] == "r1"
    with pytest.raises(ClientError) as info:
        parse('{"type":"ping","id":{"no":1}}')
    assert info.value.request_id is None and "id" not in info.value.to_json()


def test_frame_size_is_measured_in_utf8_bytes() -> None:
    frame = '{"type":"ping","pad":"' + "燕" * 100 + '"}'  # 300 bytes of UTF-8 in 100 chars
    assert code_of(frame, max_bytes=200) == "too_large"
    assert code_of(frame.encode(), max_bytes=200) == "too_large"
    assert code_of(frame, max_bytes=400) == "bad_frame"  # fits; "pad" is not a ping field


def test_body_limit_is_configurable_and_too_large_is_told_apart_from_bad_base64() -> None:
    def send(body: bytes) -> str:
        return json.dumps(
            {"type": "send", "cmid": "c", "conv": "c", "kind": "message", "body": b64encode(body)}
        )

    assert isinstance(parse(send(b"x" * 100), max_body_bytes=100), Send)
    assert code_of(send(b"x" * 101), max_body_bytes=100) == "too_large"
    assert isinstance(parse(send(b"x" * MAX_BODY_BYTES), max_bytes=1 << 20), Send)
    assert code_of(send(b"x" * (MAX_BODY_BYTES + 1)), max_bytes=1 << 20) == "too_large"
    bad = '{"type":"send","cmid":"c","conv":"c","kind":"message","body":"%s"}' % ("*" * 10)
    assert code_of(bad, max_body_bytes=100) == "bad_frame"


def test_error_catalogue() -> None:
    err = ClientError("not_member", "you are not a member of x", request_id=3)
    assert (err.http_status, err.session_survives) == (403, True)
    assert err.to_json() == {
        "type": "error",
        "code": "not_member",
        "message": "you are not a member of x",
        "id": 3,
    }
    assert not ClientError("auth_failed", "no").session_survives
    with pytest.raises(ValueError):
        ClientError("made_up", "no")


def test_encode_is_compact_utf8_json() -> None:
    assert encode({"type": "pong", "x": "燕"}) == '{"type":"pong","x":"燕"}'


# -- the state machine ---------------------------------------------------------------------

AUTH = '{"type":"auth","token":"t"}'
PING = '{"type":"ping","id":1}'


def test_first_frame_must_be_auth() -> None:
    conn = ServerConnection(max_frame_bytes=MAX, max_errors=10)
    with pytest.raises(ClientError) as info:
        conn.receive(PING)
    assert info.value.code == "auth_required" and not info.value.session_survives
    assert conn.state is State.CLOSED
    assert code_of_conn(conn, AUTH) == "bad_frame"  # closed for good


def test_garbage_first_frame_is_auth_required() -> None:
    conn = ServerConnection(max_frame_bytes=MAX, max_errors=10)
    assert code_of_conn(conn, "{") == "auth_required"
    assert conn.state is State.CLOSED and conn.errors == 1


def test_auth_then_open_then_auth_twice_is_refused() -> None:
    conn = ServerConnection(max_frame_bytes=MAX, max_errors=10)
    assert conn.receive(AUTH) == Auth("t")
    assert conn.state is State.AWAIT_AUTH  # until the endpoint has checked the token
    conn.authenticated()
    assert conn.state is State.OPEN
    assert conn.receive(PING) == Ping(1)
    with pytest.raises(ClientError) as info:
        conn.receive('{"type":"auth","token":"t","id":"again"}')
    assert (info.value.code, info.value.request_id) == ("bad_frame", "again")
    assert conn.state is State.OPEN and conn.errors == 1


def test_errors_are_counted_up_to_the_limit() -> None:
    conn = ServerConnection(max_frame_bytes=MAX, max_errors=3)
    conn.receive(AUTH)
    conn.authenticated()
    for expected in (1, 2):
        code_of_conn(conn, "{")
        assert conn.errors == expected and not conn.too_many_errors()
    conn.receive(PING)  # good frames do not reset or add
    code_of_conn(conn, '{"type":"nope"}')
    assert conn.too_many_errors()


def code_of_conn(conn: ServerConnection, data: str) -> str:
    with pytest.raises(ClientError) as info:
        conn.receive(data)
    return info.value.code


class ConnectionMachine(RuleBasedStateMachine):
    """Drive a ServerConnection with good and bad frames against a tiny model."""

    def __init__(self) -> None:
        super().__init__()
        self.max_errors = 5
        self.conn = ServerConnection(max_frame_bytes=MAX, max_errors=self.max_errors)
        self.state = State.AWAIT_AUTH
        self.errors = 0
        self.auth_seen = False

    @rule(frame=valid_frames.filter(lambda f: f["type"] != "auth").filter(_no_lone_surrogates))
    def good_non_auth(self, frame: dict[str, Any]) -> None:
        data = json.dumps(frame)
        if self.state is State.OPEN:
            assert type(self.conn.receive(data)).__name__.lower() == frame["type"]
        else:
            code = code_of_conn(self.conn, data)
            if self.state is State.AWAIT_AUTH:
                assert code == "auth_required"
                self.state = State.CLOSED
            else:
                assert code == "bad_frame"

    @rule(data=st.binary(max_size=50))
    def garbage(self, data: bytes) -> None:
        try:
            event = self.conn.receive(data)
        except ClientError as err:
            if self.state is State.AWAIT_AUTH:
                assert err.code == "auth_required"
                self.state = State.CLOSED
                self.errors += 1
            elif self.state is State.OPEN:
                self.errors += 1
            return
        # A few byte strings are valid frames (b'{"type":"ping"}' is unlikely but legal).
        assert self.state is not State.CLOSED
        if isinstance(event, Auth) and self.state is State.OPEN:
            pytest.fail("a second auth was accepted")
        if self.state is State.AWAIT_AUTH:
            assert isinstance(event, Auth)
            self.auth_seen = True

    @rule()
    def auth(self) -> None:
        if self.state is State.OPEN:
            assert code_of_conn(self.conn, AUTH) == "bad_frame"
            self.errors += 1
        elif self.state is State.CLOSED:
            assert code_of_conn(self.conn, AUTH) == "bad_frame"
        else:
            assert self.conn.receive(AUTH) == Auth("t")
            self.auth_seen = True

    @precondition(lambda self: self.state is State.AWAIT_AUTH and self.auth_seen)
    @rule()
    def token_accepted(self) -> None:
        self.conn.authenticated()
        self.state = State.OPEN

    @rule()
    def close(self) -> None:
        self.conn.close()
        self.state = State.CLOSED

    @invariant()
    def matches_the_model(self) -> None:
        assert self.conn.state is self.state
        if self.state is not State.CLOSED:
            assert self.conn.errors == self.errors
            assert self.conn.too_many_errors() == (self.errors >= self.max_errors)


TestConnectionMachine = ConnectionMachine.TestCase
