"""The roster CRDT: order- and duplication-independent view, single use, revocation, forgeries,
and what a roster holder can (not) do with the invites it sees."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from crdt import b64decode, b64encode, canonical_json
from crdt.signing import node_id_for
from federation.errors import FederationError
from federation.invite import make_invite, mesh_id_for, parse_invite
from federation.roster import (
    ENROL_DOMAIN,
    ROSTER_DOMAIN,
    MemberInfo,
    Roster,
    RosterError,
    decode_record,
    encode_record,
    enrol_record,
    genesis_record,
    info_record,
    record_id,
    revoke_record,
    signing_bytes,
)

OPERATOR = SigningKey(b"\x01" * 32)
OTHER_OPERATOR = SigningKey(b"\x02" * 32)
MESH = mesh_id_for(OPERATOR.verify_key)
NODES = [SigningKey(bytes([0x10 + i]) * 32) for i in range(6)]
IDS = [node_id_for(k.verify_key) for k in NODES]
REGIONS = ["eu", "cn-east", "us"]
T0 = 1_700_000_000_000


def invite(
    region: str = "eu", exp: int = T0 + 3_600_000, n: int = 0, operator: SigningKey = OPERATOR
) -> str:
    return make_invite(
        operator,
        region=region,
        expires_ms=exp,
        nats_urls=["nats://127.0.0.1:4222"],
        random16=bytes([n]) * 16,
        enrol_seed=bytes([0x80 + n]) * 32,
    )


def url(node: int, version: int = 0) -> list[str]:
    return [f"http://n{node}.example:{8000 + version}"]


def genesis(node: int = 0, ts: int = T0) -> dict[str, Any]:
    return genesis_record(OPERATOR, NODES[node], region="eu", urls=url(node), ts=ts)


def fresh(*records: dict[str, Any]) -> Roster:
    roster = Roster(MESH, OPERATOR.verify_key)
    for record in records:
        assert roster.add(record)
    return roster


def view(roster: Roster) -> Any:
    return (
        roster.members(),
        roster.digest(),
        roster.records(),
        sorted(roster.ids()),
        [roster.is_revoked(n) for n in IDS],
        [roster.is_member(n) for n in IDS],
    )


def sign(record: dict[str, Any], *keys: tuple[str, SigningKey]) -> dict[str, Any]:
    """Sign a hand-built record (so tests can build records the helpers refuse to make);
    `esig` is made with the enrolment domain, `nsig` and `osig` with the roster's."""
    signed = dict(record)
    for field, key in keys:
        domain = ENROL_DOMAIN if field == "esig" else ROSTER_DOMAIN
        signed[field] = b64encode(bytes(key.sign(signing_bytes(record, domain)).signature))
    return signed


def one_time_key(token: str) -> SigningKey:
    return parse_invite(token).enrol_signing_key()


def unsigned(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("nsig", "osig", "esig")}


# ---------------------------------------------------------------------------------------------
# Generated histories
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    records: list[dict[str, Any]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """A genesis, several invites (some used by two nodes), info updates and revocations."""
    records = [genesis(0, ts=T0)]
    n_invites = draw(st.integers(1, 4))
    tokens = [
        (
            invite(region=draw(st.sampled_from(REGIONS)), exp=T0 + 10_000, n=i),
            i,
        )
        for i in range(n_invites)
    ]
    for node in range(1, len(NODES)):
        if not draw(st.booleans()):
            continue
        token, _ = draw(st.sampled_from(tokens))
        region = parse_region(token)
        ts = T0 + draw(st.integers(0, 10_000))
        records.append(enrol_record(NODES[node], token, region=region, urls=url(node), ts=ts))
    for _ in range(draw(st.integers(0, 6))):
        node = draw(st.integers(0, len(NODES) - 1))
        region = draw(st.sampled_from(REGIONS))
        ts = T0 + draw(st.integers(-100, 20_000))
        version = draw(st.integers(1, 3))
        records.append(
            info_record(NODES[node], MESH, region=region, urls=url(node, version), ts=ts)
        )
    for _ in range(draw(st.integers(0, 2))):
        node = draw(st.integers(0, len(NODES) - 1))
        records.append(revoke_record(OPERATOR, MESH, IDS[node], ts=T0 + draw(st.integers(0, 99))))
    return History(records)


def parse_region(token: str) -> str:
    return parse_invite(token).invite.region


@given(history=histories(), data=st.data())
def test_the_view_is_independent_of_arrival_order_and_duplication(
    history: History, data: st.DataObject
) -> None:
    reference = Roster(MESH, OPERATOR.verify_key)
    for record in history.records:
        reference.add(record)

    shuffled = data.draw(st.permutations(history.records))
    repeats = data.draw(st.lists(st.sampled_from(history.records), max_size=10))
    replica = Roster(MESH, OPERATOR.verify_key)
    for record in [*shuffled, *repeats]:
        replica.add(copy.deepcopy(record))  # a copy: equality, not identity, must matter
    assert view(replica) == view(reference)


@given(history=histories(), split=st.data())
def test_anti_entropy_by_missing_for_converges(history: History, split: st.DataObject) -> None:
    a, b = Roster(MESH, OPERATOR.verify_key), Roster(MESH, OPERATOR.verify_key)
    for record in history.records:
        for roster in split.draw(st.sampled_from([[a], [b], [a, b]])):
            roster.add(record)
    for record in a.missing_for(b.ids()):
        assert b.add(record)
    for record in b.missing_for(a.ids()):
        assert a.add(record)
    assert a.digest() == b.digest()
    assert a.members() == b.members()
    assert a.missing_for(b.ids()) == []


@given(history=histories())
def test_the_view_matches_the_rules(history: History) -> None:
    """An independent restatement of the view: single use (spent for good by revoking any
    node that used it), earliest enrolment, LWW urls."""
    roster = Roster(MESH, OPERATOR.verify_key)
    for record in history.records:
        roster.add(record)
    records = [(r, record_id(r)) for r in history.records]
    revoked = {r["node"] for r, _ in records if r["t"] == "revoke"}
    by_invite: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for r, rid in records:
        if r["t"] == "enrol" and r["invite"] is not None:
            by_invite.setdefault(r["invite"]["id"], []).append((r, rid))
    winners = {
        min(group, key=lambda e: (e[0]["ts"], e[0]["node"], e[1]))[1]
        for group in by_invite.values()
        if not any(r["node"] in revoked for r, _ in group)
    }
    expected: dict[str, MemberInfo] = {}
    for node in set(IDS) - revoked:
        counting = [
            (r, rid)
            for r, rid in records
            if r["t"] == "enrol" and r["node"] == node and (r["invite"] is None or rid in winners)
        ]
        if not counting:
            continue
        first, first_id = min(counting, key=lambda e: (e[0]["ts"], e[1]))
        candidates = [(first["ts"], first_id, first["urls"])] + [
            (r["ts"], rid, r["urls"])
            for r, rid in records
            if r["t"] == "info" and r["node"] == node and r["region"] == first["region"]
        ]
        urls = max(candidates)[2]
        expected[node] = MemberInfo(
            region=first["region"], urls=tuple(urls), enrolled_ts=first["ts"]
        )
    assert roster.members() == expected


# ---------------------------------------------------------------------------------------------
# Single use, revocation, info
# ---------------------------------------------------------------------------------------------


def test_genesis_enrols_the_operators_node() -> None:
    roster = fresh(genesis())
    assert roster.members() == {IDS[0]: MemberInfo(region="eu", urls=tuple(url(0)), enrolled_ts=T0)}
    assert roster.is_member(IDS[0]) and not roster.is_member(IDS[1])


@pytest.mark.parametrize("reverse", [False, True])
def test_an_invite_enrols_only_the_earliest_of_two_nodes(reverse: bool) -> None:
    token = invite()
    early = enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0 + 5)
    late = enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0 + 6)
    roster = fresh(genesis(), *([late, early] if reverse else [early, late]))
    assert roster.is_member(IDS[2])
    assert not roster.is_member(IDS[1])
    assert len(roster) == 3  # the loser is kept: the set only grows


def test_on_equal_timestamps_the_smaller_node_id_holds_the_invite() -> None:
    token = invite()
    a = enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0)
    b = enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0)
    roster = fresh(b, a)
    winner = min(IDS[1], IDS[2])
    assert set(roster.members()) == {winner}


def test_a_node_that_lost_its_invite_is_not_made_a_member_by_info_records() -> None:
    token = invite()
    roster = fresh(
        enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0),
        enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0 + 1),
        info_record(NODES[2], MESH, region="eu", urls=url(2, 1), ts=T0 + 2),
    )
    assert set(roster.members()) == {IDS[1]}


def test_revoke_removes_a_member_whatever_the_order() -> None:
    enrol = enrol_record(NODES[1], invite(), region="eu", urls=url(1), ts=T0 + 1)
    revoke = revoke_record(OPERATOR, MESH, IDS[1], ts=T0 + 2)
    before = fresh(genesis(), enrol)
    assert before.is_member(IDS[1])
    assert before.add(revoke)
    assert not before.is_member(IDS[1]) and before.is_revoked(IDS[1])
    early_revoke = fresh(revoke, genesis(), enrol)  # revocation arrives first
    assert view(early_revoke) == view(before)
    assert set(before.members()) == {IDS[0]}
    assert before.revoked() == {IDS[1]}


def test_a_revoked_nodes_invite_stays_spent() -> None:
    token = invite()
    roster = fresh(
        enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0 + 1),
        revoke_record(OPERATOR, MESH, IDS[1], ts=T0 + 2),
        enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0 + 3),
    )
    assert roster.members() == {}


def test_info_updates_urls_last_writer_wins_but_never_the_region() -> None:
    enrol = enrol_record(NODES[1], invite(region="cn-east"), region="cn-east", urls=url(1), ts=T0)
    newer = info_record(NODES[1], MESH, region="cn-east", urls=url(1, 2), ts=T0 + 20)
    older = info_record(NODES[1], MESH, region="cn-east", urls=url(1, 1), ts=T0 + 10)
    moved = info_record(NODES[1], MESH, region="us", urls=url(1, 3), ts=T0 + 30)
    stale = info_record(NODES[1], MESH, region="cn-east", urls=url(1, 4), ts=T0 - 1)
    roster = fresh(newer, moved, enrol, stale, older)
    assert roster.members()[IDS[1]] == MemberInfo(
        region="cn-east", urls=tuple(url(1, 2)), enrolled_ts=T0
    )


def test_a_duplicate_is_reported_and_changes_nothing() -> None:
    roster = fresh(genesis())
    before = view(roster)
    assert roster.add(genesis()) is False
    assert roster.add(decode_record(encode_record(genesis()))) is False
    assert view(roster) == before


def test_records_come_in_canonical_order_and_round_trip() -> None:
    g = genesis(ts=T0 + 5)
    e = enrol_record(NODES[1], invite(), region="eu", urls=url(1), ts=T0)
    roster = fresh(g, e)
    assert roster.records() == [e, g]
    assert [decode_record(encode_record(r)) for r in roster.records()] == [e, g]
    assert roster.missing_for({record_id(e)}) == [g]
    assert record_id(g) in roster


def test_the_digest_names_the_record_set() -> None:
    empty = Roster(MESH, OPERATOR.verify_key)
    one = fresh(genesis())
    two = fresh(genesis(), genesis(1, ts=T0 + 1))
    assert len({empty.digest(), one.digest(), two.digest()}) == 3
    assert b64decode(one.digest()) and len(b64decode(one.digest())) == 32


def test_a_roster_needs_a_matching_mesh_and_operator() -> None:
    with pytest.raises(RosterError):
        Roster(mesh_id_for(OTHER_OPERATOR.verify_key), OPERATOR.verify_key)
    assert Roster(MESH, b64encode(bytes(OPERATOR.verify_key))).mesh_id == MESH
    with pytest.raises(RosterError):
        Roster(MESH, "not-a-key")


# ---------------------------------------------------------------------------------------------
# What a roster holder can do with the invites it sees: nothing
# ---------------------------------------------------------------------------------------------


def test_no_roster_record_holds_the_tokens_secret() -> None:
    token = invite(n=3)
    seed = parse_invite(token).seed
    roster = fresh(genesis(), enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0))
    wire = b"".join(encode_record(r) for r in roster.records())
    assert seed not in wire and b64encode(seed).encode() not in wire
    assert token.encode() not in wire


def attempts(seen: dict[str, Any], thief: int, ts: int) -> list[dict[str, Any]]:
    """Every enrolment of node `thief` a roster holder can build from a seen enrolment: the
    signed invite copied, `ts` of its choice, and for `esig` whatever it can copy or sign."""
    fields = {**unsigned(seen), "node": IDS[thief], "urls": url(thief), "ts": ts}
    own = sign(fields, ("nsig", NODES[thief]))
    forged = [seen["esig"], seen["nsig"], seen["isig"]]
    forged += [sign(fields, ("esig", key))["esig"] for key in (NODES[thief], OPERATOR)]
    forged += [sign(unsigned(seen), ("esig", NODES[thief]))["esig"]]
    return [{**own, "esig": esig} for esig in forged]


@given(
    thief=st.integers(2, len(NODES) - 1),
    ts=st.integers(0, T0 + 3_600_000),
    revoked=st.booleans(),
)
def test_a_roster_holder_cannot_enrol_another_key_with_a_seen_invite(
    thief: int, ts: int, revoked: bool
) -> None:
    """A member, or an ex-member that kept a copy of the roster, sees the enrolment that used
    an invite. Whatever `ts` it claims (backdated or not), it cannot make a competing one."""
    used = enrol_record(NODES[1], invite(n=3), region="eu", urls=url(1), ts=T0 + 100)
    roster = fresh(genesis(), used)
    if revoked:
        roster.add(revoke_record(OPERATOR, MESH, IDS[thief], ts=T0 + 50))
    before = view(roster)
    seen = next(r for r in roster.records() if r["t"] == "enrol" and r["node"] == IDS[1])
    for record in attempts(seen, thief, ts):
        with pytest.raises(RosterError, match="esig"):
            roster.add(record)
    assert view(roster) == before
    assert roster.is_member(IDS[1])  # the node that really used the invite keeps it


def test_the_enrolment_signature_binds_the_node_ts_region_and_urls() -> None:
    used = enrol_record(NODES[1], invite(n=3), region="eu", urls=url(1), ts=T0 + 100)
    for change in ({"ts": T0}, {"urls": url(1, 1)}, {"node": IDS[2]}):
        keys = NODES[2] if "node" in change else NODES[1]
        record = {**sign({**unsigned(used), **change}, ("nsig", keys)), "esig": used["esig"]}
        with pytest.raises(RosterError, match="esig"):
            Roster(MESH, OPERATOR.verify_key).add(record)


def test_a_revoked_node_that_kept_its_token_cannot_come_back_with_a_new_key() -> None:
    """The one place the token still matters after use: its holder. Revocation spends the
    invite for good, so an earlier-dated enrolment of a fresh key enrols nobody."""
    token = invite()
    used = enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0 + 100)
    revoke = revoke_record(OPERATOR, MESH, IDS[1], ts=T0 + 200)
    comeback = enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0)
    roster = fresh(genesis(), used, revoke, comeback)
    assert set(roster.members()) == {IDS[0]}
    assert view(fresh(comeback, revoke, used, genesis())) == view(roster)


def test_revoking_any_node_that_used_an_invite_spends_it() -> None:
    token = invite()
    holder = enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0)
    second = enrol_record(NODES[2], token, region="eu", urls=url(2), ts=T0 + 1)
    assert set(fresh(holder, second).members()) == {IDS[1]}
    revoked = fresh(holder, second, revoke_record(OPERATOR, MESH, IDS[2], ts=T0 + 2))
    assert revoked.members() == {}


def test_the_token_holder_can_still_backdate_within_the_invites_validity() -> None:
    """The limit that remains (see the module docstring): the roster has no clock, so an
    enrolment made after expiry but dated before it is valid here; `yanzi join` refuses an
    expired token (`parse_invite(..., now_ms=...)`, tested in test_meshfiles)."""
    token = invite(exp=T0 + 10)
    backdated = enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0 + 10)
    assert fresh(backdated).is_member(IDS[1])
    with pytest.raises(RosterError, match="expiry"):
        enrol_record(NODES[1], token, region="eu", urls=url(1), ts=T0 + 11)


# ---------------------------------------------------------------------------------------------
# Forgeries: each raises RosterError and changes nothing
# ---------------------------------------------------------------------------------------------


def enrol_fields(n: int, token: str | None = None, **overrides: Any) -> dict[str, Any]:
    """An unsigned invited enrolment of node `n` (the public part of `token`, as the roster
    would show it)."""
    public = parse_invite(token or invite()).invite
    record: dict[str, Any] = {
        "t": "enrol",
        "mesh": MESH,
        "node": IDS[n],
        "region": public.region,
        "urls": url(n),
        "ts": T0,
        "invite": public.body(),
        "isig": public.sig,
    }
    record.update(overrides)
    return record


def invited(n: int, token: str | None = None, **overrides: Any) -> dict[str, Any]:
    """An invited enrolment signed as the token holder would: node key and one-time key."""
    token = token or invite()
    record = enrol_fields(n, token, **overrides)
    return sign(record, ("nsig", NODES[n]), ("esig", one_time_key(token)))


def genesis_fields(n: int, **overrides: Any) -> dict[str, Any]:
    record = {k: v for k, v in enrol_fields(n).items() if k != "isig"}
    return {**record, "invite": None, **overrides}


def flip_sig(record: dict[str, Any], field: str) -> dict[str, Any]:
    raw = bytearray(b64decode(record[field]))
    raw[0] ^= 1
    return {**record, field: b64encode(bytes(raw))}


def test_the_forgery_helpers_make_valid_records_when_not_tampered_with() -> None:
    """So that each forgery below is refused for its own defect, not a helper's slip."""
    assert invited(1) == enrol_record(NODES[1], invite(), region="eu", urls=url(1), ts=T0)
    assert fresh(invited(1), sign(genesis_fields(2), ("nsig", NODES[2]), ("osig", OPERATOR)))


FORGERIES: dict[str, dict[str, Any]] = {
    "bad node signature": flip_sig(genesis(1), "nsig"),
    "bad operator signature": flip_sig(genesis(1), "osig"),
    "field changed after signing": {**genesis(1), "region": "us"},
    "urls changed after signing": {
        **info_record(NODES[0], MESH, region="eu", urls=url(0, 1), ts=T0 + 1),
        "urls": url(0, 2),
    },
    "genesis signed by another operator": sign(
        genesis_fields(1), ("nsig", NODES[1]), ("osig", OTHER_OPERATOR)
    ),
    "genesis of another mesh": genesis_record(
        OTHER_OPERATOR, NODES[1], region="eu", urls=url(1), ts=T0
    ),
    "genesis without operator signature": sign(genesis_fields(1), ("nsig", NODES[1])),
    "genesis with a one-time key signature": sign(
        genesis_fields(1), ("nsig", NODES[1]), ("osig", OPERATOR), ("esig", NODES[1])
    ),
    "revocation signed by a node": sign(
        {"t": "revoke", "mesh": MESH, "node": IDS[0], "ts": T0}, ("osig", NODES[0])
    ),
    "revocation of another mesh": revoke_record(
        OTHER_OPERATOR, mesh_id_for(OTHER_OPERATOR.verify_key), IDS[0], ts=T0
    ),
    "info signed by another node": sign(
        {"t": "info", "mesh": MESH, "node": IDS[0], "region": "eu", "urls": url(0), "ts": T0},
        ("nsig", NODES[1]),
    ),
    "invite from another operator": invited(1, invite(operator=OTHER_OPERATOR)),
    "enrolment after the invite expired": invited(1, invite(exp=T0 + 10), ts=T0 + 11),
    "region other than the invite's": invited(1, invite(region="cn-east"), region="eu"),
    "invited enrolment also signed by the operator": sign(
        enrol_fields(1),
        ("nsig", NODES[1]),
        ("esig", one_time_key(invite())),
        ("osig", OPERATOR),
    ),
    "invited enrolment signed by another node": sign(
        enrol_fields(1), ("nsig", NODES[2]), ("esig", one_time_key(invite()))
    ),
    "invited enrolment without a one-time key signature": sign(enrol_fields(1), ("nsig", NODES[1])),
    "one-time key signature by the node key": sign(
        enrol_fields(1), ("nsig", NODES[1]), ("esig", NODES[1])
    ),
    "one-time key signature by another invite's key": sign(
        enrol_fields(1), ("nsig", NODES[1]), ("esig", one_time_key(invite(n=5)))
    ),
    "one-time key signature without the enrolment domain": {
        **sign(enrol_fields(1), ("nsig", NODES[1])),
        "esig": b64encode(
            bytes(one_time_key(invite()).sign(signing_bytes(enrol_fields(1))).signature)
        ),
    },
    "bad one-time key signature": flip_sig(invited(1), "esig"),
    "bad invite signature": invited(1, isig=flip_sig(enrol_fields(1), "isig")["isig"]),
    "invite signature missing": sign(
        {k: v for k, v in enrol_fields(1).items() if k != "isig"},
        ("nsig", NODES[1]),
        ("esig", one_time_key(invite())),
    ),
    "invite changed after the operator signed it": invited(
        1, invite=enrol_fields(1)["invite"] | {"exp": T0 + 7_200_000}
    ),
    "invite carrying its seed": invited(
        1, invite=enrol_fields(1)["invite"] | {"seed": b64encode(b"\x80" * 32)}
    ),
    "invite as a whole token": invited(1, invite=invite()),
    "garbage invite": invited(1, invite="garbage"),
    "unknown type": invited(1, t="promote"),
    "extra field": invited(1, note="hi"),
    "negative ts": invited(1, ts=-1),
    "boolean ts": invited(1, ts=True),
    "bad node id": sign(enrol_fields(1, node="n1"), ("nsig", NODES[1])),
    "blank region": invited(1, region=" "),
    "bad url": invited(1, urls=["no scheme"]),
    "urls not a list": invited(1, urls="http://x"),
    "signature not base64url": {**genesis(1), "nsig": "!!"},
    "short signature": {**genesis(1), "nsig": b64encode(b"\x00" * 10)},
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_record_raises_and_changes_nothing(name: str) -> None:
    roster = fresh(genesis(), enrol_record(NODES[3], invite(n=9), region="eu", urls=url(3), ts=T0))
    before = view(roster)
    with pytest.raises(RosterError):
        roster.add(FORGERIES[name])
    assert view(roster) == before


def test_the_builders_refuse_to_make_invalid_records() -> None:
    with pytest.raises(RosterError):
        enrol_record(NODES[1], invite(region="cn-east"), region="eu", urls=url(1), ts=T0)
    with pytest.raises(RosterError):
        enrol_record(NODES[1], invite(exp=T0), region="eu", urls=url(1), ts=T0 + 1)
    with pytest.raises(RosterError):
        enrol_record(NODES[1], "garbage", region="eu", urls=url(1), ts=T0)
    with pytest.raises(RosterError):
        revoke_record(OPERATOR, mesh_id_for(OTHER_OPERATOR.verify_key), IDS[1], ts=T0)
    with pytest.raises(RosterError):
        info_record(NODES[1], MESH, region="eu", urls=["x"], ts=T0)


VALID = [
    genesis(1),
    enrol_record(NODES[2], invite(), region="eu", urls=url(2), ts=T0),
    revoke_record(OPERATOR, MESH, IDS[3], ts=T0),
    info_record(NODES[2], MESH, region="eu", urls=url(2), ts=T0),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(record=st.sampled_from(VALID), data=st.data(), value=json_values)
def test_changing_or_dropping_any_field_is_refused(
    record: dict[str, Any], data: st.DataObject, value: Any
) -> None:
    field = data.draw(st.sampled_from(sorted(record)))
    roster = Roster(MESH, OPERATOR.verify_key)
    if record[field] != value:
        with pytest.raises(RosterError):
            roster.add({**record, field: value})
    with pytest.raises(RosterError):
        roster.add({k: v for k, v in record.items() if k != field})
    assert len(roster) == 0


@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=9)
    | st.fixed_dictionaries(
        {
            k: json_values
            for k in ("t", "mesh", "node", "region", "urls", "ts", "invite", "isig", "nsig", "esig")
        }
    )
)
def test_add_on_arbitrary_json_raises_only_roster_error(record: dict[str, Any]) -> None:
    roster = Roster(MESH, OPERATOR.verify_key)
    with pytest.raises(RosterError):
        roster.add(record)
    assert len(roster) == 0


@given(st.binary() | st.text())
def test_decode_record_raises_only_roster_error(data: bytes | str) -> None:
    try:
        value = decode_record(data)
    except RosterError:
        return
    assert isinstance(value, dict)
    assert canonical_json(value)


def test_roster_error_is_a_federation_error() -> None:
    assert issubclass(RosterError, FederationError)
