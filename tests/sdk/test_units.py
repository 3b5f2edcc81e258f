"""The SDK's pure parts, without a node: sync state, backoff, codec, signing, keystore."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from crdt import (
    Content,
    ConvId,
    DeviceId,
    Dot,
    NodeId,
    Op,
    Timestamp,
    UserId,
    decode_cursor,
    verify_content,
)
from yanzi import ClientConfig, InvalidRequest, Keystore, KeystoreError, ProtocolError
from yanzi.config import Backoff
from yanzi.cursor import SyncState
from yanzi.events import Presence
from yanzi.protocol import Draft, ErrorFrame, OpFrame, Ready, Reply, Unknown, decode_frame

CONV = ConvId("g_unit")
NODE = NodeId("node-a")


def _op(seq: int, kind: str = "message", **content: object) -> Op:
    fields: dict[str, object] = {
        "conv": CONV,
        "kind": kind,
        "author": UserId("alice"),
        "device": DeviceId("d1"),
        "body": f"m{seq}".encode(),
    }
    fields.update(content)
    return Op(content=Content(**fields), hlc=Timestamp(1000 + seq, 0), dot=Dot(NODE, seq))  # type: ignore[arg-type]


def _create() -> Op:
    return _op(1, "create", attrs={"type": "group", "members": ["bob"]}, body=b"")


def test_ingest_dedupes_and_advances_the_cursor_contiguously() -> None:
    sync = SyncState()
    assert sync.ingest(_create()).new
    first = sync.ingest(_op(2))
    assert first.new and first.cursor_moved and not first.gap
    assert not sync.ingest(_op(2)).new  # live + catch-up overlap
    ahead = sync.ingest(_op(4))  # 3 is missing
    assert ahead.new and ahead.gap and not ahead.cursor_moved
    assert sync.cursor == {CONV: {NODE: 2}}
    filled = sync.ingest(_op(3))
    assert filled.cursor_moved and not filled.gap
    assert sync.cursor == {CONV: {NODE: 4}}
    assert decode_cursor(sync.encoded_cursor()) == sync.cursor
    assert decode_cursor(sync.encoded_cursor(without=CONV)) == {}
    assert [m.body for m in sync.state(CONV)] == [b"m2", b"m3", b"m4"]


def test_a_hole_the_node_cannot_fill_asks_for_one_catch_up_only() -> None:
    sync = SyncState()
    sync.ingest(_create())
    assert sync.ingest(_op(3)).gap  # 2 is missing: catch up
    sync.note_caught_up()  # ...and the catch-up did not bring it
    assert not sync.ingest(_op(4)).gap  # same hole: no new catch-up per live op
    sync.ingest(_op(2))
    assert sync.cursor == {CONV: {NODE: 4}}
    assert sync.ingest(_op(6)).gap  # a new hole asks again


def test_a_persisted_cursor_marks_older_ops_as_already_delivered() -> None:
    sync = SyncState({CONV: {NODE: 3}})
    newer = sync.ingest(_op(4))  # a new process, empty logs: still contiguous after the cursor
    assert newer.new and newer.cursor_moved and not newer.gap
    assert sync.cursor == {CONV: {NODE: 4}}
    backfilled = [sync.ingest(op) for op in (_create(), _op(2), _op(3))]
    assert not any(r.new for r in backfilled)  # no events for what an earlier process saw
    assert [m.body for m in sync.state(CONV)] == [b"m2", b"m3", b"m4"]


def test_backoff_is_full_jitter_capped() -> None:
    backoff = Backoff(0.5, 8.0)
    rng = random.Random(7)
    for attempt in range(12):
        cap = min(8.0, 0.5 * 2**attempt)
        delays = [backoff.delay(attempt, rng.uniform) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # the whole range is used, not a fixed step
    assert backoff.delay(10_000, lambda lo, hi: hi) == 8.0


def test_decode_frames() -> None:
    op = _op(2)
    assert decode_frame(json.dumps({"type": "op", "op": op.to_json()})) == OpFrame(op)
    reply = decode_frame('{"type":"error","id":7,"code":"forbidden","message":"no"}')
    assert isinstance(reply, Reply) and reply.error == ("forbidden", "no")
    assert decode_frame('{"type":"error","code":"bad_frame","message":"x"}') == ErrorFrame(
        "bad_frame", "x"
    )
    assert decode_frame('{"type":"presence","user":"bob","online":true}') == Presence("bob", True)
    ready = decode_frame(
        '{"type":"ready","user":"a","device":"d","node":"n","session":3,"limits":{}}'
    )
    assert isinstance(ready, Ready) and ready.session == 3
    assert decode_frame('{"type":"from_the_future"}') == Unknown("from_the_future")
    for bad in ("nope", "[]", '{"type":"op","op":{}}', '{"type":"presence","user":1}'):
        with pytest.raises(ProtocolError):
            decode_frame(bad)


def test_draft_signature_verifies_as_the_node_checks_it() -> None:
    key = SigningKey.generate()
    draft = Draft(cmid="c1", conv="g_x", kind="react", target="abc", attrs={"key": "👍"})
    signed = draft.sign("alice", "d1", key)
    content = Content(
        conv=ConvId("g_x"),
        kind="react",
        author=UserId("alice"),
        device=DeviceId("d1"),
        target="abc",
        attrs={"key": "👍", "cmid": "c1"},  # the SDK signs the cmid into the content
    )
    verify_content(content, signed.dsig, key.verify_key)
    assert signed.to_json()["attrs"] == {"key": "👍", "cmid": "c1"}
    assert signed.to_json()["dsig"] and "body" not in signed.to_json()
    with pytest.raises(InvalidRequest):
        Draft(cmid="c2", conv="bad conv id!", kind="message").sign("alice", "d1", key)


def test_keystore_is_created_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "keys.json"
    store = Keystore.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.user, store.token, store.cursor = "alice", "t" * 43, {CONV: {NODE: 5}}
    store.save()
    again = Keystore.open(path)
    assert (again.device, again.user, again.token, again.cursor) == (
        store.device,
        "alice",
        "t" * 43,
        {CONV: {NODE: 5}},
    )
    assert bytes(again.signing_key) == bytes(store.signing_key)
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temp files left
    path.chmod(0o644)
    Keystore.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened on open
    path.write_text('{"v": 1, "device": "x"}')
    with pytest.raises(KeystoreError):
        Keystore.open(path)


def test_config_is_validated() -> None:
    with pytest.raises(InvalidRequest):
        ClientConfig(backoff_base_s=2.0, backoff_max_s=1.0)
    with pytest.raises(InvalidRequest):
        ClientConfig(ack_timeout_s=0)
    assert ClientConfig().replace(sync_page=10).sync_page == 10
