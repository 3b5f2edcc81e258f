"""Invites: round trip, expiry, forgery, the one-time key, and decoders that raise only
InviteError."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from crdt import b64decode, b64encode, canonical_json
from federation.errors import FederationError
from federation.invite import (
    INVITE_DOMAIN,
    Invite,
    InviteError,
    InviteToken,
    make_invite,
    mesh_id_for,
    parse_invite,
    verify_invite,
)

OPERATOR = SigningKey(b"\x01" * 32)
OTHER_OPERATOR = SigningKey(b"\x02" * 32)
NOW = 1_700_000_000_000

regions = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=64,
).filter(lambda s: not any(c.isspace() for c in s))
urls = st.lists(
    st.builds(
        "{}://{}:{}".format,
        st.sampled_from(["nats", "tls", "ws", "wss"]),
        st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True),
        st.integers(1, 65535),
    ),
    max_size=16,
)
expiries = st.integers(0, 2**53 - 1)
ids = st.binary(min_size=16, max_size=16)
seeds = st.binary(min_size=32, max_size=32)
SEED = b"\x09" * 32


def token_of(outer: dict[str, Any]) -> str:
    return b64encode(canonical_json(outer))


def outer_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(b64decode(token))
    return value


def resign(invite: dict[str, Any], key: SigningKey, seed: bytes = SEED) -> str:
    sig = key.sign(INVITE_DOMAIN + canonical_json(invite)).signature
    return token_of({"invite": invite, "seed": b64encode(seed), "sig": b64encode(bytes(sig))})


def good_token(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "region": "eu",
        "expires_ms": NOW + 3_600_000,
        "nats_urls": ["nats://127.0.0.1:4222"],
        "random16": b"\x07" * 16,
        "enrol_seed": SEED,
    }
    args.update(overrides)
    return make_invite(OPERATOR, **args)


def test_mesh_id_is_the_prefix_of_the_operator_key_hash() -> None:
    mesh = mesh_id_for(OPERATOR.verify_key)
    digest = hashlib.sha256(bytes(OPERATOR.verify_key)).digest()
    assert mesh == b64encode(digest)[:16]
    assert len(mesh) == 16
    assert mesh != mesh_id_for(OTHER_OPERATOR.verify_key)


@given(region=regions, exp=expiries, nats=urls, random16=ids, seed=seeds)
def test_invites_round_trip(
    region: str, exp: int, nats: list[str], random16: bytes, seed: bytes
) -> None:
    token = make_invite(
        OPERATOR, region=region, expires_ms=exp, nats_urls=nats, random16=random16, enrol_seed=seed
    )
    parsed = parse_invite(token)
    outer = outer_of(token)
    assert parsed == InviteToken(
        invite=Invite(
            mesh=mesh_id_for(OPERATOR.verify_key),
            operator=b64encode(bytes(OPERATOR.verify_key)),
            id=b64encode(random16),
            enrol_key=b64encode(bytes(SigningKey(seed).verify_key)),
            region=region,
            exp=exp,
            nats=tuple(nats),
            sig=outer["sig"],
        ),
        seed=seed,
        token=token,
    )
    assert parsed.enrol_signing_key() == SigningKey(seed)
    assert parsed.invite.body() == outer["invite"]
    # The public part verifies on its own, as an enrolment record carries it.
    assert verify_invite(outer["invite"], outer["sig"]) == parsed.invite
    assert parse_invite(token, now_ms=exp) == parsed  # valid up to and including exp
    assert parse_invite(f"  {token}\n") == parsed  # pasted with blanks around it


def test_the_secrets_stay_out_of_the_repr() -> None:
    token = good_token()
    text = repr(parse_invite(token))
    assert token not in text
    assert b64encode(SEED) not in text and repr(SEED) not in text
    assert "eu" in text  # the public part is still there to debug with


def test_the_public_part_holds_no_secret() -> None:
    outer = outer_of(good_token())
    public = canonical_json({"invite": outer["invite"], "sig": outer["sig"]})
    assert b64encode(SEED).encode() not in public and SEED not in public
    assert outer["invite"]["enrol_key"] == b64encode(bytes(SigningKey(SEED).verify_key))


def test_a_seed_that_is_not_the_invites_one_time_key_is_refused() -> None:
    invite = outer_of(good_token())["invite"]
    with pytest.raises(InviteError, match="seed does not match"):
        parse_invite(resign(invite, OPERATOR, seed=b"\x0a" * 32))


def test_a_version_1_token_without_a_one_time_key_is_refused() -> None:
    invite = {k: v for k, v in outer_of(good_token())["invite"].items() if k != "enrol_key"}
    invite["v"] = 1
    sig = OPERATOR.sign(INVITE_DOMAIN + canonical_json(invite)).signature
    with pytest.raises(InviteError):
        parse_invite(token_of({"invite": invite, "sig": b64encode(bytes(sig))}))


@given(exp=expiries, late=st.integers(1, 10**9))
def test_an_expired_invite_is_refused_when_now_is_given(exp: int, late: int) -> None:
    token = good_token(expires_ms=exp)
    with pytest.raises(InviteError, match=r"^expired$"):
        parse_invite(token, now_ms=exp + late)
    assert parse_invite(token).invite.exp == exp  # without a clock, expiry is the caller's business


def test_make_invite_refuses_bad_arguments() -> None:
    with pytest.raises(InviteError):
        good_token(random16=b"short")
    with pytest.raises(InviteError):
        good_token(enrol_seed=b"\x01" * 31)
    with pytest.raises(InviteError):
        good_token(region="")
    with pytest.raises(InviteError):
        good_token(region="has space")
    with pytest.raises(InviteError):
        good_token(expires_ms=-1)
    with pytest.raises(InviteError):
        good_token(nats_urls=["not a url"])
    with pytest.raises(InviteError):
        good_token(nats_urls=[f"nats://h{i}:4222" for i in range(17)])


def test_a_signature_by_another_operator_is_refused() -> None:
    invite = outer_of(good_token())["invite"]
    with pytest.raises(InviteError, match="bad invite signature"):
        parse_invite(resign(invite, OTHER_OPERATOR))


def test_an_invite_naming_a_mesh_other_than_its_operators_is_refused() -> None:
    # The other operator signs an invite that claims our mesh id: its key does not hash to it.
    invite = outer_of(
        make_invite(
            OTHER_OPERATOR,
            region="eu",
            expires_ms=NOW,
            nats_urls=[],
            random16=b"\x00" * 16,
            enrol_seed=SEED,
        )
    )["invite"]
    invite["mesh"] = mesh_id_for(OPERATOR.verify_key)
    with pytest.raises(InviteError, match="mesh id does not match"):
        parse_invite(resign(invite, OTHER_OPERATOR))


def test_the_signature_is_domain_separated() -> None:
    invite = outer_of(good_token())["invite"]
    sig = OPERATOR.sign(canonical_json(invite)).signature  # no "yanzi-invite-v1\0" prefix
    outer = {"invite": invite, "seed": b64encode(SEED), "sig": b64encode(bytes(sig))}
    with pytest.raises(InviteError, match="bad invite signature"):
        parse_invite(token_of(outer))
    with pytest.raises(InviteError, match="bad invite signature"):
        verify_invite(invite, outer["sig"])


def test_a_non_canonical_spelling_is_refused() -> None:
    outer = outer_of(good_token())
    spaced = json.dumps(outer, sort_keys=True).encode()  # valid JSON, not canonical
    with pytest.raises(InviteError, match="not canonical"):
        parse_invite(b64encode(spaced))


@given(
    field=st.sampled_from(["v", "mesh", "operator", "id", "enrol_key", "region", "exp", "nats"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=6,
    ),
)
def test_any_changed_field_is_refused(field: str, value: Any) -> None:
    outer = outer_of(good_token())
    if outer["invite"][field] == value:
        return
    outer["invite"][field] = value
    with pytest.raises(InviteError):
        parse_invite(token_of(outer))
    with pytest.raises(InviteError):
        verify_invite(outer["invite"], outer["sig"])
    del outer["invite"][field]
    with pytest.raises(InviteError):
        parse_invite(token_of(outer))


@given(
    field=st.sampled_from(["seed", "sig"]),
    value=st.none()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(max_size=90)
    | st.binary(max_size=70).map(b64encode),
)
def test_a_changed_or_missing_seed_or_signature_is_refused(field: str, value: Any) -> None:
    outer = outer_of(good_token())
    if outer[field] == value:
        return
    with pytest.raises(InviteError):
        parse_invite(token_of({**outer, field: value}))
    with pytest.raises(InviteError):
        parse_invite(token_of({k: v for k, v in outer.items() if k != field}))


@given(position=st.integers(0, 10_000), replacement=st.sampled_from("AQgw_-"))
def test_a_tampered_token_is_refused(position: int, replacement: str) -> None:
    token = good_token()
    position %= len(token)
    if token[position] == replacement:
        return
    with pytest.raises(InviteError):
        parse_invite(token[:position] + replacement + token[position + 1 :])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(st.text() | st.binary() | st.none() | st.integers())
def test_parse_invite_on_arbitrary_input_raises_only_invite_error(token: Any) -> None:
    with pytest.raises(InviteError):
        parse_invite(token)


@given(json_values)
def test_parse_invite_on_arbitrary_encoded_json_raises_only_invite_error(value: Any) -> None:
    token = b64encode(json.dumps(value).encode())
    with pytest.raises(InviteError):
        parse_invite(token)


@given(
    invite=st.fixed_dictionaries(
        {
            "v": json_values,
            "mesh": json_values,
            "operator": json_values,
            "id": json_values,
            "enrol_key": json_values,
            "region": json_values,
            "exp": json_values,
            "nats": json_values,
        }
    ),
    seed=json_values,
    sig=json_values,
)
def test_parse_invite_on_well_shaped_garbage_raises_only_invite_error(
    invite: dict[str, Any], seed: Any, sig: Any
) -> None:
    token = b64encode(json.dumps({"invite": invite, "seed": seed, "sig": sig}).encode())
    with pytest.raises(InviteError):
        parse_invite(token)
    with pytest.raises(InviteError):
        verify_invite(invite, sig)


@given(json_values, json_values)
def test_verify_invite_on_arbitrary_json_raises_only_invite_error(invite: Any, sig: Any) -> None:
    with pytest.raises(InviteError):
        verify_invite(invite, sig)


def test_invite_error_is_a_federation_error() -> None:
    assert issubclass(InviteError, FederationError)
