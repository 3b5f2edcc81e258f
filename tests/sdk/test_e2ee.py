"""The pure E2EE module (yanzi.e2ee, docs/e2ee.md): known answers, laws and hostile input."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import b64decode, b64encode, canonical_json
from tests.sdk.e2ee_vectors import VECTORS, Nonces
from yanzi import e2ee
from yanzi.e2ee import E2eeError, InboundChain, OutboundChain, Recipient, ReplayBook

V = json.loads(VECTORS.read_text())

# -- known answers (tests/sdk/e2ee_vectors.json, docs/e2ee.md appendix A) ----------------------


@pytest.mark.parametrize("dev", V["devices"], ids=lambda d: f"{d['user']}/{d['device']}")
def test_vector_devices(dev: dict[str, Any]) -> None:
    signing = SigningKey(b64decode(dev["ed25519_seed"]))
    box = PrivateKey(b64decode(dev["x25519_secret"]))
    ed, x = bytes(signing.verify_key), bytes(box.public_key)
    assert (b64encode(ed), b64encode(x)) == (dev["ed25519"], dev["x25519"])
    record = e2ee.device_record_bytes(dev["user"], dev["device"], ed, x)
    assert record == e2ee.DEVICE_CONTEXT + dev["record"].encode()
    sig = e2ee.sign_device(dev["user"], dev["device"], signing, x)
    assert b64encode(sig) == dev["keys_sig"]
    e2ee.verify_device(dev["user"], dev["device"], ed, x, sig)
    with pytest.raises(E2eeError) as bad:
        e2ee.verify_device(dev["user"] + "x", dev["device"], ed, x, sig)
    assert bad.value.reason == "bad_signature"


@pytest.mark.parametrize("case", V["safety_numbers"], ids=lambda c: f"{c['a']}-{c['b']}")
def test_vector_safety_numbers(case: dict[str, Any]) -> None:
    a_keys = [b64decode(k) for k in case["a_keys"]]
    b_keys = [b64decode(k) for k in case["b_keys"]]
    assert e2ee.safety_number(case["a"], a_keys, case["b"], b_keys) == case["number"]


def test_vector_chain_steps() -> None:
    chain = V["chain"]
    ck0 = b64decode(chain["ck0"])
    for step in chain["steps"]:
        ck = e2ee.chain_key_at(0, ck0, step["i"])
        assert b64encode(ck) == step["ck"]
        assert b64encode(e2ee.message_key(ck)) == step["mk"]


@pytest.mark.parametrize("msg", V["messages"], ids=lambda m: f"i{m['i']}")
def test_vector_messages(msg: dict[str, Any]) -> None:
    chain_id, mk = b64decode(msg["chain"]), b64decode(msg["mk"])
    app, nonce = b64decode(msg["app"]), b64decode(msg["n"])
    body = e2ee.encrypt_body(msg["conv"], chain_id, msg["i"], mk, app, nonce)
    assert body == msg["body"].encode()
    inbound = InboundChain(
        sender_user="alice",
        sender_device="phone-1",
        conv=msg["conv"],
        chain_id=chain_id,
        start_index=0,
        start_key=b64decode(V["chain"]["ck0"]),
    )
    sealed, plain = e2ee.decrypt(msg["conv"], body, inbound)
    assert plain == app and sealed.index == msg["i"]


@pytest.mark.parametrize("case", V["invalid_messages"]["cases"], ids=lambda c: c["why"])
def test_vector_invalid_messages(case: dict[str, Any]) -> None:
    cases = V["invalid_messages"]
    inbound = InboundChain(
        sender_user="alice",
        sender_device="phone-1",
        conv=case["conv"],
        chain_id=b64decode(cases["chain"]),
        start_index=0,
        start_key=b64decode(cases["ck0"]),
    )
    with pytest.raises(E2eeError) as exc:
        e2ee.decrypt(case["conv"], case["body"].encode(), inbound)
    assert exc.value.reason == case["reason"]


def _vector_keys() -> dict[tuple[str, str], tuple[SigningKey, PrivateKey]]:
    return {
        (d["user"], d["device"]): (
            SigningKey(b64decode(d["ed25519_seed"])),
            PrivateKey(b64decode(d["x25519_secret"])),
        )
        for d in V["devices"]
    }


@pytest.mark.parametrize("share", V["shares"], ids=lambda s: f"from-{s['i']}")
def test_vector_shares(share: dict[str, Any]) -> None:
    keys = _vector_keys()
    sender = keys[(share["sender_user"], share["sender_device"])][1]
    recipients = [
        Recipient(user=u, device=d, x25519=bytes(keys[(u, d)][1].public_key))
        for u, d in share["recipients"]
    ]
    bodies = e2ee.seal_shares(
        conv=share["conv"],
        chain_id=b64decode(share["chain"]),
        start_index=share["i"],
        start_key=b64decode(share["ck"]),
        sender_user=share["sender_user"],
        sender_device=share["sender_device"],
        sender_box=sender,
        recipients=recipients,
        random_bytes=Nonces(share["nonce_label"]),
    )
    assert [b.decode() for b in bodies] == share["bodies"]
    for user, device in share["recipients"]:
        parsed = e2ee.parse_key_share(bodies[0])
        assert isinstance(parsed, e2ee.ShareBody)
        inbound = e2ee.open_share(
            parsed,
            conv=share["conv"],
            author=share["sender_user"],
            author_device=share["sender_device"],
            me_user=user,
            me_device=device,
            my_box=keys[(user, device)][1],
            sender_x25519=bytes(sender.public_key),
        )
        assert (inbound.start_index, b64encode(inbound.start_key)) == (share["i"], share["ck"])


def test_vector_split_share() -> None:
    split = V["split_share"]
    sender = _vector_keys()[(split["sender_user"], split["sender_device"])][1]
    many = [
        Recipient(
            user=f"u{k:03d}",
            device="d",
            x25519=bytes(
                PrivateKey(hashlib.sha256(f"recipient-u{k:03d}".encode()).digest()).public_key
            ),
        )
        for k in range(split["recipient_users"])
    ]
    bodies = e2ee.seal_shares(
        conv=split["conv"],
        chain_id=b64decode(split["chain"]),
        start_index=split["i"],
        start_key=b64decode(split["ck"]),
        sender_user=split["sender_user"],
        sender_device=split["sender_device"],
        sender_box=sender,
        recipients=reversed(many),  # order of the input does not matter
        random_bytes=Nonces(split["nonce_label"]),
    )
    assert [len(b) for b in bodies] == split["body_lengths"]
    assert [b64encode(hashlib.sha256(b).digest()) for b in bodies] == split["body_sha256"]
    assert all(len(b) <= e2ee.MAX_BODY_BYTES for b in bodies)
    assert len(bodies) > 1, "the vector must exercise the split"


def test_vector_key_requests() -> None:
    for req in V["key_requests"]:
        chain_id = b64decode(req["chain"])
        body = e2ee.key_request_body(chain_id, req["sender_user"], req["sender_device"])
        assert body == req["body"].encode()
        assert e2ee.parse_key_share(body) == e2ee.KeyRequest(
            chain_id=chain_id, sender_user=req["sender_user"], sender_device=req["sender_device"]
        )


# -- laws (hypothesis) -------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9._:@=+/-]{1,40}", fullmatch=True)
keys32 = st.binary(min_size=32, max_size=32)
chain_ids = st.binary(min_size=16, max_size=16)
nonces = st.binary(min_size=24, max_size=24)
apps = st.binary(max_size=2000)
indices = st.integers(min_value=0, max_value=e2ee.CHAIN_LENGTH - 1)


def _inbound(conv: str, chain_id: bytes, ck0: bytes, start: int = 0) -> InboundChain:
    return InboundChain(
        sender_user="alice",
        sender_device="phone",
        conv=conv,
        chain_id=chain_id,
        start_index=start,
        start_key=e2ee.chain_key_at(0, ck0, start),
    )


def _seal(conv: str, chain_id: bytes, ck0: bytes, i: int, app: bytes, nonce: bytes) -> bytes:
    mk = e2ee.message_key(e2ee.chain_key_at(0, ck0, i))
    return e2ee.encrypt_body(conv, chain_id, i, mk, app, nonce)


@given(conv=ids, chain_id=chain_ids, ck0=keys32, i=indices, app=apps, nonce=nonces)
def test_round_trip(
    conv: str, chain_id: bytes, ck0: bytes, i: int, app: bytes, nonce: bytes
) -> None:
    body = _seal(conv, chain_id, ck0, i, app, nonce)
    assert canonical_json(json.loads(body)) == body  # the body is canonical JSON
    assert e2ee.body_alg(body) == e2ee.ALG_CHAIN
    sealed, plain = e2ee.decrypt(conv, body, _inbound(conv, chain_id, ck0))
    assert plain == app and sealed.index == i and sealed.nonce == nonce


@given(
    chain_id=chain_ids,
    ck0=keys32,
    order=st.permutations(range(12)),
    start=st.integers(min_value=0, max_value=5),
)
def test_out_of_order_within_a_chain(
    chain_id: bytes, ck0: bytes, order: list[int], start: int
) -> None:
    """An outbound chain's bodies decrypt in any order from a share taken at `start`; bodies
    before the share's start index cannot be decrypted."""
    chain = OutboundChain(
        conv="g",
        chain_id=chain_id,
        index=0,
        chain_key=ck0,
        start_key=ck0,
        created_ms=0,
        members=("alice",),
    )
    bodies = []
    for n in range(12):
        i, mk, chain = chain.advance()
        bodies.append(e2ee.encrypt_body("g", chain_id, i, mk, f"m{n}".encode(), bytes(24)))
    inbound = _inbound("g", chain_id, ck0, start)
    for n in order:
        if n < start:
            with pytest.raises(E2eeError) as exc:
                e2ee.decrypt("g", bodies[n], inbound)
            assert exc.value.reason == "before_share"
        else:
            assert e2ee.decrypt("g", bodies[n], inbound)[1] == f"m{n}".encode()


@given(
    conv=ids,
    chain_id=chain_ids,
    ck0=keys32,
    i=indices,
    app=apps,
    nonce=nonces,
    where=st.sampled_from(["c", "n", "i", "conv", "chain"]),
    data=st.data(),
)
def test_tampering_fails(
    conv: str,
    chain_id: bytes,
    ck0: bytes,
    i: int,
    app: bytes,
    nonce: bytes,
    where: str,
    data: st.DataObject,
) -> None:
    body = json.loads(_seal(conv, chain_id, ck0, i, app, nonce))
    inbound = _inbound(conv, chain_id, ck0)
    if where in ("c", "n"):
        raw = bytearray(b64decode(body[where]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        body[where] = b64encode(bytes(raw))
    elif where == "i":
        body["i"] = data.draw(indices.filter(lambda j: j != i))
    elif where == "conv":
        other = data.draw(ids.filter(lambda c: c != conv))
        inbound = _inbound(other, chain_id, ck0)
        conv = other
    else:
        # Another chain with the same key material: the binding catches the move.
        other_id = data.draw(chain_ids.filter(lambda c: c != chain_id))
        body["chain"] = b64encode(other_id)
        inbound = _inbound(conv, other_id, ck0)
    with pytest.raises(E2eeError) as exc:
        e2ee.decrypt(conv, canonical_json(body), inbound)
    assert exc.value.reason == "tampered"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=12,
)


def _mutated_bodies() -> st.SearchStrategy[bytes]:
    """Bodies close to valid ones: fields of the right names with arbitrary values."""
    templates = [
        {"v": 1, "alg": "yz.chain.v1", "chain": "", "i": 0, "n": "", "c": ""},
        {"v": 1, "alg": "yz.share.v1", "chain": "", "shares": []},
        {"v": 1, "alg": "yz.keyreq.v1", "chain": "", "sender_user": "", "sender_device": ""},
    ]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        obj = dict(draw(st.sampled_from(templates)))
        for key in draw(st.lists(st.sampled_from(sorted(obj)), max_size=3)):
            obj[key] = draw(json_values)
        return canonical_json(obj)

    return mutate()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300) | json_values.map(canonical_json) | _mutated_bodies())
def test_decoders_raise_only_e2ee_error(body: bytes) -> None:
    my_box = PrivateKey(bytes(range(32)))
    inbound = _inbound("g", bytes(16), bytes(32))
    for decode in (
        e2ee.parse_body,
        e2ee.parse_key_share,
        lambda b: e2ee.decrypt("g", b, inbound),
        e2ee.body_alg,
    ):
        with contextlib.suppress(E2eeError):
            decode(body)
    try:
        share = e2ee.parse_key_share(body)
    except E2eeError:
        return
    if isinstance(share, e2ee.ShareBody):
        with pytest.raises(E2eeError):
            e2ee.open_share(
                share,
                conv="g",
                author="a",
                author_device="d",
                me_user="me",
                me_device="x",
                my_box=my_box,
                sender_x25519=bytes(32),
            )


@given(
    names=st.lists(
        st.tuples(st.sampled_from(["alice", "bob", "carol", "dave"]), st.sampled_from("xyz")),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    start=indices,
    ck=keys32,
    chain_id=chain_ids,
)
def test_shares_open_for_each_recipient_only(
    names: list[tuple[str, str]], start: int, ck: bytes, chain_id: bytes
) -> None:
    sender = PrivateKey(hashlib.sha256(b"sender").digest())
    boxes = {n: PrivateKey(hashlib.sha256(repr(n).encode()).digest()) for n in names}
    recipients = [
        Recipient(user=u, device=d, x25519=bytes(boxes[(u, d)].public_key)) for u, d in names
    ]
    (body,) = e2ee.seal_shares(
        conv="g",
        chain_id=chain_id,
        start_index=start,
        start_key=ck,
        sender_user="erin",
        sender_device="p",
        sender_box=sender,
        recipients=recipients,
        random_bytes=Nonces("t"),
    )
    share = e2ee.parse_key_share(body)
    assert isinstance(share, e2ee.ShareBody)
    assert [(s.user, s.device) for s in share.shares] == sorted(names)
    common = {"conv": "g", "author": "erin", "author_device": "p"}
    for (user, device), box in boxes.items():
        got = e2ee.open_share(
            share,
            **common,
            me_user=user,
            me_device=device,
            my_box=box,
            sender_x25519=bytes(sender.public_key),
        )
        assert (got.start_index, got.start_key, got.chain_id) == (start, ck, chain_id)
        assert (got.sender_user, got.sender_device) == ("erin", "p")
        # A node that re-labels the op (another author, device or conversation) is caught.
        for wrong in ({"author": "mallory"}, {"author_device": "q"}, {"conv": "h"}):
            with pytest.raises(E2eeError) as exc:
                e2ee.open_share(
                    share,
                    **{**common, **wrong},
                    me_user=user,
                    me_device=device,
                    my_box=box,
                    sender_x25519=bytes(sender.public_key),
                )
            assert exc.value.reason == "tampered"
        # Box authenticates the sender: another sender key does not open it.
        with pytest.raises(E2eeError) as exc:
            e2ee.open_share(
                share,
                **common,
                me_user=user,
                me_device=device,
                my_box=box,
                sender_x25519=bytes(box.public_key),
            )
        assert exc.value.reason == "tampered"
    with pytest.raises(E2eeError) as exc:
        e2ee.open_share(
            share,
            **common,
            me_user="zed",
            me_device="x",
            my_box=sender,
            sender_x25519=bytes(sender.public_key),
        )
    assert exc.value.reason == "not_for_us"


@given(count=st.integers(min_value=1, max_value=400))
@settings(max_examples=15, deadline=None)
def test_split_shares_cover_everyone_within_the_limit(count: int) -> None:
    sender = PrivateKey(bytes(32))
    recipients = [
        Recipient(user=f"user{k:04d}", device="dev", x25519=bytes(sender.public_key))
        for k in range(count)
    ]
    bodies = e2ee.seal_shares(
        conv="g",
        chain_id=bytes(16),
        start_index=0,
        start_key=bytes(32),
        sender_user="s",
        sender_device="d",
        sender_box=sender,
        recipients=recipients,
        random_bytes=Nonces("x"),
    )
    seen = []
    for body in bodies:
        assert len(body) <= e2ee.MAX_BODY_BYTES
        assert canonical_json(json.loads(body)) == body
        share = e2ee.parse_key_share(body)
        assert isinstance(share, e2ee.ShareBody)
        seen += [s.user for s in share.shares]
    assert seen == [r.user for r in recipients]
    # Greedy packing: no body could have taken the next body's first entry.
    for body, nxt in itertools.pairwise(bodies):
        first = json.loads(nxt)["shares"][0]
        assert len(body) + 1 + len(canonical_json(first)) > e2ee.MAX_BODY_BYTES


@given(
    a=st.sampled_from(["alice", "bob", "zoë", "Zed"]),
    b=st.sampled_from(["alice", "bob", "zoë", "Zed"]),
    ka=st.lists(keys32, max_size=3),
    kb=st.lists(keys32, max_size=3),
    extra=keys32,
)
def test_safety_number_symmetric_and_sensitive(
    a: str, b: str, ka: list[bytes], kb: list[bytes], extra: bytes
) -> None:
    assume(a != b and extra not in ka)
    number = e2ee.safety_number(a, ka, b, kb)
    assert number == e2ee.safety_number(b, kb, a, ka) == e2ee.safety_number(a, ka[::-1], b, kb)
    groups = number.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert e2ee.safety_number(a, [*ka, extra], b, kb) != number


def test_safety_number_needs_two_users() -> None:
    with pytest.raises(E2eeError):
        e2ee.safety_number("alice", [], "alice", [])


# -- chain rotation, state round trips, the replay book ------------------------------------------


def test_outbound_chain_rotation_rules() -> None:
    counter = iter(range(1000))
    chain = OutboundChain.start(
        "g", ["bob", "alice"], now_ms=1000, random_bytes=lambda n: bytes([next(counter)]) * n
    )
    assert chain.members == ("alice", "bob") and chain.index == 0
    assert not chain.needs_rotation(1000, ["alice", "bob"])
    assert chain.needs_rotation(1000, ["alice", "bob", "carol"])  # member added
    assert chain.needs_rotation(1000, ["alice"])  # member removed
    assert chain.needs_rotation(1000 + e2ee.CHAIN_MAX_AGE_MS, ["alice", "bob"])  # a week
    assert chain.needs_rotation(999, ["alice", "bob"])  # the clock went back: start afresh
    stale = OutboundChain.from_json({**chain.to_json(), "stale": True})
    assert stale.needs_rotation(1000, ["alice", "bob"])
    for n in range(e2ee.CHAIN_LENGTH):
        i, mk, chain = chain.advance()
        assert i == n and mk == e2ee.message_key(e2ee.chain_key_at(0, chain.start_key, n))
    assert chain.needs_rotation(1000, ["alice", "bob"])  # 100 bodies
    with pytest.raises(E2eeError):
        chain.advance()
    assert OutboundChain.from_json(json.loads(json.dumps(chain.to_json()))) == chain


def test_skip_to_resumes_past_reserved_indices() -> None:
    chain = OutboundChain(
        conv="g",
        chain_id=bytes(16),
        index=0,
        chain_key=bytes(32),
        start_key=bytes(32),
        created_ms=0,
        members=(),
    )
    moved = chain.skip_to(7)
    assert moved.index == 7 and moved.chain_key == e2ee.chain_key_at(0, bytes(32), 7)
    assert moved.skip_to(3) is moved
    assert chain.skip_to(500).index == e2ee.CHAIN_LENGTH


def test_inbound_chain_json_round_trip_and_limits() -> None:
    chain = _inbound("g", bytes(16), bytes(32), 4)
    assert InboundChain.from_json(chain.to_json()) == chain
    with pytest.raises(E2eeError) as exc:
        chain.message_key(e2ee.CHAIN_LENGTH)
    assert exc.value.reason == "out_of_range"
    for bad in ({}, {**chain.to_json(), "ck": "short"}, {**chain.to_json(), "i": -1}, []):
        with pytest.raises(E2eeError):
            InboundChain.from_json(bad)


def test_replay_book() -> None:
    book = ReplayBook()
    assert book.record("alice", "phone", bytes(16), 0, "op-a") is None
    assert book.record("alice", "phone", bytes(16), 0, "op-a") is None  # the same op again
    assert book.record("alice", "phone", bytes(16), 0, "op-b") == "op-a"  # a replay
    assert book.record("alice", "laptop", bytes(16), 0, "op-c") is None  # another device
    assert book.record("alice", "phone", bytes(16), 1, "op-d") is None
    again = ReplayBook.from_json(json.loads(json.dumps(book.to_json())))
    assert again.record("alice", "phone", bytes(16), 0, "op-x") == "op-a"
    assert len(again) == 3
    with pytest.raises(E2eeError):
        ReplayBook.from_json({"k": {"x": 1}})


def test_body_alg_tells_plain_from_encrypted() -> None:
    assert e2ee.body_alg(b"hello") is None
    assert e2ee.body_alg(b'{"text": "a json message"}') is None
    assert e2ee.body_alg(b'{"alg": "yz.chain.v1"}') == "yz.chain.v1"
    assert e2ee.body_alg(b"{not json") is None


def test_too_large_a_body_is_refused() -> None:
    with pytest.raises(E2eeError) as exc:
        e2ee.encrypt_body("g", bytes(16), 0, bytes(32), bytes(40_000), bytes(24))
    assert exc.value.reason == "too_large"
    # The largest application payload that fits (docs/e2ee.md §4): about 36 KiB.
    assert e2ee.encrypt_body("g", bytes(16), 0, bytes(32), bytes(36_000), bytes(24))
