"""The local keystore: one JSON file holding a device's identity, its token and the sync cursor.

The file holds secrets (the Ed25519 signing seed, the X25519 secret key and the session token),
so it is created with mode 0600 and every write is atomic: write a temp file in the same folder
(itself created 0600), fsync it, then `os.replace` it over the old one (POSIX rename is atomic),
so a crash leaves either the old or the new file, never half of one.

Layout (version 1; binary values are unpadded base64url like everything on Yanzi's wire):

    {"v": 1, "device": "py-…", "ed25519_seed": "…", "x25519_secret": "…",
     "user": "alice" | null, "token": "…" | null, "token_expires_ms": 0 | null,
     "node": "<node id that issued the token>" | null,
     "cursor": {conv: {origin: seq}},
     "e2ee": {...} | null, "trust": {...} | null}

`e2ee` (this device's sender chains, the chains shared with it and the replay book) and `trust`
(the TOFU store) belong to yanzi.e2ee_session and yanzi.trust; the keystore only keeps them.

One keystore is one device of one user; two processes must not share it at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import Cursor, DecodeError, b64decode, b64encode, cursor_from_json
from yanzi.errors import KeystoreError

log = logging.getLogger(__name__)
KEYSTORE_VERSION: Final = 1
FILE_MODE: Final = 0o600


def new_device_id() -> str:
    """A device id the node accepts ([A-Za-z0-9_.-]{1,64}) with 64 random bits."""
    return "py-" + secrets.token_hex(8)


@dataclass(slots=True, kw_only=True)
class Keystore:
    path: Path
    device: str
    signing_key: SigningKey = field(repr=False)
    box_key: PrivateKey = field(repr=False)
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    token_expires_ms: int | None = None
    node: str | None = None
    cursor: Cursor = field(default_factory=dict, repr=False)
    e2ee: dict[str, Any] | None = field(default=None, repr=False)  # chain keys: secrets
    trust: dict[str, Any] | None = field(default=None, repr=False)

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Keystore:
        """Load the keystore at `path`, or create one with fresh device keys (and write it)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            store = cls(
                path=path,
                device=new_device_id(),
                signing_key=SigningKey.generate(),
                box_key=PrivateKey.generate(),
            )
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            store.save()
            log.info("created keystore %s for device %s", path, store.device)
            return store
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc}") from exc
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("keystore %s is readable by others (mode %o); fixing to 0600", path, mode)
            path.chmod(FILE_MODE)
        return cls._from_json(path, raw)

    @classmethod
    def _from_json(cls, path: Path, raw: bytes) -> Keystore:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("v") != KEYSTORE_VERSION:
                raise KeystoreError(f"keystore {path} is not a version {KEYSTORE_VERSION} keystore")
            seed = b64decode(data["ed25519_seed"], max_bytes=32)
            secret = b64decode(data["x25519_secret"], max_bytes=32)
            expires = data.get("token_expires_ms")
            return cls(
                path=path,
                device=_str(data["device"], "device"),
                signing_key=SigningKey(seed),
                box_key=PrivateKey(secret),
                user=_opt_str(data.get("user"), "user"),
                token=_opt_str(data.get("token"), "token"),
                token_expires_ms=expires if isinstance(expires, int) else None,
                node=_opt_str(data.get("node"), "node"),
                cursor=cursor_from_json(data.get("cursor", {})),
                e2ee=_opt_dict(data.get("e2ee"), "e2ee"),
                trust=_opt_dict(data.get("trust"), "trust"),
            )
        except KeystoreError:
            raise
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            # nacl raises its own ValueError subclasses for keys of the wrong length.
            raise KeystoreError(f"keystore {path} is damaged: {exc}") from exc

    # -- writing ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "v": KEYSTORE_VERSION,
            "device": self.device,
            "ed25519_seed": b64encode(bytes(self.signing_key)),
            "x25519_secret": b64encode(bytes(self.box_key)),
            "user": self.user,
            "token": self.token,
            "token_expires_ms": self.token_expires_ms,
            "node": self.node,
            "cursor": {conv: dict(vv) for conv, vv in sorted(self.cursor.items())},
            "e2ee": self.e2ee,
            "trust": self.trust,
        }

    def dumps(self) -> bytes:
        """A snapshot of the file's bytes (taken on the event loop, written from a thread)."""
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    def save(self) -> None:
        write_atomic(self.path, self.dumps())

    # -- identity -----------------------------------------------------------------------------

    def public_keys_json(self) -> dict[str, str]:
        """What `POST /v1/login` registers for this device."""
        return {
            "ed25519": b64encode(bytes(self.signing_key.verify_key)),
            "x25519": b64encode(bytes(self.box_key.public_key)),
        }

    def forget_account(self) -> None:
        """Drop the token, cursor and E2EE state (a different user logs in with this device's
        keys: the old account's chains and trust decisions mean nothing for the new one)."""
        self.user = self.token = self.node = None
        self.token_expires_ms = None
        self.cursor = {}
        self.e2ee = self.trust = None


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (tmp file, fsync, os.replace)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # O_CREAT's mode does not apply to a leftover tmp file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeystoreError(f"cannot write keystore {path}: {exc}") from exc


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise KeystoreError(f"keystore field {what} must be a non-empty string")
    return value


def _opt_str(value: object, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _opt_dict(value: object, what: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise KeystoreError(f"keystore field {what} must be an object")
    return value
