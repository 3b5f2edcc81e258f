"""Federation settings: one frozen, validated object (TOML table [federation] + YANZI_FED_*)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from federation.errors import FederationError


class FederationConfigError(FederationError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    nats_url: str = ""  # empty: start an embedded nats-server
    nats_host: str = "127.0.0.1"  # embedded server's client listen address
    nats_port: int = 0  # embedded server's client port; 0 picks a free one
    batch_delay_ms: float = 2.0  # how long live ops wait to share one envelope
    max_batch_ops: int = 256
    ae_interval_s: float = 30.0  # periodic anti-entropy, with +-50% jitter
    ae_page_bytes: int = 256 * 1024  # below NATS max_payload (1 MiB by default)
    request_timeout_s: float = 5.0
    hello_interval_s: float = 2.0
    peer_timeout_s: float = 10.0  # a peer silent this long is considered down

    def __post_init__(self) -> None:
        for name in (
            "batch_delay_ms",
            "max_batch_ops",
            "ae_interval_s",
            "ae_page_bytes",
            "request_timeout_s",
            "hello_interval_s",
            "peer_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise FederationConfigError(f"federation.{name} must be > 0")
        if not 0 <= self.nats_port <= 65535:
            raise FederationConfigError("federation.nats_port must be 0-65535")

    def replace(self, **changes: object) -> FederationConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
