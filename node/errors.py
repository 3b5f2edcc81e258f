"""Node errors. Client-facing errors carry a stable code, a message a person can act on, and the
HTTP status to answer with (like h11's `error_status_hint`). The catalogue is data: docs/protocol.md
lists the same codes.
"""

from __future__ import annotations

from typing import Final


class NodeError(Exception):
    """Root of every error raised by `node`."""


# code -> (HTTP status, does the WebSocket session survive it?)
ERROR_CODES: Final[dict[str, tuple[int, bool]]] = {
    "bad_json": (400, True),
    "bad_frame": (400, True),
    "unknown_type": (400, True),
    "too_large": (413, True),
    "bad_request": (400, True),
    "auth_required": (401, False),
    "auth_failed": (401, False),
    "token_expired": (401, False),
    "bad_credentials": (401, True),
    "username_taken": (409, True),
    "forbidden": (403, True),
    "not_member": (403, True),
    "not_found": (404, True),
    "bad_signature": (400, True),
    "recall_window": (403, True),
    "rate_limited": (429, True),
    "conflict": (409, True),
    "unavailable": (503, True),
    "internal": (500, True),
}


class ClientError(NodeError):
    """Something the client did or asked for that we refuse, with a stable code."""

    def __init__(self, code: str, message: str, *, request_id: object = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def http_status(self) -> int:
        return ERROR_CODES[self.code][0]

    @property
    def session_survives(self) -> bool:
        return ERROR_CODES[self.code][1]

    def to_json(self) -> dict[str, object]:
        frame: dict[str, object] = {"type": "error", "code": self.code, "message": self.message}
        if self.request_id is not None:
            frame["id"] = self.request_id
        return frame
