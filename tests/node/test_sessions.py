"""Sessions: token buckets on injected time, bounded queues and slow consumers, presence."""

from __future__ import annotations

import json
from typing import Any

from node.metrics import Metrics
from node.protocol import encode
from node.sessions import (
    CLOSE_GOING_AWAY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_MANY_ERRORS,
    Session,
    Sessions,
    TokenBucket,
)


class FakeWs:
    """Just what Session.run_writer touches of aiohttp's WebSocketResponse."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_message = b""
        self.fail_after = fail_after

    async def send_str(self, data: str) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionResetError("peer went away")
        self.sent.append(data)

    async def close(self, *, code: int, message: bytes = b"") -> None:
        self.closed, self.close_code, self.close_message = True, code, message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(user: str = "alice", device: str = "d1", queue: int = 4, ws: Any = None) -> Session:
    return Session(ws or FakeWs(), user, device, queue_size=queue)


def metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# -- TokenBucket -----------------------------------------------------------------------------


def test_bucket_starts_full_and_empties() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate_and_caps_at_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)  # 0.5 + 0.5 s * 2/s = one token
    assert not bucket.take(0.5)
    # A long pause refills only up to the burst.
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_sustains_exactly_its_rate() -> None:
    bucket = TokenBucket(rate=8.0, burst=1, now=0.0)
    # 64 tries/s for 10 s (binary fractions, so float sums are exact): 8/s get through.
    allowed = sum(bucket.take(i / 64) for i in range(1, 641))
    assert allowed == 80


def test_sessions_rate_limit_per_device_with_injected_time() -> None:
    clock = Clock()
    sessions = Sessions(metrics=Metrics(), rate_per_s=1.0, rate_burst=2, monotonic=clock)
    assert [sessions.allow("alice", "phone") for _ in range(3)] == [True, True, False]
    assert sessions.allow("alice", "laptop")  # another device has its own bucket
    assert sessions.allow("bob", "phone")
    clock.now += 1.0
    assert sessions.allow("alice", "phone") and not sessions.allow("alice", "phone")


# -- Session queue ---------------------------------------------------------------------------


def test_push_on_a_full_queue_marks_the_session_slow() -> None:
    s = session(queue=2)
    assert s.push("a") and s.push("b")
    assert not s.push("c")
    assert s.slow and s.close_code == CLOSE_SLOW_CONSUMER
    # The backlog is dropped (the client catches up over HTTP) and the writer is woken.
    assert s.queue.qsize() == 1 and s.queue.get_nowait() is None
    assert not s.push("d") and s.queue.empty()


async def test_writer_sends_in_order_then_closes_with_the_recorded_code() -> None:
    ws = FakeWs()
    s = session(queue=10, ws=ws)
    for frame in ("1", "2", "3"):
        s.push(frame)
    s.stop(CLOSE_TOO_MANY_ERRORS)
    assert not s.push("late")
    metrics = Metrics()
    await s.run_writer(metrics)
    # Frames queued before the stop (e.g. the error explaining it) still go out first.
    assert ws.sent == ["1", "2", "3"]
    assert ws.close_code == CLOSE_TOO_MANY_ERRORS
    assert metric(metrics, "yanzi_frames_out_total") == 3


async def test_slow_writer_closes_with_4008_and_says_how_to_recover() -> None:
    ws = FakeWs()
    s = session(queue=1, ws=ws)
    s.push("1")
    s.push("2")  # full: slow
    await s.run_writer(Metrics())
    assert ws.sent == []
    assert ws.close_code == CLOSE_SLOW_CONSUMER and b"/v1/sync" in ws.close_message


async def test_stop_on_a_full_queue_still_stops_the_writer() -> None:
    ws = FakeWs()
    s = session(queue=2, ws=ws)
    s.push("1")
    s.push("2")
    s.stop(CLOSE_GOING_AWAY)
    await s.run_writer(Metrics())
    assert ws.close_code == CLOSE_GOING_AWAY


async def test_writer_stops_quietly_when_the_peer_is_gone() -> None:
    ws = FakeWs(fail_after=1)
    s = session(queue=10, ws=ws)
    for frame in ("1", "2", "3"):
        s.push(frame)
    await s.run_writer(Metrics())  # no exception escapes
    assert ws.sent == ["1"]


async def test_stop_without_a_code_ends_the_writer_without_a_close_frame() -> None:
    ws = FakeWs()
    s = session(ws=ws)
    s.stop()
    s.stop()  # twice is harmless
    await s.run_writer(Metrics())
    assert not ws.closed


# -- Sessions registry -----------------------------------------------------------------------


def presence_frames(s: Session) -> list[dict[str, Any]]:
    frames = []
    while not s.queue.empty():
        item = s.queue.get_nowait()
        if item is not None:
            frames.append(json.loads(item))
    return frames


def test_deliver_reaches_every_session_of_every_user_and_counts() -> None:
    metrics = Metrics()
    sessions = Sessions(metrics=metrics, rate_per_s=1, rate_burst=1)
    a1, a2, b = session("alice", "d1", 10), session("alice", "d2", 10), session("bob", "d1", 10)
    for s in (a1, a2, b):
        sessions.add(s)
    assert len(sessions) == 3 and sessions.online("alice")
    op_frame = encode({"type": "op", "op": {"content": {}}})
    sessions.deliver(["alice", "bob", "nobody"], op_frame)
    assert [s.queue.get_nowait() for s in (a1, a2, b)] == [op_frame] * 3
    assert metric(metrics, "yanzi_deliveries_total") == 3
    assert metric(metrics, "yanzi_connections") == 3
    # Read markers, typing and presence are not op deliveries: they have their own counter.
    sessions.deliver(["alice"], encode({"type": "typing", "conv": "c", "user": "bob"}))
    assert metric(metrics, "yanzi_deliveries_total") == 3
    assert metric(metrics, "yanzi_notice_deliveries_total") == 2


def test_a_slow_session_is_counted_once_and_others_keep_receiving() -> None:
    metrics = Metrics()
    sessions = Sessions(metrics=metrics, rate_per_s=1, rate_burst=1)
    slow, fine = session("alice", "d1", 1), session("alice", "d2", 100)
    sessions.add(slow)
    sessions.add(fine)
    for i in range(10):
        sessions.deliver(["alice"], f"f{i}")
    assert slow.slow and not fine.slow
    assert metric(metrics, "yanzi_slow_consumer_closes_total") == 1
    assert fine.queue.qsize() == 10


def test_presence_goes_to_contacts_on_first_and_last_session() -> None:
    sessions = Sessions(metrics=Metrics(), rate_per_s=1, rate_burst=1)
    contacts = {"alice": {"alice", "bob"}, "bob": {"alice", "bob"}, "carol": {"carol"}}
    sessions.contacts = lambda user: contacts[user]
    bob, carol = session("bob", queue=10), session("carol", queue=10)
    sessions.add(bob)
    sessions.add(carol)
    presence_frames(bob)
    a1, a2 = session("alice", "d1", 10), session("alice", "d2", 10)
    sessions.add(a1)
    sessions.add(a2)  # second device: no second "online"
    assert presence_frames(bob) == [{"type": "presence", "user": "alice", "online": True}]
    sessions.remove(a1)
    assert presence_frames(bob) == []  # still online on d2
    sessions.remove(a2)
    sessions.remove(a2)  # removing twice is harmless
    assert presence_frames(bob) == [{"type": "presence", "user": "alice", "online": False}]
    assert presence_frames(carol) == [] and not presence_frames(a1)
    assert not sessions.online("alice") and len(sessions) == 2


def test_close_token_stops_only_that_tokens_sessions() -> None:
    sessions = Sessions(metrics=Metrics(), rate_per_s=1, rate_burst=1)
    phone = Session(FakeWs(), "alice", "phone", queue_size=10, token_id="t-phone")
    phone2 = Session(FakeWs(), "alice", "phone", queue_size=10, token_id="t-phone")
    laptop = Session(FakeWs(), "alice", "laptop", queue_size=10, token_id="t-laptop")
    for s in (phone, phone2, laptop):
        sessions.add(s)
    assert sessions.close_token("alice", "t-phone", 4011) == 2
    assert phone.close_code == phone2.close_code == 4011 and laptop.close_code is None
    assert sessions.close_token("bob", "t-phone", 4011) == 0


async def test_the_close_reason_given_to_stop_is_sent() -> None:
    ws = FakeWs()
    s = session(ws=ws)
    s.stop(4001, b"token_expired")
    s.stop(4010, b"idle")  # the first code and reason stay
    await s.run_writer(Metrics())
    assert (ws.close_code, ws.close_message) == (4001, b"token_expired")


def test_close_user_and_close_all() -> None:
    sessions = Sessions(metrics=Metrics(), rate_per_s=1, rate_burst=1)
    a, b = session("alice", queue=10), session("bob", queue=10)
    sessions.add(a)
    sessions.add(b)
    sessions.close_user("alice", 4011)
    assert a.close_code == 4011 and b.close_code is None
    sessions.close_all(CLOSE_GOING_AWAY)
    assert a.close_code == 4011 and b.close_code == CLOSE_GOING_AWAY  # the first code stays
