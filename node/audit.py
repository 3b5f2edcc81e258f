"""The audit log: append-only JSON lines of security-relevant events (forged or replayed
envelopes, refused peers, revocations). Never holds a message body, token or key."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the node

    def record(self, event: str, **fields: Any) -> None:
        entry = {"ts_ms": time.time_ns() // 1_000_000, "event": event, **fields}
        self._fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        self._fh.flush()
        log.warning("audit: %s %s", event, fields)

    def close(self) -> None:
        self._fh.close()
