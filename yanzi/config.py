"""The SDK's configuration: one frozen, keyword-only dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yanzi.errors import InvalidRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    device_name: str = "yanzi-python"
    # sends
    ack_timeout_s: float = 10.0  # one attempt: how long to wait for the ack of one frame
    send_timeout_s: float = 30.0  # the whole send, across retries and reconnects
    # connection
    connect_timeout_s: float = 10.0  # TCP + WebSocket handshake + auth frame -> ready
    request_timeout_s: float = 15.0  # one HTTP request
    heartbeat_s: float = 20.0  # WebSocket ping interval; a missed pong drops the connection
    app_ping_s: float = 25.0  # protocol-level ping frame interval (the node's idle timeout: 120 s)
    close_timeout_s: float = 2.0  # how long close() waits for the node's close frame
    # reconnect: exponential backoff with full jitter (Brooker, "Exponential Backoff And
    # Jitter", AWS Architecture Blog 2015): sleep uniform(0, min(max, base * 2**attempt)).
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 10.0  # a connection that lived this long resets the attempt count
    # catch-up and persistence
    # ops per GET /v1/sync page; None asks for the node's default page (its max_sync_page), and
    # a number above that maximum is refused by the node with bad_request.
    sync_page: int | None = None
    persist_delay_s: float = 0.05  # coalesce cursor writes of a burst into one file write
    # end-to-end encryption (docs/e2ee.md): encrypt sends, decrypt what arrives
    e2ee: bool = True
    key_request_delay_s: float = 3.0  # after a catch-up, wait this long for a share, then ask
    # nearest edge (Client(edges=...)): RTT = median of `edge_probe_samples` GET /healthz
    edge_probe_samples: int = 3
    edge_probe_timeout_s: float = 2.0  # all samples of one edge; slower counts as no answer
    edge_refresh_s: float = 300.0  # re-measure this often (0: once, on the first connect)
    edge_move_margin_s: float = 0.015  # move to a nearer edge only if nearer by more than this

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_s") and (not isinstance(value, int | float) or value < 0):
                raise InvalidRequest(f"{f.name} must be a number >= 0, not {value!r}")
        for name in (
            "ack_timeout_s",
            "send_timeout_s",
            "connect_timeout_s",
            "request_timeout_s",
            "app_ping_s",
        ):
            if getattr(self, name) <= 0:
                raise InvalidRequest(f"{name} must be > 0")
        if self.backoff_base_s <= 0 or self.backoff_max_s < self.backoff_base_s:
            raise InvalidRequest("need 0 < backoff_base_s <= backoff_max_s")
        if self.sync_page is not None and (
            not isinstance(self.sync_page, int) or not 1 <= self.sync_page <= 10_000
        ):
            raise InvalidRequest("sync_page must be an integer from 1 to 10000")
        if not isinstance(self.edge_probe_samples, int) or not 1 <= self.edge_probe_samples <= 15:
            raise InvalidRequest("edge_probe_samples must be an integer from 1 to 15")
        if self.edge_probe_timeout_s <= 0:
            raise InvalidRequest("edge_probe_timeout_s must be > 0")
        if not isinstance(self.device_name, str) or not 0 < len(self.device_name) <= 64:
            raise InvalidRequest("device_name must be 1-64 characters")

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pure delay policy; randomness comes in (a `random.Random`-like `uniform`)."""

    base_s: float
    max_s: float

    def delay(self, attempt: int, uniform: Callable[[float, float], float]) -> float:
        cap = min(self.max_s, self.base_s * 2 ** min(attempt, 32))
        return float(uniform(0.0, cap))
