"""Hybrid logical clock laws (Kulkarni et al. 2014), driven by arbitrary physical time."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import ClockDriftError, DecodeError
from crdt.hlc import DEFAULT_MAX_DRIFT_MS, MAX_C, MAX_L, ZERO, HybridClock, Timestamp

# Physical time may jump anywhere (backwards, negative, to the far future) but never above
# MAX_L: a reading past the year 287,000 is a broken clock, tested separately.
now_values = st.integers(-(2**63), MAX_L) | st.integers(0, 10_000) | st.sampled_from([0, MAX_L])
counters = st.integers(0, MAX_C) | st.sampled_from([MAX_C - 1, MAX_C])
# l stops one short of MAX_L: (MAX_L, MAX_C) is the end of time, tested on its own below.
timestamps = st.builds(Timestamp, st.integers(0, MAX_L - 1) | st.integers(0, 10_000), counters)
drifts = st.sampled_from([0, 1, 1000, DEFAULT_MAX_DRIFT_MS]) | st.integers(0, 2**40)


@dataclass(frozen=True)
class Tick:
    now_ms: int


@dataclass(frozen=True)
class Observe:
    remote: Timestamp
    now_ms: int


actions = st.lists(
    st.builds(Tick, now_values) | st.builds(Observe, timestamps, now_values), max_size=40
)


@given(drifts, timestamps, actions)
def test_clock_never_goes_backwards_whatever_now_does(
    max_drift_ms: int, start: Timestamp, steps: list[Tick | Observe]
) -> None:
    clock = HybridClock(max_drift_ms=max_drift_ms, last=start)
    highest_now = -(2**63)
    for step in steps:
        before = clock.last
        if isinstance(step, Tick):
            stamp = clock.tick(step.now_ms)
            assert stamp > before
            highest_now = max(highest_now, step.now_ms)
        else:
            try:
                stamp = clock.observe(step.remote, step.now_ms)
            except ClockDriftError as exc:
                assert step.remote.l - step.now_ms > max_drift_ms
                assert (exc.remote_ms, exc.now_ms, exc.max_drift_ms) == (
                    step.remote.l,
                    step.now_ms,
                    max_drift_ms,
                )
                assert clock.last == before  # a refused stamp changes nothing
                continue
            assert stamp > before
            assert stamp > step.remote
            highest_now = max(highest_now, step.now_ms)
        assert clock.last == stamp
        # l is the largest physical time seen (HLC, Alg. 1), give or take a counter carry.
        assert stamp.l >= highest_now


@given(timestamps, timestamps, now_values, drifts)
def test_observe_is_strictly_after_both_clocks(
    last: Timestamp, remote: Timestamp, now_ms: int, max_drift_ms: int
) -> None:
    clock = HybridClock(max_drift_ms=max_drift_ms, last=last)
    if remote.l - now_ms > max_drift_ms:
        with pytest.raises(ClockDriftError):
            clock.observe(remote, now_ms)
        assert clock.last == last
        return
    merged = clock.observe(remote, now_ms)
    assert merged > last
    assert merged > remote
    assert merged.l >= now_ms
    # Alg. 1 never invents time: l is one of the three inputs (or one past, on a carry).
    assert merged.l in {last.l, remote.l, now_ms} or (
        merged.c == 0 and merged.l - 1 in {last.l, remote.l}
    )


@given(timestamps, now_values)
def test_tick_is_strictly_after_the_last_stamp(last: Timestamp, now_ms: int) -> None:
    clock = HybridClock(last=last)
    stamp = clock.tick(now_ms)
    assert stamp > last
    if now_ms > last.l:
        assert stamp == Timestamp(now_ms, 0)


def test_tick_follows_physical_time_and_counts_when_it_stalls() -> None:
    clock = HybridClock()
    assert clock.last == ZERO
    assert clock.tick(100) == Timestamp(100, 0)
    assert clock.tick(100) == Timestamp(100, 1)
    assert clock.tick(50) == Timestamp(100, 2)  # physical clock stepped back
    assert clock.tick(101) == Timestamp(101, 0)


def test_observe_cases_of_algorithm_1() -> None:
    clock = HybridClock(last=Timestamp(10, 3))
    assert clock.observe(Timestamp(10, 7), 5) == Timestamp(10, 8)  # l = last.l = remote.l
    assert clock.observe(Timestamp(9, 50), 5) == Timestamp(10, 9)  # l = last.l
    assert clock.observe(Timestamp(20, 4), 5) == Timestamp(20, 5)  # l = remote.l
    assert clock.observe(Timestamp(20, 4), 30) == Timestamp(30, 0)  # l = now


def test_drift_boundary_and_error_leaves_clock_unchanged() -> None:
    clock = HybridClock(max_drift_ms=1000, last=Timestamp(500, 2))
    clock.check(Timestamp(2000, 0), 1000)  # exactly max_drift ahead: allowed
    with pytest.raises(ClockDriftError) as info:
        clock.observe(Timestamp(2001, 0), 1000)
    assert clock.last == Timestamp(500, 2)
    assert (info.value.remote_ms, info.value.now_ms, info.value.max_drift_ms) == (2001, 1000, 1000)
    assert "1001 ms ahead" in str(info.value)
    assert clock.observe(Timestamp(2000, 0), 1000) == Timestamp(2000, 1)


def test_counter_overflow_carries_into_l_instead_of_wedging_the_clock() -> None:
    # A peer sends a valid stamp with the largest counter, slightly in the future.
    clock = HybridClock(last=Timestamp(1000, 0))
    assert clock.observe(Timestamp(1500, MAX_C), 1000) == Timestamp(1501, 0)
    assert clock.tick(1000) == Timestamp(1501, 1)
    clock = HybridClock(last=Timestamp(1500, MAX_C))
    assert clock.tick(1000) == Timestamp(1501, 0)
    clock = HybridClock(last=Timestamp(1500, MAX_C - 1))
    assert clock.observe(Timestamp(1500, MAX_C - 1), 0) == Timestamp(1500, MAX_C)


@pytest.mark.parametrize("now_ms", [MAX_L + 1, 2**64])
def test_a_broken_physical_clock_is_refused_and_changes_nothing(now_ms: int) -> None:
    clock = HybridClock(last=Timestamp(7, 7))
    with pytest.raises(DecodeError):
        clock.tick(now_ms)
    assert clock.last == Timestamp(7, 7)
    with pytest.raises(DecodeError):
        clock.observe(Timestamp(8, 0), now_ms)
    assert clock.last == Timestamp(7, 7)


def test_the_last_representable_stamp_cannot_advance() -> None:
    clock = HybridClock(last=Timestamp(MAX_L, MAX_C))
    with pytest.raises(DecodeError):
        clock.tick(MAX_L)
    with pytest.raises(DecodeError):
        clock.observe(Timestamp(MAX_L, 0), MAX_L)
    assert clock.last == Timestamp(MAX_L, MAX_C)


def test_negative_max_drift_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        HybridClock(max_drift_ms=-1)


@given(timestamps)
def test_timestamp_json_round_trip(stamp: Timestamp) -> None:
    assert Timestamp.from_json(stamp.to_json()) == stamp


@given(timestamps, timestamps)
def test_timestamps_order_by_l_then_c(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == ((a.l, a.c) < (b.l, b.c))


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        [1],
        [1, 2, 3],
        (1, 2),
        {"l": 1, "c": 2},
        [True, 0],
        [0, False],
        [1.0, 0],
        ["1", 0],
        [-1, 0],
        [0, -1],
        [MAX_L + 1, 0],
        [0, MAX_C + 1],
        [None, None],
    ],
)
def test_timestamp_from_json_refuses(value: object) -> None:
    with pytest.raises(DecodeError):
        Timestamp.from_json(value)
