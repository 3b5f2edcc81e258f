"""Test doubles of the small ports federation code depends on (no I/O behind them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Everyone:
    """DeviceDirectory: every user exists; no device keys (unsigned ops are accepted)."""

    def device_key(self, user: str, device: str) -> None:
        return None

    def user_exists(self, user: str) -> bool:
        return True


@dataclass
class StaticMesh:
    """MeshView with a fixed member set."""

    members: set[str]
    mesh_id: str = "testmesh00000000"

    def is_member(self, node_id: str) -> bool:
        return node_id in self.members


@dataclass
class Audit:
    """Audit port that keeps what it is told."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))
