"""Federation settings: one frozen, validated object (TOML table [federation] + YANZI_FED_*)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.errors import FederationError


class FederationConfigError(FederationError, ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    nats_url: str = ""  # empty: start an embedded nats-server
    nats_host: str = "127.0.0.1"  # embedded server's client listen address
    nats_port: int = 0  # embedded server's client port; 0 picks a free one
    leafnode_port: int = 0  # > 0: the embedded server accepts leaf nodes here (a mesh hub)
    batch_delay_ms: float = 2.0  # how long live ops wait to share one envelope
    max_batch_ops: int = 256
    ae_interval_s: float = 30.0  # periodic anti-entropy, with +-50% jitter
    ae_page_bytes: int = 1_000_000  # a page is also kept 4 KiB below the server's max_payload
    request_timeout_s: float = 5.0
    hello_interval_s: float = 2.0
    peer_timeout_s: float = 10.0  # a peer silent this long is considered down
    discovery: bool = True  # advertise _yanzi._tcp.local. (finds peers; never grants trust)
    discovery_interfaces: str = "127.0.0.1"  # comma list of IPv4 addresses, or "all"

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
        for name in ("nats_port", "leafnode_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise FederationConfigError(f"federation.{name} must be 0-65535")
        from federation.discovery import DiscoveryError, parse_interfaces  # pulls in zeroconf

        try:
            parse_interfaces(self.discovery_interfaces)
        except DiscoveryError as exc:
            raise FederationConfigError(f"federation.discovery_interfaces: {exc}") from None

    def replace(self, **changes: object) -> FederationConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def load_federation_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> FederationConfig:
    """The [federation] table of the node's TOML file, then YANZI_FED_* env, then overrides."""
    from node.config import build_config, read_toml

    section = read_toml(path).get("federation", {})
    return build_config(
        FederationConfig,
        section,
        env_prefix="YANZI_FED_",
        environ=environ,
        overrides=overrides,
        what="federation",
    )
