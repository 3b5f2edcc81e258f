"""Accounts: registration, login per device, tokens (expiry, revocation), against a real LMDB."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import b64decode, b64encode, canonical_json
from node.accounts import DBS, Accounts, DeviceKeys
from node.errors import ClientError
from node.store import Put, Store

PASSWORD = "correct horse battery"
TTL_S = 3600


class FakeClock:
    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def keys(seed: int = 1) -> DeviceKeys:
    return DeviceKeys(ed25519=bytes([seed]) * 32, x25519=bytes([seed + 100]) * 32)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "db", dbs=DBS, sync=False)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def accounts(store: Store, clock: FakeClock) -> Accounts:
    return make_accounts(store, clock)


def make_accounts(store: Store, clock: FakeClock | None = None, **kw: object) -> Accounts:
    opts: dict[str, object] = {
        "token_ttl_s": TTL_S,
        "min_password_len": 8,
        "pwhash_level": "min",
        **kw,
    }
    if clock is not None:
        opts["clock_ms"] = clock
    return Accounts(store, **opts)  # type: ignore[arg-type]


async def login(acc: Accounts, user: str = "alice", device: str = "phone", seed: int = 1):
    return await acc.login(user, PASSWORD, device=device, device_name="My phone", keys=keys(seed))


def code_of(exc_info: pytest.ExceptionInfo[ClientError]) -> str:
    return exc_info.value.code


# -- register / login / authenticate ---------------------------------------------------------


async def test_register_login_authenticate(accounts: Accounts, clock: FakeClock) -> None:
    await accounts.register("alice", PASSWORD)
    assert accounts.user_exists("alice")
    assert not accounts.user_exists("bob")

    result = await login(accounts)
    assert (result.user, result.device) == ("alice", "phone")
    assert result.expires_ms == clock.now_ms + TTL_S * 1000
    assert len(b64decode(result.token)) == 32
    assert result.token not in repr(result)

    ident = accounts.authenticate(result.token)
    assert (ident.user, ident.device, ident.expires_ms) == ("alice", "phone", result.expires_ms)
    assert ident.token_id == hashlib.sha256(b64decode(result.token)).hexdigest()

    dev = accounts.device("alice", "phone")
    assert dev is not None
    assert (dev.name, dev.keys, dev.created_ms, dev.last_login_ms) == (
        "My phone",
        keys(1),
        clock.now_ms,
        clock.now_ms,
    )
    assert dev.keys_changed_ms is None
    assert dev.to_json()["keys"] == keys(1).to_json()
    assert [d.device for d in accounts.devices("alice")] == ["phone"]


async def test_interactive_level_hashes_and_verifies(store: Store) -> None:
    acc = make_accounts(store, pwhash_level="interactive")
    await acc.register("carol", PASSWORD)
    result = await login(acc, "carol")
    assert acc.authenticate(result.token).user == "carol"
    with pytest.raises(ClientError) as exc:
        await acc.login("carol", PASSWORD + "x", device="d", device_name="", keys=keys())
    assert code_of(exc) == "bad_credentials"
    raw = store.get("users", b"carol")
    assert raw is not None and b"$argon2id$" in raw and b"m=65536" in raw


async def test_each_login_gets_a_distinct_token(accounts: Accounts) -> None:
    await accounts.register("alice", PASSWORD)
    first, second = await login(accounts), await login(accounts)
    assert first.token != second.token
    assert (
        accounts.authenticate(first.token).token_id != accounts.authenticate(second.token).token_id
    )


async def test_duplicate_username(accounts: Accounts) -> None:
    await accounts.register("alice", PASSWORD)
    with pytest.raises(ClientError) as exc:
        await accounts.register("alice", "another password")
    assert code_of(exc) == "username_taken"


async def test_concurrent_duplicate_registration_one_wins(accounts: Accounts) -> None:
    results = await asyncio.gather(
        *(accounts.register("alice", f"password-{i}") for i in range(8)), return_exceptions=True
    )
    winners = [r for r in results if r is None]
    losers = [r for r in results if isinstance(r, ClientError)]
    assert len(winners) == 1
    assert len(losers) == 7 and {e.code for e in losers} == {"username_taken"}
    # the stored password is the winner's: exactly one of them logs in
    won = results.index(None)
    ok = await accounts.login("alice", f"password-{won}", device="d", device_name="", keys=keys())
    assert ok.user == "alice"


async def test_registration_closed(store: Store) -> None:
    acc = make_accounts(store, register_open=False)
    with pytest.raises(ClientError) as exc:
        await acc.register("alice", PASSWORD)
    assert code_of(exc) == "forbidden"


@pytest.mark.parametrize(
    "username",
    [
        "ab",
        "a" * 33,
        "Alice",
        "_alice",
        ".alice",
        "-alice",
        "al ice",
        "alïce",
        "al\x00ce",
        "",
        "alice\n",
        42,
        None,
    ],
)
async def test_bad_usernames(accounts: Accounts, username: object) -> None:
    with pytest.raises(ClientError) as exc:
        await accounts.register(username, PASSWORD)  # type: ignore[arg-type]
    assert code_of(exc) == "bad_request"
    assert "3-32 characters" in exc.value.message


@pytest.mark.parametrize("username", ["abc", "a" * 32, "0day", "j.doe-2_x"])
async def test_good_usernames(accounts: Accounts, username: str) -> None:
    await accounts.register(username, PASSWORD)
    assert accounts.user_exists(username)


@pytest.mark.parametrize("password", ["short", "x" * 1025, "\ud800" * 10, None, b"bytes-password"])
async def test_bad_passwords(accounts: Accounts, password: object) -> None:
    with pytest.raises(ClientError) as exc:
        await accounts.register("alice", password)  # type: ignore[arg-type]
    assert code_of(exc) == "bad_request"
    assert not accounts.user_exists("alice")


async def test_longest_password_accepted(accounts: Accounts) -> None:
    await accounts.register("alice", "p" * 1024)
    assert (
        await accounts.login("alice", "p" * 1024, device="d", device_name="", keys=keys())
    ).token


@pytest.mark.parametrize(
    ("device", "device_name"),
    [
        ("", "x"),
        ("d" * 65, "x"),
        ("bad id", "x"),
        ("dév", "x"),
        (None, "x"),
        ("ok", "n" * 65),
        ("ok", "tab\there"),
        ("ok", None),
    ],
)
async def test_bad_devices(accounts: Accounts, device: object, device_name: object) -> None:
    await accounts.register("alice", PASSWORD)
    with pytest.raises(ClientError) as exc:
        await accounts.login(
            "alice",
            PASSWORD,
            device=device,
            device_name=device_name,
            keys=keys(),  # type: ignore[arg-type]
        )
    assert code_of(exc) == "bad_request"
    assert accounts.devices("alice") == []


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"ed25519": b64encode(b"\x01" * 32)},
        {"ed25519": b64encode(b"\x01" * 31), "x25519": b64encode(b"\x02" * 32)},
        {"ed25519": b64encode(b"\x01" * 32), "x25519": b64encode(b"\x02" * 32) + "="},
        {"ed25519": b64encode(b"\x01" * 32), "x25519": 5},
        {"ed25519": b64encode(b"\x01" * 32), "x25519": b64encode(b"\x02" * 32), "extra": ""},
    ],
)
def test_bad_device_keys_json(value: object) -> None:
    with pytest.raises(ClientError) as exc:
        DeviceKeys.from_json(value)
    assert code_of(exc) == "bad_request"


def test_device_keys_json_round_trip() -> None:
    assert DeviceKeys.from_json(keys(7).to_json()) == keys(7)
    with pytest.raises(ClientError):
        DeviceKeys(ed25519=b"short", x25519=b"\x00" * 32)


async def test_wrong_password_and_unknown_user_look_the_same(accounts: Accounts) -> None:
    await accounts.register("alice", PASSWORD)
    with pytest.raises(ClientError) as wrong:
        await accounts.login("alice", "not the password", device="d", device_name="", keys=keys())
    with pytest.raises(ClientError) as unknown:
        await accounts.login("nobody", PASSWORD, device="d", device_name="", keys=keys())
    assert wrong.value.code == unknown.value.code == "bad_credentials"
    assert wrong.value.message == unknown.value.message
    assert accounts.devices("alice") == [] and accounts.devices("nobody") == []


async def test_login_with_new_keys_records_the_change(accounts: Accounts, clock: FakeClock) -> None:
    await accounts.register("alice", PASSWORD)
    await login(accounts, seed=1)
    created = clock.now_ms
    clock.now_ms += 5000
    await login(accounts, seed=1)  # same keys: no change recorded
    dev = accounts.device("alice", "phone")
    assert dev is not None and dev.keys_changed_ms is None and dev.last_login_ms == clock.now_ms

    clock.now_ms += 5000
    await login(accounts, seed=2)
    dev = accounts.device("alice", "phone")
    assert dev is not None
    assert dev.keys == keys(2)
    assert dev.keys_changed_ms == clock.now_ms
    assert dev.created_ms == created
    assert len(accounts.devices("alice")) == 1


async def test_devices_are_per_user(accounts: Accounts) -> None:
    for user in ("alice", "alice2", "bob"):
        await accounts.register(user, PASSWORD)
    await login(accounts, "alice", "phone")
    await login(accounts, "alice", "laptop")
    await login(accounts, "alice2", "phone")
    await login(accounts, "bob", "phone")
    assert [d.device for d in accounts.devices("alice")] == ["laptop", "phone"]
    assert [d.device for d in accounts.devices("alice2")] == ["phone"]
    assert accounts.device("bob", "laptop") is None
    assert accounts.devices("Not A User") == []


# -- expiry and revocation ---------------------------------------------------------------------


async def test_token_expiry(accounts: Accounts, store: Store, clock: FakeClock) -> None:
    await accounts.register("alice", PASSWORD)
    result = await login(accounts)
    clock.now_ms = result.expires_ms - 1
    assert accounts.authenticate(result.token).user == "alice"
    clock.now_ms = result.expires_ms
    with pytest.raises(ClientError) as exc:
        accounts.authenticate(result.token)
    assert code_of(exc) == "token_expired"

    # deleted lazily: by the next write (here: another login), then it is simply unknown
    fresh = await login(accounts, device="laptop")
    assert store.count("tokens") == 1 and store.count("user_tokens") == 1
    with pytest.raises(ClientError) as exc:
        accounts.authenticate(result.token)
    assert code_of(exc) == "auth_failed"
    assert accounts.authenticate(fresh.token).device == "laptop"


async def test_purge_expired(accounts: Accounts, store: Store, clock: FakeClock) -> None:
    await accounts.register("alice", PASSWORD)
    old = await login(accounts, device="a")
    clock.now_ms += TTL_S * 500
    new = await login(accounts, device="b")
    clock.now_ms = old.expires_ms
    assert await accounts.purge_expired() == 1
    assert store.count("tokens") == 1 and store.count("user_tokens") == 1
    assert accounts.authenticate(new.token).device == "b"


async def test_logout(accounts: Accounts) -> None:
    await accounts.register("alice", PASSWORD)
    phone, laptop = await login(accounts), await login(accounts, device="laptop")
    await accounts.logout(phone.token)
    with pytest.raises(ClientError) as exc:
        accounts.authenticate(phone.token)
    assert code_of(exc) == "auth_failed"
    assert accounts.authenticate(laptop.token).device == "laptop"
    await accounts.logout(phone.token)  # idempotent
    await accounts.logout("garbage")


async def test_logout_all_revokes_every_device(accounts: Accounts, store: Store) -> None:
    await accounts.register("alice", PASSWORD)
    await accounts.register("bob", PASSWORD)
    tokens = [await login(accounts, device=d) for d in ("phone", "laptop", "tablet")]
    tokens.append(await login(accounts, device="phone"))
    bob = await login(accounts, "bob")
    assert await accounts.logout_all("alice") == 4
    for t in tokens:
        with pytest.raises(ClientError) as exc:
            accounts.authenticate(t.token)
        assert code_of(exc) == "auth_failed"
    assert accounts.authenticate(bob.token).user == "bob"
    assert store.count("tokens") == 1 and store.count("user_tokens") == 1
    assert await accounts.logout_all("alice") == 0
    # devices stay registered (their keys matter to E2EE); only sessions are revoked
    assert len(accounts.devices("alice")) == 3


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(
        st.text(), st.text(alphabet="ABCDEFabcdef0123456789-_=", min_size=40, max_size=46)
    )
)
def test_authenticate_garbage_raises_only_client_error(accounts: Accounts, garbage: str) -> None:
    with pytest.raises(ClientError) as exc:
        accounts.authenticate(garbage)
    assert code_of(exc) == "auth_failed"


@pytest.mark.parametrize("garbage", [None, 42, b"x" * 43, "A" * 43, "A" * 42 + "=", "é" * 43])
def test_authenticate_non_tokens(accounts: Accounts, garbage: object) -> None:
    with pytest.raises(ClientError) as exc:
        accounts.authenticate(garbage)  # type: ignore[arg-type]
    assert code_of(exc) == "auth_failed"


# -- storage ---------------------------------------------------------------------------------


async def test_tokens_and_passwords_never_stored_in_plaintext(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", dbs=DBS)
    await store.start()
    acc = make_accounts(store)
    await acc.register("alice", PASSWORD)
    results = [await login(acc, device=d) for d in ("phone", "laptop")]
    await store.close()
    data = (tmp_path / "db" / "data.mdb").read_bytes()
    assert b"alice" in data  # the scan does see the records
    assert PASSWORD.encode() not in data
    for r in results:
        raw = b64decode(r.token)
        assert r.token.encode() not in data
        assert raw not in data
        assert hashlib.sha256(raw).digest() in data


async def test_accounts_survive_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "db"
    store = Store(path, dbs=DBS)
    await store.start()
    acc = make_accounts(store, clock)
    await acc.register("alice", PASSWORD)
    result = await login(acc)
    await store.close()

    store = Store(path, dbs=DBS)
    await store.start()
    try:
        acc = make_accounts(store, clock)
        assert acc.user_exists("alice")
        assert acc.authenticate(result.token).device == "phone"
        assert acc.device("alice", "phone") is not None
        again = await login(acc, device="laptop")
        assert acc.authenticate(again.token).user == "alice"
        with pytest.raises(ClientError) as exc:
            await acc.register("alice", PASSWORD)
        assert code_of(exc) == "username_taken"
    finally:
        await store.close()


# -- the device's self-signature (keys_sig, docs/e2ee.md §1) ----------------------------------


def signed_keys(user: str, device: str, seed: int = 1) -> tuple[DeviceKeys, bytes]:
    """Real keys and their keys_sig, built from the spec's text rather than the SDK."""
    signing = SigningKey(hashlib.sha256(b"dev-%d" % seed).digest())
    x25519 = bytes(PrivateKey(hashlib.sha256(b"box-%d" % seed).digest()).public_key)
    dev_keys = DeviceKeys(ed25519=bytes(signing.verify_key), x25519=x25519)
    record = {"user": user, "device": device, **dev_keys.to_json()}
    signed = b"yanzi-device-v1\x00" + canonical_json(record)
    return dev_keys, bytes(signing.sign(signed).signature)


async def test_keys_sig_is_verified_and_kept(accounts: Accounts, store: Store) -> None:
    await accounts.register("alice", PASSWORD)
    dev_keys, sig = signed_keys("alice", "phone")
    await accounts.login("alice", PASSWORD, device="phone", device_name="", keys=dev_keys,
                         keys_sig=sig)  # fmt: skip
    dev = accounts.device("alice", "phone")
    assert dev is not None and dev.keys_sig == sig
    assert dev.to_json()["keys_sig"] == b64encode(sig)
    # Same keys, no signature this time: the one that signed these keys stays.
    await accounts.login("alice", PASSWORD, device="phone", device_name="", keys=dev_keys)
    assert accounts.device("alice", "phone").keys_sig == sig  # type: ignore[union-attr]
    # The row survives a reopen of the store (federation copies these rows as they are).
    reopened = make_accounts(store)
    assert reopened.device("alice", "phone") == accounts.device("alice", "phone")
    # New keys without a signature: the old signature no longer applies.
    await accounts.login("alice", PASSWORD, device="phone", device_name="", keys=keys(9))
    dev = accounts.device("alice", "phone")
    assert dev is not None and dev.keys_sig is None and dev.to_json()["keys_sig"] is None


@pytest.mark.parametrize(
    "case", ["other_user", "other_device", "other_keys", "flipped_bit", "short", "empty"]
)
async def test_bad_keys_sig_is_refused(accounts: Accounts, case: str) -> None:
    await accounts.register("alice", PASSWORD)
    dev_keys, sig = signed_keys("alice", "phone")
    if case == "other_user":
        _, sig = signed_keys("mallory", "phone")
    elif case == "other_device":
        _, sig = signed_keys("alice", "laptop")
    elif case == "other_keys":
        dev_keys = DeviceKeys(ed25519=dev_keys.ed25519, x25519=b"\x07" * 32)
    elif case == "flipped_bit":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif case == "short":
        sig = sig[:63]
    else:
        sig = b""
    with pytest.raises(ClientError) as exc:
        await accounts.login("alice", PASSWORD, device="phone", device_name="", keys=dev_keys,
                             keys_sig=sig)  # fmt: skip
    assert code_of(exc) == "bad_request"
    assert accounts.device("alice", "phone") is None  # nothing stored


async def test_rows_without_keys_sig_still_load(accounts: Accounts, store: Store) -> None:
    """Device rows written before keys_sig existed (or replicated from an older node)."""
    await accounts.register("alice", PASSWORD)
    await login(accounts)
    key = b"alice\x00phone"
    row = json.loads(store.get("devices", key) or b"")
    del row["keys_sig"]
    await store.commit([Put("devices", key, canonical_json(row))])
    dev = accounts.device("alice", "phone")
    assert dev is not None and dev.keys_sig is None
