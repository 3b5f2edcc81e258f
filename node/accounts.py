"""Accounts, devices and session tokens of an edge node (issue 3, item 2).

* A **user** is a username (the user id) with an argon2id password hash (`nacl.pwhash`). Hashing
  and verifying cost ~0.1 s of CPU and 64 MiB at the "interactive" level, so both run in a worker
  thread (`asyncio.to_thread`) and never block the event loop.
* A **device** is named by the client at login and registers its Ed25519 (signing) and X25519
  (Box) public keys (DESIGN.md decision 5). Logging in again with the same device id replaces
  its keys; if they differ, ``keys_changed_ms`` records when, so the E2EE layer can show the
  change ("trust on first use, key changes are visible"). An optional ``keys_sig`` (the
  device's self-signature of its record, docs/e2ee.md §1) is verified and kept with the keys;
  clients ignore directory rows without a valid one.
* A **token** is 32 random bytes, given to the client as unpadded base64url. Only SHA-256 of the
  raw bytes is stored (a stolen database does not yield usable tokens); 256 random bits need no
  salt or slow hash. Tokens expire after ``token_ttl_s`` and can be revoked one by one (logout)
  or per user (logout_all, via the ``user_tokens`` index).

LMDB layout (keys are bytes; usernames cannot contain NUL, so ``user + b"\\0"`` is a safe prefix):

    users        user                      -> {"user", "pwhash", "created_ms"}
    devices      user NUL device           -> Device.to_json()
    tokens       sha256(token)             -> {"user", "device", "created_ms", "expires_ms"}
    user_tokens  user NUL sha256(token)    -> {"device", "expires_ms"}

Expired tokens are refused by `authenticate` (a sync read) and deleted lazily: the next write of
this object (login, logout, logout_all) or `purge_expired` removes them. No task is spawned here;
the node calls `purge_expired` from its own periodic loop.

Check-then-write sequences (register, device upsert, logout_all) are serialised per username by
an in-process lock: one node process owns its data dir.

Replication (federation/accounts_sync.py) plugs in as the optional `journal`: every commit then
carries the journal's extra writes in the same transaction, and the journal hears whether the
commit settled. Without a journal (a standalone node, unit tests) nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import nacl.exceptions
import nacl.pwhash
import nacl.utils
from nacl.pwhash import argon2id
from nacl.signing import VerifyKey

from crdt import DecodeError, b64decode, b64encode, canonical_json
from node.errors import ClientError
from node.store import Delete, Put, Write

__all__ = [
    "DBS",
    "Accounts",
    "Device",
    "DeviceKeys",
    "Identity",
    "Journal",
    "LoginResult",
    "StoreLike",
]

log = logging.getLogger(__name__)

#: The LMDB databases this module uses; the node opens its Store with these among others.
DBS: Final[tuple[str, ...]] = ("users", "devices", "tokens", "user_tokens")

USERNAME_RULE: Final = "3-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
DEVICE_RULE: Final = "1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
MAX_PASSWORD_LEN: Final = 1024
MAX_DEVICE_NAME_LEN: Final = 64
TOKEN_BYTES: Final = 32
KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
DEVICE_RECORD_CONTEXT: Final = b"yanzi-device-v1\x00"  # docs/e2ee.md §1

_USERNAME = re.compile(r"[a-z0-9][a-z0-9_.-]{2,31}")
_DEVICE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOKEN_CHARS: Final = (TOKEN_BYTES * 4 + 2) // 3  # 43: unpadded base64url of 32 bytes
_SEP: Final = b"\x00"
_MAX_PENDING_PURGE: Final = 10_000

# libsodium's named argon2id cost levels (crypto_pwhash_argon2id_OPSLIMIT_* / MEMLIMIT_*).
_PWHASH_LEVELS: Final[Mapping[str, tuple[int, int]]] = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "min": (argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN),
}

_BAD_CREDENTIALS: Final = "unknown username or wrong password"
_BAD_TOKEN: Final = "the token is invalid or has been revoked; log in again"


class StoreLike(Protocol):
    """The part of `node.store.Store` this module uses."""

    async def commit(self, writes: list[Write]) -> None: ...
    def get(self, db: str, key: bytes) -> bytes | None: ...
    def scan(self, db: str, *, prefix: bytes = b"") -> list[tuple[bytes, bytes]]: ...


class Journal(Protocol):
    """Optional collaborator that journals every account write for replication.

    `record` returns extra writes to commit atomically with `writes`; then exactly one of
    `committed` (durable, or queued to the writer before a cancel) or `failed` (not written)
    is called with that same list.
    """

    def record(self, writes: Sequence[Write]) -> list[Write]: ...
    def committed(self, extra: Sequence[Write]) -> None: ...
    def failed(self, extra: Sequence[Write]) -> None: ...


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """A device's public keys: Ed25519 verifies its signatures, X25519 receives Box key shares."""

    ed25519: bytes
    x25519: bytes

    def __post_init__(self) -> None:
        for name in ("ed25519", "x25519"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_BYTES:
                raise ClientError("bad_request", f"keys.{name} must be {KEY_BYTES} bytes")

    @classmethod
    def from_json(cls, value: object) -> DeviceKeys:
        """Parse ``{"ed25519": b64url, "x25519": b64url}``; raises ClientError(bad_request)."""
        if not isinstance(value, dict) or set(value) != {"ed25519", "x25519"}:
            raise ClientError(
                "bad_request", 'keys must be an object {"ed25519": base64url, "x25519": base64url}'
            )
        decoded: dict[str, bytes] = {}
        for name in ("ed25519", "x25519"):
            try:
                decoded[name] = b64decode(value[name], max_bytes=KEY_BYTES)
            except DecodeError:
                raise ClientError(
                    "bad_request", f"keys.{name} must be {KEY_BYTES} bytes as unpadded base64url"
                ) from None
        return cls(ed25519=decoded["ed25519"], x25519=decoded["x25519"])

    def to_json(self) -> dict[str, str]:
        return {"ed25519": b64encode(self.ed25519), "x25519": b64encode(self.x25519)}

    def verify_self_signature(self, user: str, device: str, keys_sig: bytes) -> None:
        """Check `keys_sig`, the device's Ed25519 signature over its own record (docs/e2ee.md
        §1): it proves possession of the signing key. Raises ClientError(bad_request)."""
        record = {"user": user, "device": device, **self.to_json()}
        signed = DEVICE_RECORD_CONTEXT + canonical_json(record)
        if len(keys_sig) != SIGNATURE_BYTES:
            raise ClientError("bad_request", "keys_sig must be a 64-byte Ed25519 signature")
        try:
            VerifyKey(self.ed25519).verify(signed, keys_sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            raise ClientError(
                "bad_request",
                "keys_sig does not verify: sign b'yanzi-device-v1\\0' + canonical JSON of "
                '{"user", "device", "ed25519", "x25519"} with the device key (docs/e2ee.md §1)',
            ) from None


@dataclass(frozen=True, slots=True)
class Device:
    user: str
    device: str
    name: str
    keys: DeviceKeys
    created_ms: int
    last_login_ms: int
    #: When a login last replaced this device's keys with different ones; None if never.
    keys_changed_ms: int | None = None
    #: The device's self-signature of its keys (docs/e2ee.md §1), verified at login; None if
    #: the device never sent one for its current keys.
    keys_sig: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "device": self.device,
            "name": self.name,
            "keys": self.keys.to_json(),
            "keys_sig": None if self.keys_sig is None else b64encode(self.keys_sig),
            "created_ms": self.created_ms,
            "last_login_ms": self.last_login_ms,
            "keys_changed_ms": self.keys_changed_ms,
        }

    @classmethod
    def _from_record(cls, raw: bytes) -> Device:
        rec = json.loads(raw)
        keys = rec["keys"]
        keys_sig = rec.get("keys_sig")  # absent in rows written before keys_sig existed
        return cls(
            user=rec["user"],
            device=rec["device"],
            name=rec["name"],
            keys=DeviceKeys(b64decode(keys["ed25519"]), b64decode(keys["x25519"])),
            created_ms=rec["created_ms"],
            last_login_ms=rec["last_login_ms"],
            keys_changed_ms=rec.get("keys_changed_ms"),
            keys_sig=None if keys_sig is None else b64decode(keys_sig),
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for. `token_id` is hex SHA-256 of the token: safe to log."""

    user: str
    device: str
    token_id: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str = field(repr=False)  # never in a repr, hence never in a log line by accident
    user: str
    device: str
    expires_ms: int


# -- validation ------------------------------------------------------------------------------


def _check_username(username: object) -> str:
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise ClientError("bad_request", f"username must be {USERNAME_RULE}")
    return username


def _check_device(device: object) -> str:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ClientError("bad_request", f"device id must be {DEVICE_RULE}")
    return device


def _check_device_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or len(name) > MAX_DEVICE_NAME_LEN
        or not name.isprintable()  # no control characters or lone surrogates
    ):
        raise ClientError(
            "bad_request",
            f"device name must be at most {MAX_DEVICE_NAME_LEN} printable characters",
        )
    return name


def _password_bytes(password: object, *, min_len: int) -> bytes:
    if not isinstance(password, str) or not min_len <= len(password) <= MAX_PASSWORD_LEN:
        raise ClientError(
            "bad_request",
            f"password must be {min_len}-{MAX_PASSWORD_LEN} characters long",
        )
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("bad_request", "password must be valid Unicode text") from None


def _token_digest(token: object) -> bytes | None:
    """SHA-256 of the token's 32 raw bytes, or None if `token` is not a well-formed token."""
    if not isinstance(token, str) or len(token) != _TOKEN_CHARS:
        return None
    try:
        raw = b64decode(token, max_bytes=TOKEN_BYTES)
    except DecodeError:
        return None
    if len(raw) != TOKEN_BYTES:
        return None
    return hashlib.sha256(raw).digest()


def _user_key(user: str, suffix: bytes = b"") -> bytes:
    return user.encode("ascii") + _SEP + suffix


# -- the service -----------------------------------------------------------------------------


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Accounts:
    """Registration, login (per device), token authentication and revocation."""

    def __init__(
        self,
        store: StoreLike,
        *,
        token_ttl_s: int,
        min_password_len: int,
        register_open: bool = True,
        pwhash_level: str = "interactive",
        clock_ms: Callable[[], int] = _wall_clock_ms,
        random_bytes: Callable[[int], bytes] = nacl.utils.random,
        journal: Journal | None = None,
    ) -> None:
        if pwhash_level not in _PWHASH_LEVELS:
            raise ValueError(f"pwhash_level must be one of {sorted(_PWHASH_LEVELS)}")
        if token_ttl_s <= 0 or min_password_len <= 0:
            raise ValueError("token_ttl_s and min_password_len must be > 0")
        self._store = store
        self.journal = journal
        self._ttl_ms = token_ttl_s * 1000
        self._min_password_len = min_password_len
        self._register_open = register_open
        self._opslimit, self._memlimit = _PWHASH_LEVELS[pwhash_level]
        self._clock_ms = clock_ms
        self._random_bytes = random_bytes
        self._locks = _KeyedLocks()
        self._dummy_hash: bytes | None = None
        self._dummy_lock = asyncio.Lock()
        # token digest -> user, for expired tokens seen by `authenticate` and not yet deleted
        self._pending_purge: dict[bytes, str] = {}

    # -- passwords -----------------------------------------------------------------------------

    async def _hash(self, password: bytes) -> bytes:
        return await asyncio.to_thread(
            argon2id.str, password, opslimit=self._opslimit, memlimit=self._memlimit
        )

    async def _verify(self, pwhash: bytes, password: bytes) -> bool:
        try:
            return await asyncio.to_thread(nacl.pwhash.verify, pwhash, password)
        except nacl.exceptions.InvalidkeyError:
            return False

    async def _dummy(self) -> bytes:
        """A hash at the configured cost, verified against for unknown users (equal timing)."""
        async with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(self._random_bytes(16))
            return self._dummy_hash

    # -- users ---------------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        """Create a user; raises ClientError bad_request / username_taken / forbidden."""
        if not self._register_open:
            raise ClientError("forbidden", "registration is closed on this node")
        user = _check_username(username)
        secret = _password_bytes(password, min_len=self._min_password_len)
        if self.user_exists(user):  # fail fast, before paying for a hash
            raise ClientError("username_taken", f"username {user!r} is already taken")
        pwhash = await self._hash(secret)
        async with self._locks.hold(user):
            if self.user_exists(user):  # a concurrent register won the race
                raise ClientError("username_taken", f"username {user!r} is already taken")
            record = {"user": user, "pwhash": pwhash.decode("ascii"), "created_ms": self._now()}
            await self._commit([Put("users", user.encode("ascii"), canonical_json(record))])
        log.info("registered user %s", user)

    def user_exists(self, user: str) -> bool:
        return _valid_username(user) and self._store.get("users", user.encode("ascii")) is not None

    # -- login ---------------------------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        *,
        device: str,
        device_name: str,
        keys: DeviceKeys,
        keys_sig: bytes | None = None,
    ) -> LoginResult:
        """Check the password, upsert the device and its keys, and issue a new token.
        `keys_sig`, if given, must be the device's valid self-signature (bad_request)."""
        user = _check_username(username)
        # No minimum here: a password set under an older, lower min_password_len still works.
        secret = _password_bytes(password, min_len=0)
        device = _check_device(device)
        device_name = _check_device_name(device_name)
        if not isinstance(keys, DeviceKeys):
            raise ClientError("bad_request", "keys must be the device's public keys")
        if keys_sig is not None:
            keys.verify_self_signature(user, device, keys_sig)
        raw_user = self._store.get("users", user.encode("ascii"))
        if raw_user is None:
            await self._verify(await self._dummy(), secret)  # same cost as a real miss
            raise ClientError("bad_credentials", _BAD_CREDENTIALS)
        pwhash = json.loads(raw_user)["pwhash"].encode("ascii")
        if not await self._verify(pwhash, secret):
            log.info("failed login for user %s", user)
            raise ClientError("bad_credentials", _BAD_CREDENTIALS)

        raw_token = self._random_bytes(TOKEN_BYTES)
        if len(raw_token) != TOKEN_BYTES:
            raise RuntimeError("random_bytes returned the wrong length")
        digest = hashlib.sha256(raw_token).digest()
        async with self._locks.hold(user):
            now = self._now()
            expires_ms = now + self._ttl_ms
            stored = self.device(user, device)
            if stored is None:
                record = Device(user, device, device_name, keys, now, now, keys_sig=keys_sig)
            else:
                changed = stored.keys != keys
                # A login without keys_sig keeps the one that signed these same keys before.
                if keys_sig is None and not changed:
                    keys_sig = stored.keys_sig
                if changed:
                    log.warning("user %s device %s logged in with new keys", user, device)
                record = replace(
                    stored,
                    name=device_name,
                    keys=keys,
                    last_login_ms=now,
                    keys_changed_ms=now if changed else stored.keys_changed_ms,
                    keys_sig=keys_sig,
                )
            token_rec = {
                "user": user,
                "device": device,
                "created_ms": now,
                "expires_ms": expires_ms,
            }
            index_rec = {"device": device, "expires_ms": expires_ms}
            writes: list[Write] = [
                Put(
                    "devices",
                    _user_key(user, device.encode("ascii")),
                    canonical_json(record.to_json()),
                ),
                Put("tokens", digest, canonical_json(token_rec)),
                Put("user_tokens", _user_key(user, digest), canonical_json(index_rec)),
                *self._take_pending_purge(),
            ]
            await self._commit(writes)
        log.info("user %s logged in on device %s (token %s)", user, device, digest.hex()[:12])
        return LoginResult(b64encode(raw_token), user, device, expires_ms)

    # -- tokens --------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Identity:
        """The identity a token speaks for; raises ClientError auth_failed / token_expired."""
        digest = _token_digest(token)
        raw = None if digest is None else self._store.get("tokens", digest)
        if digest is None or raw is None:
            raise ClientError("auth_failed", _BAD_TOKEN)
        rec = json.loads(raw)
        if self._now() >= rec["expires_ms"]:
            if len(self._pending_purge) < _MAX_PENDING_PURGE:
                self._pending_purge[digest] = rec["user"]
            raise ClientError("token_expired", "the token has expired; log in again")
        return Identity(rec["user"], rec["device"], digest.hex(), rec["expires_ms"])

    async def logout(self, token: str) -> None:
        """Revoke one token. Idempotent: an unknown or malformed token is a no-op."""
        digest = _token_digest(token)
        raw = None if digest is None else self._store.get("tokens", digest)
        if digest is None or raw is None:
            return
        user = json.loads(raw)["user"]
        async with self._locks.hold(user):
            await self._commit([*self._token_deletes(digest, user), *self._take_pending_purge()])
        log.info("user %s logged out token %s", user, digest.hex()[:12])

    async def logout_all(self, user: str) -> int:
        """Revoke every token of `user` (all devices); returns how many were still valid."""
        if not _valid_username(user):
            return 0
        async with self._locks.hold(user):
            now = self._now()
            writes: list[Write] = []
            live = 0
            for key, value in self._store.scan("user_tokens", prefix=_user_key(user)):
                digest = key[len(_user_key(user)) :]
                writes += self._token_deletes(digest, user)
                live += now < json.loads(value)["expires_ms"]
            if writes:
                await self._commit([*writes, *self._take_pending_purge()])
        log.info("user %s logged out everywhere (%d tokens)", user, live)
        return live

    async def purge_expired(self) -> int:
        """Delete every expired token (for the node's periodic housekeeping); returns how many."""
        now = self._now()
        self._pending_purge.clear()  # the scan below finds them all
        writes: list[Write] = []
        for digest, value in self._store.scan("tokens"):
            rec = json.loads(value)
            if now >= rec["expires_ms"]:
                writes += self._token_deletes(digest, rec["user"])
        if writes:
            await self._commit(writes)
        return len(writes) // 2

    async def _commit(self, writes: list[Write]) -> None:
        journal = self.journal
        if journal is None:
            await self._store.commit(writes)
            return
        # No await between record() and the store's queue put inside commit(): journal seqs
        # and versions reach LMDB in the order they were decided.
        extra = journal.record(writes)
        try:
            await self._store.commit([*writes, *extra])
        except asyncio.CancelledError:
            journal.committed(extra)  # queued already; cancelling does not undo a commit
            raise
        except BaseException:
            journal.failed(extra)
            raise
        journal.committed(extra)

    def _token_deletes(self, digest: bytes, user: str) -> list[Write]:
        return [Delete("tokens", digest), Delete("user_tokens", _user_key(user, digest))]

    def _take_pending_purge(self) -> list[Write]:
        pending, self._pending_purge = self._pending_purge, {}
        return [w for digest, user in pending.items() for w in self._token_deletes(digest, user)]

    # -- devices -------------------------------------------------------------------------------

    def devices(self, user: str) -> list[Device]:
        """Every device `user` has logged in from, by device id."""
        if not _valid_username(user):
            return []
        return [
            Device._from_record(v) for _, v in self._store.scan("devices", prefix=_user_key(user))
        ]

    def device(self, user: str, device: str) -> Device | None:
        if (
            not _valid_username(user)
            or not isinstance(device, str)
            or not _DEVICE.fullmatch(device)
        ):
            return None
        raw = self._store.get("devices", _user_key(user, device.encode("ascii")))
        return None if raw is None else Device._from_record(raw)

    def _now(self) -> int:
        return self._clock_ms()


def _valid_username(user: object) -> bool:
    return isinstance(user, str) and _USERNAME.fullmatch(user) is not None
