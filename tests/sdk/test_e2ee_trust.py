"""Trust on first use (yanzi.trust, docs/e2ee.md §2): directory rows in, trust decisions out."""

from __future__ import annotations

import json
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import b64encode
from yanzi.e2ee import sign_device
from yanzi.events import DeviceAdded, KeyChanged
from yanzi.trust import TrustStore, verified_devices


def row(user: str, device: str, seed: int, *, sign_as: str | None = None) -> dict[str, Any]:
    signing = SigningKey(bytes([seed]) * 32)
    x25519 = bytes(PrivateKey(bytes([seed + 1]) * 32).public_key)
    sig = sign_device(sign_as or user, device, signing, x25519)
    return {
        "user": user,
        "device": device,
        "keys": {"ed25519": b64encode(bytes(signing.verify_key)), "x25519": b64encode(x25519)},
        "keys_sig": b64encode(sig),
    }


def ed(seed: int) -> bytes:
    return bytes(SigningKey(bytes([seed]) * 32).verify_key)


def test_rows_without_a_valid_self_signature_are_ignored() -> None:
    good = row("bob", "laptop", 1)
    forged = {**row("bob", "phone", 2), "keys_sig": good["keys_sig"]}
    unsigned = {**row("bob", "tablet", 3), "keys_sig": None}
    other_user = row("bob", "watch", 4, sign_as="mallory")
    swapped_box = {**row("bob", "tv", 5)}
    swapped_box["keys"] = {**swapped_box["keys"], "x25519": good["keys"]["x25519"]}
    garbage: dict[str, Any] = {"device": 7}
    rows = [good, forged, unsigned, other_user, swapped_box, garbage]
    assert [d.device for d in verified_devices("bob", rows)] == ["laptop"]
    assert verified_devices("carol", [good]) == []  # a row of another user


def test_first_use_then_added_then_changed_then_trusted() -> None:
    store = TrustStore()
    first = verified_devices("bob", [row("bob", "laptop", 1)])
    assert store.observe("bob", first, now_ms=1) == []  # first sight: trusted, no event
    assert store.is_trusted_key("bob", "laptop", ed(1))

    both = verified_devices("bob", [row("bob", "laptop", 1), row("bob", "phone", 2)])
    assert store.observe("bob", both, now_ms=2) == [DeviceAdded("bob", "phone")]
    assert set(store.trusted("bob")) == {"laptop", "phone"}
    assert store.observe("bob", both, now_ms=3) == []  # nothing new

    swapped = verified_devices("bob", [row("bob", "laptop", 9), row("bob", "phone", 2)])
    events = store.observe("bob", swapped, now_ms=4)
    assert events == [KeyChanged("bob", "laptop", b64encode(ed(1)), b64encode(ed(9)))]
    assert not store.is_trusted_key("bob", "laptop", ed(9))
    assert not store.is_trusted_key("bob", "laptop", ed(1))
    assert set(store.trusted("bob")) == {"phone"}
    assert store.observe("bob", swapped, now_ms=5) == []  # reported once

    assert store.trust("bob", "laptop")
    assert store.is_trusted_key("bob", "laptop", ed(9))
    assert not store.trust("bob", "fridge")

    again = TrustStore.from_json(json.loads(json.dumps(store.to_json())))
    assert again.to_json() == store.to_json()


def test_a_new_box_key_signed_by_the_same_key_is_accepted_quietly() -> None:
    store = TrustStore()
    store.observe("bob", verified_devices("bob", [row("bob", "laptop", 1)]), now_ms=1)
    signing = SigningKey(bytes([1]) * 32)
    new_box = bytes(PrivateKey(bytes([77]) * 32).public_key)
    rotated = {
        **row("bob", "laptop", 1),
        "keys": {"ed25519": b64encode(ed(1)), "x25519": b64encode(new_box)},
        "keys_sig": b64encode(sign_device("bob", "laptop", signing, new_box)),
    }
    assert store.observe("bob", verified_devices("bob", [rotated]), now_ms=2) == []
    known = store.get("bob", "laptop")
    assert known is not None and known.trusted and known.x25519 == new_box
