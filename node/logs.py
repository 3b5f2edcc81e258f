"""The node's log output: human-readable lines (`text`) or one JSON object per line (`json`).

Both carry the same records; `json` is for log shippers (journald, Loki, a container runtime):
every line is `{"ts", "level", "logger", "msg"}` plus `"exc"` (the traceback) when there is one.
What the records hold is the same either way — never bodies, tokens or passwords
(docs/operations.md §9.1).
"""

from __future__ import annotations

import json
import logging
import time

__all__ = ["FORMATS", "JsonFormatter", "configure"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Route every logger to standard error in `fmt` ("text" or "json") at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
