"""End-to-end encryption, format v1 (docs/e2ee.md, normative): pure functions, no I/O.

Device records and their self-signature (§1), safety numbers (§2), sender chains — a Megolm-style
hash ratchet (§3), encrypted message bodies (§4), key shares (§5), key requests (§6) and the
replay book (§7). Randomness and time come in as arguments, so every output is reproducible
(tests/sdk/e2ee_vectors.json holds known answers for the JS SDK to check as well).

Only primitives tweetnacl-js has: Ed25519 (`nacl.sign`), X25519 + XSalsa20-Poly1305 (`nacl.box`),
XSalsa20-Poly1305 (`nacl.secretbox`) and SHA-512 (`nacl.hash`). PyNaCl's `.ciphertext` is the
same bytes as tweetnacl's output (the 16-byte Poly1305 tag, then the encrypted message).

Every decoder here raises only `E2eeError` (with a stable `reason`) on bad input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import nacl.exceptions
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from crdt import DecodeError, b64decode, b64encode, canonical_json, strict_loads
from yanzi.errors import YanziError

RandomBytes = Callable[[int], bytes]

DEVICE_CONTEXT: Final = b"yanzi-device-v1\x00"
SAFETY_CONTEXT: Final = b"yanzi-safety-v1\x00"
ALG_CHAIN: Final = "yz.chain.v1"
ALG_SHARE: Final = "yz.share.v1"
ALG_KEYREQ: Final = "yz.keyreq.v1"
FORMAT_VERSION: Final = 1

KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
CHAIN_ID_BYTES: Final = 16
NONCE_BYTES: Final = 24
MAC_BYTES: Final = 16
#: Indices 0..99: a chain rotates after 100 encrypted bodies (§3), so a receiver derives at most
#: 99 steps forward from a share's start key and refuses anything beyond.
CHAIN_LENGTH: Final = 100
CHAIN_MAX_AGE_MS: Final = 7 * 24 * 3600 * 1000
#: The op body limit (docs/protocol.md §13.1): a share body above it is split (§5).
MAX_BODY_BYTES: Final = 64 * 1024
MAX_NAME_LEN: Final = 128
MAX_SAFE_INT: Final = 2**53 - 1

Reason = Literal[
    "malformed",  # not a well-formed v1 body/share/request
    "tampered",  # authentication failed, or the sealed binding does not match the op
    "bad_signature",  # a device record or op signature does not verify
    "unknown_chain",  # no key for this chain (yet)
    "before_share",  # the index precedes the share's start index
    "out_of_range",  # the index is beyond the chain's length
    "not_for_us",  # a key share without an entry for this device
    "too_large",  # the encrypted body would exceed the op body limit
]


class E2eeError(YanziError):
    """Something failed an end-to-end check or is not in format v1; `reason` says which."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason


# -- §1 device records ------------------------------------------------------------------------


def device_record_bytes(user: str, device: str, ed25519: bytes, x25519: bytes) -> bytes:
    """What a device signs: the context string, then canonical JSON of its record."""
    record = {
        "user": user,
        "device": device,
        "ed25519": b64encode(ed25519),
        "x25519": b64encode(x25519),
    }
    return DEVICE_CONTEXT + canonical_json(record)


def sign_device(user: str, device: str, signing_key: SigningKey, x25519: bytes) -> bytes:
    """`keys_sig`: the device's Ed25519 signature over its own record (64 bytes)."""
    ed25519 = bytes(signing_key.verify_key)
    return bytes(signing_key.sign(device_record_bytes(user, device, ed25519, x25519)).signature)


def verify_device(user: str, device: str, ed25519: bytes, x25519: bytes, keys_sig: bytes) -> None:
    """Raise E2eeError(bad_signature) unless `keys_sig` is the record's valid self-signature."""
    if len(ed25519) != KEY_BYTES or len(x25519) != KEY_BYTES:
        raise E2eeError("malformed", "device keys must be 32 bytes each")
    if len(keys_sig) != SIGNATURE_BYTES:
        raise E2eeError("bad_signature", "keys_sig must be a 64-byte Ed25519 signature")
    try:
        VerifyKey(ed25519).verify(device_record_bytes(user, device, ed25519, x25519), keys_sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise E2eeError("bad_signature", f"keys_sig of {user}/{device} does not verify") from exc


# -- §2 safety numbers --------------------------------------------------------------------------


def safety_number(
    user_a: str, keys_a: Iterable[bytes], user_b: str, keys_b: Iterable[bytes]
) -> str:
    """The 30-digit safety number of two users and the Ed25519 keys of their trusted devices;
    symmetric in (a, b)."""
    if user_a == user_b:
        raise E2eeError("malformed", "a safety number needs two different users")
    if user_b < user_a:  # Python compares str by code point, as §2 says
        user_a, keys_a, user_b, keys_b = user_b, keys_b, user_a, keys_a
    doc = {
        "a": {"user": user_a, "keys": sorted(b64encode(k) for k in keys_a)},
        "b": {"user": user_b, "keys": sorted(b64encode(k) for k in keys_b)},
    }
    digest = hashlib.sha512(SAFETY_CONTEXT + canonical_json(doc)).digest()
    groups = (int.from_bytes(digest[5 * i : 5 * i + 5], "big") % 100_000 for i in range(6))
    return " ".join(f"{g:05d}" for g in groups)


# -- §3 sender chains ---------------------------------------------------------------------------


def message_key(chain_key: bytes) -> bytes:
    """MK_i = SHA512(0x01 || CK_i)[:32]."""
    return hashlib.sha512(b"\x01" + chain_key).digest()[:KEY_BYTES]


def next_chain_key(chain_key: bytes) -> bytes:
    """CK_{i+1} = SHA512(0x02 || CK_i)[:32]."""
    return hashlib.sha512(b"\x02" + chain_key).digest()[:KEY_BYTES]


def chain_key_at(start_index: int, start_key: bytes, index: int) -> bytes:
    """CK_index, derived forward from CK_start; refuses what a chain cannot hold."""
    if index < start_index:
        raise E2eeError("before_share", f"index {index} precedes the share's start {start_index}")
    if index >= CHAIN_LENGTH:
        raise E2eeError("out_of_range", f"index {index} is beyond a chain's {CHAIN_LENGTH}")
    key = start_key
    for _ in range(index - start_index):
        key = next_chain_key(key)
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundChain:
    """This device's current chain in one conversation. `chain_key` is CK_index (earlier keys
    are gone); `start_key` (CK_0) is kept only to answer key requests (§6)."""

    conv: str
    chain_id: bytes
    index: int  # the next index to use
    chain_key: bytes
    start_key: bytes
    created_ms: int
    members: tuple[str, ...]  # the members when the chain started: who may ask for it (§6)
    stale: bool = False  # a membership change was observed: rotate before the next body

    @classmethod
    def start(
        cls, conv: str, members: Iterable[str], *, now_ms: int, random_bytes: RandomBytes
    ) -> OutboundChain:
        chain_id = _exact(random_bytes(CHAIN_ID_BYTES), CHAIN_ID_BYTES, "chain id")
        ck0 = _exact(random_bytes(KEY_BYTES), KEY_BYTES, "chain key")
        return cls(
            conv=conv,
            chain_id=chain_id,
            index=0,
            chain_key=ck0,
            start_key=ck0,
            created_ms=now_ms,
            members=tuple(sorted(set(members))),
        )

    def needs_rotation(self, now_ms: int, members: Iterable[str]) -> bool:
        """§3: after a membership change, 100 bodies, or a week (by the sender's clock)."""
        return (
            self.stale
            or self.index >= CHAIN_LENGTH
            or not 0 <= now_ms - self.created_ms < CHAIN_MAX_AGE_MS
            or tuple(sorted(set(members))) != self.members
        )

    def advance(self) -> tuple[int, bytes, OutboundChain]:
        """(index, MK_index, the chain moved one step on)."""
        if self.index >= CHAIN_LENGTH:
            raise E2eeError("out_of_range", "the chain is used up: rotate")
        mk = message_key(self.chain_key)
        return (
            self.index,
            mk,
            replace(self, index=self.index + 1, chain_key=next_chain_key(self.chain_key)),
        )

    def skip_to(self, index: int) -> OutboundChain:
        """Move on to `index`: after a restart, past indices that may have been used already."""
        if index <= self.index:
            return self
        if index >= CHAIN_LENGTH:
            return replace(self, index=CHAIN_LENGTH)  # used up: the next body rotates
        return replace(self, index=index, chain_key=chain_key_at(self.index, self.chain_key, index))

    def to_json(self) -> dict[str, Any]:
        return {
            "conv": self.conv,
            "chain": b64encode(self.chain_id),
            "i": self.index,
            "ck": b64encode(self.chain_key),
            "ck0": b64encode(self.start_key),
            "created_ms": self.created_ms,
            "members": list(self.members),
            "stale": self.stale,
        }

    @classmethod
    def from_json(cls, value: Any) -> OutboundChain:
        obj = _object(value, {"conv", "chain", "i", "ck", "ck0", "created_ms", "members", "stale"})
        return cls(
            conv=_name(obj["conv"], "conv"),
            chain_id=_b64(obj["chain"], CHAIN_ID_BYTES, "chain"),
            index=_index(obj["i"]),
            chain_key=_b64(obj["ck"], KEY_BYTES, "ck"),
            start_key=_b64(obj["ck0"], KEY_BYTES, "ck0"),
            created_ms=_int(obj["created_ms"], "created_ms"),
            members=tuple(_name(m, "member") for m in _list(obj["members"], "members")),
            stale=obj["stale"] is True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundChain:
    """Another device's chain as shared with us: `(sender, conv, chain) -> (s, CK_s)`."""

    sender_user: str
    sender_device: str
    conv: str
    chain_id: bytes
    start_index: int
    start_key: bytes

    @property
    def key(self) -> ChainKey:
        return chain_ref(self.sender_user, self.sender_device, self.conv, self.chain_id)

    def message_key(self, index: int) -> bytes:
        return message_key(chain_key_at(self.start_index, self.start_key, index))

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.sender_user,
            "device": self.sender_device,
            "conv": self.conv,
            "chain": b64encode(self.chain_id),
            "i": self.start_index,
            "ck": b64encode(self.start_key),
        }

    @classmethod
    def from_json(cls, value: Any) -> InboundChain:
        obj = _object(value, {"user", "device", "conv", "chain", "i", "ck"})
        return cls(
            sender_user=_name(obj["user"], "user"),
            sender_device=_name(obj["device"], "device"),
            conv=_name(obj["conv"], "conv"),
            chain_id=_b64(obj["chain"], CHAIN_ID_BYTES, "chain"),
            start_index=_index(obj["i"]),
            start_key=_b64(obj["ck"], KEY_BYTES, "ck"),
        )


ChainKey = tuple[str, str, str, str]
"""(sender user, sender device, conv, b64 chain id): where an inbound chain is filed."""


def chain_ref(sender_user: str, sender_device: str, conv: str, chain_id: bytes) -> ChainKey:
    return (sender_user, sender_device, conv, b64encode(chain_id))


# -- §4 message bodies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedBody:
    """A parsed `yz.chain.v1` body (still encrypted)."""

    chain_id: bytes
    index: int
    nonce: bytes
    ciphertext: bytes


def encrypt_body(
    conv: str, chain_id: bytes, index: int, key: bytes, app: bytes, nonce: bytes
) -> bytes:
    """The op body for application bytes `app` at chain index `index` with message key `key`."""
    _exact(nonce, NONCE_BYTES, "nonce")
    chain = b64encode(chain_id)
    plain = canonical_json({"conv": conv, "chain": chain, "i": index, "body": b64encode(app)})
    ct = SecretBox(_exact(key, KEY_BYTES, "message key")).encrypt(plain, nonce).ciphertext
    body = canonical_json(
        {
            "v": FORMAT_VERSION,
            "alg": ALG_CHAIN,
            "chain": chain,
            "i": index,
            "n": b64encode(nonce),
            "c": b64encode(ct),
        }
    )
    if len(body) > MAX_BODY_BYTES:
        raise E2eeError("too_large", f"the encrypted body would exceed {MAX_BODY_BYTES} bytes")
    return body


def body_alg(body: bytes) -> str | None:
    """The `alg` of an E2EE body, or None if `body` is not one (a plaintext message)."""
    if not body.startswith(b"{"):
        return None
    try:
        obj = strict_loads(body, max_bytes=MAX_BODY_BYTES)
    except DecodeError:
        return None
    alg = obj.get("alg") if isinstance(obj, dict) else None
    return alg if isinstance(alg, str) else None


def parse_body(body: bytes) -> SealedBody:
    obj = _object(_loads(body), {"v", "alg", "chain", "i", "n", "c"})
    _version(obj, ALG_CHAIN)
    ciphertext = _b64(obj["c"], None, "c")
    if len(ciphertext) < MAC_BYTES:
        raise E2eeError("malformed", "c is shorter than the authentication tag")
    return SealedBody(
        chain_id=_b64(obj["chain"], CHAIN_ID_BYTES, "chain"),
        index=_index(obj["i"]),
        nonce=_b64(obj["n"], NONCE_BYTES, "n"),
        ciphertext=ciphertext,
    )


def decrypt_body(conv: str, sealed: SealedBody, key: bytes) -> bytes:
    """Open a body with its message key and check its binding to `conv`, chain and index."""
    try:
        plain = SecretBox(_exact(key, KEY_BYTES, "message key")).decrypt(
            sealed.ciphertext, sealed.nonce
        )
    except nacl.exceptions.CryptoError:
        raise E2eeError("tampered", "the body does not authenticate") from None
    obj = _object(_loads(plain), {"conv", "chain", "i", "body"})
    if (obj["conv"], obj["chain"], obj["i"]) != (conv, b64encode(sealed.chain_id), sealed.index):
        raise E2eeError("tampered", "the body is bound to another conversation or position")
    return _b64(obj["body"], None, "body")


def decrypt(conv: str, body: bytes, chain: InboundChain) -> tuple[SealedBody, bytes]:
    """Parse and open `body` with an inbound chain (whose id must match)."""
    sealed = parse_body(body)
    if sealed.chain_id != chain.chain_id or conv != chain.conv:
        raise E2eeError("unknown_chain", "the body belongs to another chain")
    return sealed, decrypt_body(conv, sealed, chain.message_key(sealed.index))


# -- §5 key shares ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    user: str
    device: str
    x25519: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareEntry:
    user: str
    device: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareBody:
    chain_id: bytes
    shares: tuple[ShareEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRequest:
    chain_id: bytes
    sender_user: str
    sender_device: str


def seal_shares(
    *,
    conv: str,
    chain_id: bytes,
    start_index: int,
    start_key: bytes,
    sender_user: str,
    sender_device: str,
    sender_box: PrivateKey,
    recipients: Iterable[Recipient],
    random_bytes: RandomBytes,
) -> list[bytes]:
    """key_share bodies giving (start_index, start_key) to every recipient, one Box each.

    Recipients go in (user, device) order, one nonce drawn per entry in that order; entries
    are packed greedily into bodies of at most MAX_BODY_BYTES (§5)."""
    plain = canonical_json(
        {
            "conv": conv,
            "chain": b64encode(chain_id),
            "i": start_index,
            "ck": b64encode(_exact(start_key, KEY_BYTES, "chain key")),
            "sender_user": sender_user,
            "sender_device": sender_device,
        }
    )
    entries: list[bytes] = []
    for r in sorted(
        {(r.user, r.device): r for r in recipients}.values(), key=lambda r: (r.user, r.device)
    ):
        nonce = _exact(random_bytes(NONCE_BYTES), NONCE_BYTES, "nonce")
        box = Box(sender_box, PublicKey(_exact(r.x25519, KEY_BYTES, "x25519 key")))
        ct = box.encrypt(plain, nonce).ciphertext
        entries.append(
            canonical_json(
                {"user": r.user, "device": r.device, "n": b64encode(nonce), "c": b64encode(ct)}
            )
        )
    head = {"v": FORMAT_VERSION, "alg": ALG_SHARE, "chain": b64encode(chain_id)}
    # Canonical JSON of a list is "[" + ",".join(items) + "]", so a body's size is that of the
    # body with no shares plus its entries and commas: entries can be packed by length.
    empty = canonical_json({**head, "shares": []})
    bodies: list[bytes] = []
    batch: list[bytes] = []
    size = len(empty)
    for entry in entries:
        extra = len(entry) + (1 if batch else 0)
        if batch and size + extra > MAX_BODY_BYTES:
            bodies.append(_share_body(empty, batch))
            batch, size, extra = [], len(empty), len(entry)
        batch.append(entry)
        size += extra
    if batch:
        bodies.append(_share_body(empty, batch))
    return bodies


def _share_body(empty: bytes, entries: list[bytes]) -> bytes:
    at = empty.index(b'"shares":[]') + len(b'"shares":[')
    return empty[:at] + b",".join(entries) + empty[at:]


def key_request_body(chain_id: bytes, sender_user: str, sender_device: str) -> bytes:
    return canonical_json(
        {
            "v": FORMAT_VERSION,
            "alg": ALG_KEYREQ,
            "chain": b64encode(chain_id),
            "sender_user": sender_user,
            "sender_device": sender_device,
        }
    )


def parse_key_share(body: bytes) -> ShareBody | KeyRequest:
    """Decode a key_share op's body: a share (§5) or a key request (§6)."""
    obj = _loads(body)
    if not isinstance(obj, dict):
        raise E2eeError("malformed", "a key_share body must be a JSON object")
    if obj.get("alg") == ALG_KEYREQ:
        obj = _object(obj, {"v", "alg", "chain", "sender_user", "sender_device"})
        _version(obj, ALG_KEYREQ)
        return KeyRequest(
            chain_id=_b64(obj["chain"], CHAIN_ID_BYTES, "chain"),
            sender_user=_name(obj["sender_user"], "sender_user"),
            sender_device=_name(obj["sender_device"], "sender_device"),
        )
    obj = _object(obj, {"v", "alg", "chain", "shares"})
    _version(obj, ALG_SHARE)
    entries = []
    for raw in _list(obj["shares"], "shares"):
        entry = _object(raw, {"user", "device", "n", "c"})
        ct = _b64(entry["c"], None, "c")
        if len(ct) < MAC_BYTES:
            raise E2eeError("malformed", "a share's c is shorter than the authentication tag")
        entries.append(
            ShareEntry(
                user=_name(entry["user"], "user"),
                device=_name(entry["device"], "device"),
                nonce=_b64(entry["n"], NONCE_BYTES, "n"),
                ciphertext=ct,
            )
        )
    if not entries:
        raise E2eeError("malformed", "a share body needs at least one share")
    return ShareBody(chain_id=_b64(obj["chain"], CHAIN_ID_BYTES, "chain"), shares=tuple(entries))


def open_share(
    share: ShareBody,
    *,
    conv: str,
    author: str,
    author_device: str,
    me_user: str,
    me_device: str,
    my_box: PrivateKey,
    sender_x25519: bytes,
) -> InboundChain:
    """Our entry of a share op by (author, author_device) in `conv`, opened and checked."""
    entry = next((e for e in share.shares if (e.user, e.device) == (me_user, me_device)), None)
    if entry is None:
        raise E2eeError("not_for_us", f"no share for {me_user}/{me_device}")
    box = Box(my_box, PublicKey(_exact(sender_x25519, KEY_BYTES, "x25519 key")))
    try:
        plain = box.decrypt(entry.ciphertext, entry.nonce)
    except nacl.exceptions.CryptoError:
        raise E2eeError("tampered", "the share does not authenticate") from None
    obj = _object(_loads(plain), {"conv", "chain", "i", "ck", "sender_user", "sender_device"})
    bound = (obj["conv"], obj["chain"], obj["sender_user"], obj["sender_device"])
    if bound != (conv, b64encode(share.chain_id), author, author_device):
        raise E2eeError("tampered", "the share is bound to another conversation, chain or sender")
    return InboundChain(
        sender_user=author,
        sender_device=author_device,
        conv=conv,
        chain_id=share.chain_id,
        start_index=_index(obj["i"]),
        start_key=_b64(obj["ck"], KEY_BYTES, "ck"),
    )


# -- §7 replays ---------------------------------------------------------------------------------


class ReplayBook:
    """`(sender user, sender device, chain, i) -> op id` of every body decrypted so far; a
    second op id for the same position is a replay (§7)."""

    def __init__(self, entries: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._seen: dict[str, dict[int, str]] = {
            chain: {int(i): op for i, op in ops.items()} for chain, ops in (entries or {}).items()
        }

    @staticmethod
    def _key(sender_user: str, sender_device: str, chain_id: bytes) -> str:
        # Usernames, device ids and base64url have no spaces (docs/protocol.md §2.3).
        return f"{sender_user} {sender_device} {b64encode(chain_id)}"

    def record(
        self, sender_user: str, sender_device: str, chain_id: bytes, index: int, op_id: str
    ) -> str | None:
        """Record `op_id` at its position; the earlier op id if this one is a replay."""
        ops = self._seen.setdefault(self._key(sender_user, sender_device, chain_id), {})
        first = ops.setdefault(index, op_id)
        return None if first == op_id else first

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            chain: {str(i): op for i, op in sorted(ops.items())}
            for chain, ops in sorted(self._seen.items())
        }

    @classmethod
    def from_json(cls, value: Any) -> ReplayBook:
        if not isinstance(value, dict):
            raise E2eeError("malformed", "the replay book must be an object")
        for chain, ops in value.items():
            if not isinstance(ops, dict) or not all(
                isinstance(i, str) and i.isdigit() and isinstance(op, str) for i, op in ops.items()
            ):
                raise E2eeError("malformed", f"bad replay book entry {chain!r}")
        return cls(value)

    def __len__(self) -> int:
        return sum(len(ops) for ops in self._seen.values())


# -- decoding helpers ---------------------------------------------------------------------------


def _loads(data: bytes) -> Any:
    try:
        return strict_loads(data, max_bytes=MAX_BODY_BYTES)
    except DecodeError as exc:
        raise E2eeError("malformed", f"not strict JSON: {exc}") from None


def _object(value: Any, fields: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != fields:
        raise E2eeError("malformed", f"expected an object with exactly {sorted(fields)}")
    return value


def _version(obj: Mapping[str, Any], alg: str) -> None:
    if type(obj["v"]) is not int or obj["v"] != FORMAT_VERSION or obj["alg"] != alg:
        raise E2eeError("malformed", f"expected v {FORMAT_VERSION} and alg {alg}")


def _b64(value: Any, size: int | None, what: str) -> bytes:
    try:
        raw = b64decode(value, max_bytes=size or MAX_BODY_BYTES)
    except DecodeError:
        raise E2eeError("malformed", f"{what} must be unpadded base64url") from None
    if size is not None and len(raw) != size:
        raise E2eeError("malformed", f"{what} must be {size} bytes")
    return raw


def _index(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INT:
        raise E2eeError("malformed", "an index must be an integer from 0 to 2**53-1")
    return value


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise E2eeError("malformed", f"{what} must be an integer")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LEN:
        raise E2eeError("malformed", f"{what} must be a string of 1-{MAX_NAME_LEN} characters")
    return value


def _list(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise E2eeError("malformed", f"{what} must be a list")
    return value


def _exact(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise E2eeError("malformed", f"{what} must be {size} bytes")
    return value
