"""Mesh invites: operator-signed, expiring, single-use tickets that let a new node enrol.

Pure: no I/O, no clock, no randomness (the current time and the 16 random id bytes come in as
arguments).

Mesh identity
    A mesh is named by its operator's Ed25519 key:
    ``mesh_id = b64encode(sha256(operator public key bytes))[:16]`` (unpadded base64url, 96 bits).

Invite (canonical JSON object, all fields required, no others)::

    {"v": 1,
     "mesh": <mesh id>,
     "operator": <b64 operator public key, 32 bytes>,
     "id": <b64 of 16 random bytes; the single-use key>,
     "region": <region the new node must enrol in>,
     "exp": <expiry, ms since the Unix epoch; valid while now_ms <= exp>,
     "nats": [<NATS URLs through which the mesh is reachable>]}

    The operator signs ``b"yanzi-invite-v1\\x00" + canonical_json(invite)`` (the prefix separates
    invite signatures from roster, envelope and op signatures made with related keys).

Token (what ``yanzi mesh invite`` prints and ``yanzi join`` takes)::

    b64encode(canonical_json({"invite": {...}, "sig": <b64 64-byte signature>}))

``parse_invite`` accepts only that exact form (canonical JSON inside canonical base64url), so
one invite has exactly one token spelling. It checks the signature and that ``mesh`` is the id
derived from ``operator``. With ``now_ms`` it also refuses an expired invite.

Single use is enforced by the roster (see ``federation.roster``), not here: the token is a
bearer secret, and whoever enrols with it first — by the enrolment's ``(ts, node)`` — holds it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NewType

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crdt import DecodeError, b64decode, b64encode, canonical_json, strict_loads
from federation.errors import FederationError

MeshId = NewType("MeshId", str)

INVITE_DOMAIN: Final = b"yanzi-invite-v1\x00"
INVITE_VERSION: Final = 1
MAX_TOKEN_CHARS: Final = 8192
MAX_URLS: Final = 16
MAX_URL_CHARS: Final = 512
MAX_REGION_CHARS: Final = 64
MAX_TS: Final = 2**53 - 1

_INVITE_KEYS: Final = frozenset({"v", "mesh", "operator", "id", "region", "exp", "nats"})
# Any printable, non-blank text: regions are operator-chosen labels ("cn-east", "eu-west-1").
# Lone surrogates are excluded because they have no UTF-8 form and cannot be signed.
_REGION = re.compile(rf"[^\s\x00-\x1f\x7f\ud800-\udfff]{{1,{MAX_REGION_CHARS}}}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\x00-\x1f\x7f\ud800-\udfff]+")


class InviteError(FederationError):
    """An invite token is malformed, forged, for another mesh, or expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    """A verified invite. `token` is the exact string it was parsed from."""

    mesh: MeshId
    operator: str  # b64 operator public key
    id: str  # b64 of 16 random bytes
    region: str
    exp: int
    nats: tuple[str, ...]
    token: str

    def expired(self, now_ms: int) -> bool:
        return now_ms > self.exp


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
) -> str:
    """Sign an invite for one node in `region`, valid until `expires_ms`; return its token."""
    if len(random16) != 16:
        raise InviteError("an invite id needs exactly 16 random bytes")
    invite: dict[str, Any] = {
        "v": INVITE_VERSION,
        "mesh": mesh_id_for(operator_key.verify_key),
        "operator": b64encode(bytes(operator_key.verify_key)),
        "id": b64encode(random16),
        "region": region,
        "exp": expires_ms,
        "nats": list(nats_urls),
    }
    _check_fields(invite)
    sig = operator_key.sign(INVITE_DOMAIN + canonical_json(invite)).signature
    token = b64encode(canonical_json({"invite": invite, "sig": b64encode(bytes(sig))}))
    if len(token) > MAX_TOKEN_CHARS:
        raise InviteError("invite too large (too many or too long NATS URLs)")
    return token


def parse_invite(token: object, *, now_ms: int | None = None) -> Invite:
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
    if not isinstance(outer, dict) or set(outer) != {"invite", "sig"}:
        raise InviteError("malformed invite token: expected {invite, sig}")
    if canonical_json(outer) != raw:
        raise InviteError("malformed invite token: not canonical JSON")
    invite = outer["invite"]
    _check_fields(invite)
    try:
        operator = VerifyKey(b64decode(invite["operator"], max_bytes=32))
        sig = b64decode(outer["sig"], max_bytes=64)
    except DecodeError as exc:
        raise InviteError(f"malformed invite token: {exc}") from None
    if len(sig) != 64:
        raise InviteError("malformed invite token: a signature is 64 bytes")
    if invite["mesh"] != mesh_id_for(operator):
        raise InviteError("invite mesh id does not match its operator key")
    try:
        operator.verify(INVITE_DOMAIN + canonical_json(invite), sig)
    except BadSignatureError:
        raise InviteError("bad invite signature") from None
    parsed = Invite(
        mesh=MeshId(invite["mesh"]),
        operator=invite["operator"],
        id=invite["id"],
        region=invite["region"],
        exp=invite["exp"],
        nats=tuple(invite["nats"]),
        token=token.strip(),
    )
    if now_ms is not None and parsed.expired(now_ms):
        raise InviteError("expired")
    return parsed


def _check_fields(invite: object) -> None:
    if not isinstance(invite, dict) or set(invite) != _INVITE_KEYS:
        raise InviteError(f"an invite has exactly the fields {sorted(_INVITE_KEYS)}")
    if invite["v"] != INVITE_VERSION or isinstance(invite["v"], bool):
        raise InviteError(f"unsupported invite version {invite['v']!r}")
    if not isinstance(invite["mesh"], str) or len(invite["mesh"]) != 16:
        raise InviteError("invite mesh id must be 16 characters")
    if not isinstance(invite["operator"], str) or len(invite["operator"]) != 43:
        raise InviteError("invite operator must be a 32-byte key in base64url")
    if not isinstance(invite["id"], str) or len(invite["id"]) != 22:
        raise InviteError("invite id must be 16 bytes in base64url")
    try:
        b64decode(invite["id"], max_bytes=16)
    except DecodeError:
        raise InviteError("invite id must be 16 bytes in base64url") from None
    if not valid_region(invite["region"]):
        raise InviteError("invite region must be 1-64 printable characters without blanks")
    if not valid_ts(invite["exp"]):
        raise InviteError("invite expiry must be an integer of ms since the epoch")
    if not valid_urls(invite["nats"]):
        raise InviteError(f"invite NATS URLs must be at most {MAX_URLS} scheme://host URLs")
