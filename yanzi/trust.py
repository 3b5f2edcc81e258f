"""Trust on first use (docs/e2ee.md §2): which device keys this device believes, per user.

The store remembers, per user and device id, the first Ed25519 key it saw (with the X25519 key
that key signed). A later directory answer with another Ed25519 key for a known device id is a
`KeyChanged`, and the device is untrusted until `trust(user, device)`; a new device id of a user
seen before is a `DeviceAdded` (trusted, but visible). Directory rows whose `keys_sig` does not
verify are ignored, so a node cannot slip in keys the device never signed.

Pure: the caller fetches `GET /v1/users/{user}/devices`, passes the rows in and persists
`to_json()` in the keystore (yanzi.keystore).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crdt import DecodeError, b64decode, b64encode
from yanzi.e2ee import KEY_BYTES, E2eeError, verify_device
from yanzi.events import DeviceAdded, KeyChanged

log = logging.getLogger(__name__)

TrustEvent = KeyChanged | DeviceAdded


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryDevice:
    """One row of a user's key directory whose self-signature verified."""

    user: str
    device: str
    ed25519: bytes
    x25519: bytes


def verified_devices(user: str, rows: Iterable[Mapping[str, Any]]) -> list[DirectoryDevice]:
    """The rows of `GET /v1/users/{user}/devices` that belong to `user` and carry a valid
    `keys_sig`; every other row is dropped (docs/e2ee.md §1)."""
    found: list[DirectoryDevice] = []
    for row in rows:
        try:
            device = row["device"]
            keys = row["keys"]
            ed25519 = b64decode(keys["ed25519"], max_bytes=KEY_BYTES)
            x25519 = b64decode(keys["x25519"], max_bytes=KEY_BYTES)
            keys_sig = b64decode(row["keys_sig"], max_bytes=64)
            if row.get("user", user) != user or not isinstance(device, str):
                raise E2eeError("malformed", "the row names another user or no device")
            verify_device(user, device, ed25519, x25519, keys_sig)
        except (KeyError, TypeError, DecodeError, E2eeError) as exc:
            log.info("ignoring a directory row of %s: %s", user, exc)
            continue
        found.append(DirectoryDevice(user=user, device=device, ed25519=ed25519, x25519=x25519))
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownDevice:
    ed25519: bytes
    x25519: bytes
    trusted: bool
    first_seen_ms: int
    previous: bytes | None = None  # the Ed25519 key before the last unapproved change

    def to_json(self) -> dict[str, Any]:
        return {
            "ed25519": b64encode(self.ed25519),
            "x25519": b64encode(self.x25519),
            "trusted": self.trusted,
            "first_seen_ms": self.first_seen_ms,
            "previous": None if self.previous is None else b64encode(self.previous),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> KnownDevice:
        previous = value.get("previous")
        return cls(
            ed25519=b64decode(value["ed25519"], max_bytes=KEY_BYTES),
            x25519=b64decode(value["x25519"], max_bytes=KEY_BYTES),
            trusted=value["trusted"] is True,
            first_seen_ms=int(value["first_seen_ms"]),
            previous=None if previous is None else b64decode(previous, max_bytes=KEY_BYTES),
        )


class TrustStore:
    """user -> device -> KnownDevice. `observe` folds in a directory answer."""

    def __init__(self, users: Mapping[str, Mapping[str, KnownDevice]] | None = None) -> None:
        self._users: dict[str, dict[str, KnownDevice]] = {
            u: dict(devs) for u, devs in (users or {}).items()
        }

    def observe(
        self, user: str, devices: Sequence[DirectoryDevice], *, now_ms: int
    ) -> list[TrustEvent]:
        """Fold in the verified directory of `user`; returns what changed visibly."""
        known_user = user in self._users
        known = self._users.setdefault(user, {})
        events: list[TrustEvent] = []
        for dev in devices:
            old = known.get(dev.device)
            if old is None:
                known[dev.device] = KnownDevice(
                    ed25519=dev.ed25519, x25519=dev.x25519, trusted=True, first_seen_ms=now_ms
                )
                if known_user:
                    events.append(DeviceAdded(user, dev.device))
            elif old.ed25519 != dev.ed25519:
                # A swapped signing key: never accepted silently (§2).
                events.append(
                    KeyChanged(user, dev.device, b64encode(old.ed25519), b64encode(dev.ed25519))
                )
                known[dev.device] = replace(
                    old,
                    ed25519=dev.ed25519,
                    x25519=dev.x25519,
                    trusted=False,
                    previous=old.ed25519 if old.trusted else old.previous,
                )
            elif old.x25519 != dev.x25519:
                # The same signing key vouches for a new box key (keys_sig verified): the device
                # re-registered; nothing to approve.
                known[dev.device] = replace(old, x25519=dev.x25519)
        return events

    def trust(self, user: str, device: str) -> bool:
        """Accept the device's current keys; False if the device is unknown."""
        old = self._users.get(user, {}).get(device)
        if old is None:
            return False
        self._users[user][device] = replace(old, trusted=True, previous=None)
        return True

    def get(self, user: str, device: str) -> KnownDevice | None:
        return self._users.get(user, {}).get(device)

    def knows(self, user: str) -> bool:
        return user in self._users

    def devices(self, user: str) -> dict[str, KnownDevice]:
        return dict(self._users.get(user, {}))

    def trusted(self, user: str) -> dict[str, KnownDevice]:
        return {d: k for d, k in self._users.get(user, {}).items() if k.trusted}

    def is_trusted_key(self, user: str, device: str, ed25519: bytes) -> bool:
        known = self.get(user, device)
        return known is not None and known.trusted and known.ed25519 == ed25519

    def to_json(self) -> dict[str, Any]:
        return {
            user: {dev: k.to_json() for dev, k in sorted(devs.items())}
            for user, devs in sorted(self._users.items())
        }

    @classmethod
    def from_json(cls, value: Any) -> TrustStore:
        """Raises E2eeError(malformed) on a damaged store."""
        try:
            return cls(
                {
                    str(user): {str(dev): KnownDevice.from_json(k) for dev, k in devs.items()}
                    for user, devs in dict(value or {}).items()
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise E2eeError("malformed", f"the trust store is damaged: {exc}") from None
