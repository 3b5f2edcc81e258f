"""Mesh invites: operator-signed, expiring, single-use tickets that let a new node enrol.

Pure: no I/O, no clock, no randomness (the current time, the 16 random id bytes and the 32-byte
one-time key seed come in as arguments).

Mesh identity
    A mesh is named by its operator's Ed25519 key:
    ``mesh_id = b64encode(sha256(operator public key bytes))[:16]`` (unpadded base64url, 96 bits).

Invite (canonical JSON object, all fields required, no others)::

    {"v": 2,
     "mesh": <mesh id>,
     "operator": <b64 operator public key, 32 bytes>,
     "id": <b64 of 16 random bytes; the single-use key>,
     "enrol_key": <b64 one-time Ed25519 public key, 32 bytes>,
     "region": <region the new node must enrol in>,
     "exp": <expiry, ms since the Unix epoch; valid while now_ms <= exp>,
     "nats": [<NATS URLs through which the mesh is reachable>]}

    The operator signs ``b"yanzi-invite-v1\\x00" + canonical_json(invite)`` (the prefix separates
    invite signatures from roster, envelope and op signatures made with related keys). The
    signed invite (the invite and its 64-byte signature) is public: an invited enrolment
    carries it as its ``invite`` and ``isig`` fields, so every roster holder sees it
    (`verify_invite` checks it).

Token (what ``yanzi mesh invite`` prints and ``yanzi join`` takes)::

    b64encode(canonical_json({"invite": {...}, "seed": <b64 32-byte seed>, "sig": ...}))

    ``seed`` is the Ed25519 seed of ``enrol_key``. It appears only here: Yanzi never writes it
    to a roster record, a file or a log. An enrolment is valid only with a signature by
    ``enrol_key`` over the enrolment itself (see `federation.roster`), so the token is the
    bearer secret and the public signed invite is not: seeing an enrolment does not let anyone
    make another.

``parse_invite`` accepts only that exact form (canonical JSON inside canonical base64url), so
one token has exactly one spelling. It checks the signature, that ``mesh`` is the id derived
from ``operator`` and that ``seed`` is the seed of ``enrol_key``. With ``now_ms`` it also
refuses an expired invite.

Single use is enforced by the roster (see ``federation.roster``), not here: among the
enrolments with one invite id, the first by ``(ts, node, record id)`` holds it, and revoking a
node that used it spends it for good. Only the token holder can make such enrolments, so only
the token holder can compete for the invite. What the holder can still do is backdate its
enrolment anywhere up to ``exp`` (the roster has no clock to check ``ts`` against): expiry is
enforced when a node joins (``parse_invite(..., now_ms=...)``), so keep the token secret and
short-lived, like a password.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NewType

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crdt import DecodeError, b64decode, b64encode, canonical_json, strict_loads
from federation.errors import FederationError

MeshId = NewType("MeshId", str)

INVITE_DOMAIN: Final = b"yanzi-invite-v1\x00"
# v2 added the one-time enrolment key; a v1 token (no key) is refused as "unsupported version".
INVITE_VERSION: Final = 2
MAX_TOKEN_CHARS: Final = 8192
MAX_URLS: Final = 16
MAX_URL_CHARS: Final = 512
MAX_REGION_CHARS: Final = 64
MAX_TS: Final = 2**53 - 1

_INVITE_KEYS: Final = frozenset(
    {"v", "mesh", "operator", "id", "enrol_key", "region", "exp", "nats"}
)
# Any printable, non-blank text: regions are operator-chosen labels ("cn-east", "eu-west-1").
# Lone surrogates are excluded because they have no UTF-8 form and cannot be signed.
_REGION = re.compile(rf"[^\s\x00-\x1f\x7f\ud800-\udfff]{{1,{MAX_REGION_CHARS}}}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\x00-\x1f\x7f\ud800-\udfff]+")


class InviteError(FederationError):
    """An invite token is malformed, forged, for another mesh, or expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    """A verified signed invite: the public part, safe to show and to put in the roster."""

    mesh: MeshId
    operator: str  # b64 operator public key
    id: str  # b64 of 16 random bytes
    enrol_key: str  # b64 one-time Ed25519 public key; its seed is only in the token
    region: str
    exp: int
    nats: tuple[str, ...]
    sig: str  # b64 operator signature over the invite

    def expired(self, now_ms: int) -> bool:
        return now_ms > self.exp

    def body(self) -> dict[str, Any]:
        """The invite object the operator signed (a fresh dict)."""
        return {
            "v": INVITE_VERSION,
            "mesh": self.mesh,
            "operator": self.operator,
            "id": self.id,
            "enrol_key": self.enrol_key,
            "region": self.region,
            "exp": self.exp,
            "nats": list(self.nats),
        }

    def enrol_verify_key(self) -> VerifyKey:
        return VerifyKey(b64decode(self.enrol_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteToken:
    """A parsed token: the verified invite and the one-time key that spends it.

    `seed` and `token` are secrets (whoever has them can enrol a node), so they stay out of
    the repr.
    """

    invite: Invite
    seed: bytes = field(repr=False)
    token: str = field(repr=False)  # the exact string it was parsed from, blanks stripped

    def enrol_signing_key(self) -> SigningKey:
        return SigningKey(self.seed)


def mesh_id_for(operator_pub: VerifyKey) -> MeshId:
    """The mesh named by an operator key: first 16 chars of b64(sha256(public key))."""
    return MeshId(b64encode(hashlib.sha256(bytes(operator_pub)).digest())[:16])


def valid_region(value: object) -> bool:
    return isinstance(value, str) and _REGION.fullmatch(value) is not None


def valid_urls(value: object) -> bool:
    """A list of at most MAX_URLS `scheme://...` strings without blanks or control characters."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_URLS
        and all(
            isinstance(url, str) and len(url) <= MAX_URL_CHARS and _URL.fullmatch(url) is not None
            for url in value
        )
    )


def valid_ts(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TS


def make_invite(
    operator_key: SigningKey,
    *,
    region: str,
    expires_ms: int,
    nats_urls: Sequence[str],
    random16: bytes,
    enrol_seed: bytes,
) -> str:
    """Sign an invite for one node in `region`, valid until `expires_ms`; return its token.

    `random16` becomes the public invite id; `enrol_seed` (32 secret random bytes, distinct
    from anything else) the one-time key that alone can spend the invite.
    """
    if len(random16) != 16:
        raise InviteError("an invite id needs exactly 16 random bytes")
    if len(enrol_seed) != 32:
        raise InviteError("an invite's one-time key needs exactly 32 random bytes")
    invite: dict[str, Any] = {
        "v": INVITE_VERSION,
        "mesh": mesh_id_for(operator_key.verify_key),
        "operator": b64encode(bytes(operator_key.verify_key)),
        "id": b64encode(random16),
        "enrol_key": b64encode(bytes(SigningKey(enrol_seed).verify_key)),
        "region": region,
        "exp": expires_ms,
        "nats": list(nats_urls),
    }
    _check_fields(invite)
    sig = operator_key.sign(INVITE_DOMAIN + canonical_json(invite)).signature
    outer = {"invite": invite, "seed": b64encode(enrol_seed), "sig": b64encode(bytes(sig))}
    token = b64encode(canonical_json(outer))
    if len(token) > MAX_TOKEN_CHARS:
        raise InviteError("invite too large (too many or too long NATS URLs)")
    return token


def parse_invite(token: object, *, now_ms: int | None = None) -> InviteToken:
    """Decode and verify an invite token; raises only InviteError.

    With `now_ms`, an invite whose `exp` is before `now_ms` is refused with "expired".
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InviteError("an invite token is a base64url string of at most 8192 characters")
    try:
        raw = b64decode(token.strip())
        outer = strict_loads(raw)
    except DecodeError as exc:
        raise InviteError(f"malformed invite token: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"invite", "seed", "sig"}:
        raise InviteError("malformed invite token: expected {invite, seed, sig}")
    if canonical_json(outer) != raw:
        raise InviteError("malformed invite token: not canonical JSON")
    invite = verify_invite(outer["invite"], outer["sig"])
    try:
        seed = b64decode(outer["seed"], max_bytes=32)
    except DecodeError as exc:
        raise InviteError(f"malformed invite token: {exc}") from None
    if len(seed) != 32:
        raise InviteError("malformed invite token: a one-time key seed is 32 bytes")
    if bytes(SigningKey(seed).verify_key) != bytes(invite.enrol_verify_key()):
        raise InviteError("invite token's seed does not match its one-time key")
    if now_ms is not None and invite.expired(now_ms):
        raise InviteError("expired")
    return InviteToken(invite=invite, seed=seed, token=token.strip())


def verify_invite(invite: object, sig: object) -> Invite:
    """Verify a signed invite (the public part of a token, as an enrolment carries it):
    its fields, its mesh id and the operator's signature. No expiry check. Raises only
    InviteError."""
    invite = _check_fields(invite)
    try:
        operator = VerifyKey(b64decode(invite["operator"], max_bytes=32))
        raw_sig = b64decode(sig, max_bytes=64)
    except DecodeError as exc:
        raise InviteError(f"malformed invite: {exc}") from None
    if len(raw_sig) != 64:
        raise InviteError("malformed invite: a signature is 64 bytes")
    if invite["mesh"] != mesh_id_for(operator):
        raise InviteError("invite mesh id does not match its operator key")
    try:
        operator.verify(INVITE_DOMAIN + canonical_json(invite), raw_sig)
    except BadSignatureError:
        raise InviteError("bad invite signature") from None
    return Invite(
        mesh=MeshId(invite["mesh"]),
        operator=invite["operator"],
        id=invite["id"],
        enrol_key=invite["enrol_key"],
        region=invite["region"],
        exp=invite["exp"],
        nats=tuple(invite["nats"]),
        sig=b64encode(raw_sig),
    )


def _check_fields(invite: object) -> dict[str, Any]:
    """`invite` itself if every field is well formed; raises InviteError."""
    if not isinstance(invite, dict) or set(invite) != _INVITE_KEYS:
        raise InviteError(f"an invite has exactly the fields {sorted(_INVITE_KEYS)}")
    if invite["v"] != INVITE_VERSION or isinstance(invite["v"], bool):
        raise InviteError(f"unsupported invite version {invite['v']!r}")
    if not isinstance(invite["mesh"], str) or len(invite["mesh"]) != 16:
        raise InviteError("invite mesh id must be 16 characters")
    for name in ("operator", "enrol_key"):
        if not _is_b64_bytes(invite[name], 32):
            raise InviteError(f"invite {name} must be a 32-byte key in base64url")
    if not _is_b64_bytes(invite["id"], 16):
        raise InviteError("invite id must be 16 bytes in base64url")
    if not valid_region(invite["region"]):
        raise InviteError("invite region must be 1-64 printable characters without blanks")
    if not valid_ts(invite["exp"]):
        raise InviteError("invite expiry must be an integer of ms since the epoch")
    if not valid_urls(invite["nats"]):
        raise InviteError(f"invite NATS URLs must be at most {MAX_URLS} scheme://host URLs")
    return invite


def _is_b64_bytes(value: object, size: int) -> bool:
    try:
        return len(b64decode(value, max_bytes=size)) == size
    except DecodeError:
        return False
