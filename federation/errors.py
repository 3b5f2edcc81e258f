"""The federation package's one error root."""

from __future__ import annotations


class FederationError(Exception):
    """Root of every error raised by `federation`."""


class NatsServerError(FederationError):
    """The embedded nats-server could not be started or died."""
