"""The SDK's one error hierarchy: everything `yanzi` raises on purpose is a `YanziError`.

Errors split like h11's: `ServerError` is the node refusing something (it carries the node's
stable code, docs/protocol.md); the others are local (bad arguments, no login, the network).
Timeouts also subclass the built-in `TimeoutError` so `except TimeoutError` keeps working.
"""

from __future__ import annotations

from typing import Final

# Codes after which the same request may succeed later (docs/protocol.md, error catalogue).
RETRYABLE_CODES: Final = frozenset({"unavailable", "rate_limited"})
# Codes that mean the token is no good: log in again; reconnecting cannot help.
AUTH_CODES: Final = frozenset({"auth_required", "auth_failed", "token_expired"})


class YanziError(Exception):
    """Root of every error raised by the `yanzi` SDK."""


class ServerError(YanziError):
    """The node refused a request, with a stable `code` and a message a person can act on."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status  # the HTTP status, when the refusal came over HTTP

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @property
    def needs_login(self) -> bool:
        return self.code in AUTH_CODES


class InvalidRequest(YanziError, ValueError):
    """The caller asked for something malformed; nothing was sent."""


class NotLoggedIn(YanziError):
    """The keystore holds no token (or the node revoked it): call `Client.login` first."""


class KeystoreError(YanziError):
    """The keystore file cannot be read, parsed or written."""


class ConnectionLost(YanziError, ConnectionError):
    """The node could not be reached, or the connection dropped before a reply arrived."""


class ProtocolError(YanziError):
    """The node sent something this SDK cannot understand."""


class YanziTimeout(YanziError, TimeoutError):
    """Root of the SDK's timeouts."""


class AckTimeout(YanziTimeout):
    """A send was not acknowledged within the configured time (it may still have happened:
    retrying with the same cmid is safe and returns the same op)."""


class ConnectTimeout(YanziTimeout):
    """The WebSocket did not open and authenticate in time."""


class RequestTimeout(YanziTimeout):
    """An HTTP request to the node did not complete in time."""
