"""The one error hierarchy of `crdt`: everything this package raises on bad input is a CrdtError."""

from __future__ import annotations


class CrdtError(Exception):
    """Root of every error raised by `crdt`."""


class DecodeError(CrdtError, ValueError):
    """Input bytes/text/values are malformed, oversized or wrongly typed.

    Every decoder in `crdt` raises only this on bad input, never anything else.
    """


class ClockDriftError(CrdtError):
    """A remote HLC timestamp is further in the future than the configured maximum drift."""

    def __init__(self, remote_ms: int, now_ms: int, max_drift_ms: int) -> None:
        super().__init__(
            f"remote clock {remote_ms} is {remote_ms - now_ms} ms ahead of local {now_ms}; "
            f"maximum drift is {max_drift_ms} ms"
        )
        self.remote_ms = remote_ms
        self.now_ms = now_ms
        self.max_drift_ms = max_drift_ms


class SignatureError(CrdtError):
    """A signature is missing or does not verify."""
