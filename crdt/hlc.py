"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

Pure: the caller passes the physical time in milliseconds; the clock never reads one.

The paper's counter is unbounded; ours stops at `MAX_C`. When `c` would pass it the clock carries
into `l` (`(l, MAX_C)` is followed by `(l + 1, 0)`), so a peer that sends a valid stamp with a
huge counter cannot wedge our clock: without the carry every later `tick` would fail until
physical time overtook the peer's `l`. A `now_ms` above `MAX_L` (a broken clock) makes `tick`
and `observe` raise DecodeError and leave the clock unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdt.errors import ClockDriftError, DecodeError

DEFAULT_MAX_DRIFT_MS = 60_000
MAX_L = 2**53 - 1
MAX_C = 2**31 - 1


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """An HLC timestamp: `l` is the largest physical time seen (ms), `c` the logical counter."""

    l: int  # noqa: E741 - the paper's name
    c: int

    def __post_init__(self) -> None:
        if type(self.l) is not int or type(self.c) is not int:
            raise DecodeError("HLC parts must be integers")
        if not (0 <= self.l <= MAX_L and 0 <= self.c <= MAX_C):
            raise DecodeError(f"HLC ({self.l}, {self.c}) out of range")

    def to_json(self) -> list[int]:
        return [self.l, self.c]

    @classmethod
    def from_json(cls, value: object) -> Timestamp:
        if not (isinstance(value, list) and len(value) == 2):
            raise DecodeError("HLC must be [l, c]")
        return cls(value[0], value[1])


ZERO = Timestamp(0, 0)


def _stamp(l: int, c: int) -> Timestamp:  # noqa: E741 - the paper's name
    """`(l, c)`, carrying an exhausted counter into `l` (see the module docstring)."""
    if c > MAX_C:
        return Timestamp(l + 1, 0)
    return Timestamp(l, c)


class HybridClock:
    """One replica's HLC. `tick()` never goes backwards, whatever physical time does."""

    __slots__ = ("_last", "max_drift_ms")

    def __init__(self, *, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS, last: Timestamp = ZERO):
        if max_drift_ms < 0:
            raise ValueError("max_drift_ms must be >= 0")
        self.max_drift_ms = max_drift_ms
        self._last = last

    @property
    def last(self) -> Timestamp:
        return self._last

    def tick(self, now_ms: int) -> Timestamp:
        """Stamp a local or send event (Alg. 1, "send or local event")."""
        last = self._last
        self._last = Timestamp(now_ms, 0) if now_ms > last.l else _stamp(last.l, last.c + 1)
        return self._last

    def check(self, remote: Timestamp, now_ms: int) -> None:
        """Refuse a remote stamp too far in the future (the paper's bounded-drift assumption)."""
        if remote.l - now_ms > self.max_drift_ms:
            raise ClockDriftError(remote.l, now_ms, self.max_drift_ms)

    def observe(self, remote: Timestamp, now_ms: int) -> Timestamp:
        """Merge a received stamp (Alg. 1, "receive event of message m"); returns the new clock.

        Raises ClockDriftError, leaving the clock unchanged, if `remote` is too far ahead.
        """
        self.check(remote, now_ms)
        last = self._last
        l_new = max(last.l, remote.l, now_ms)
        if l_new == last.l == remote.l:
            c_new = max(last.c, remote.c) + 1
        elif l_new == last.l:
            c_new = last.c + 1
        elif l_new == remote.l:
            c_new = remote.c + 1
        else:
            c_new = 0
        self._last = _stamp(l_new, c_new)
        return self._last
