"""Builds tests/sdk/e2ee_vectors.json: known answers for docs/e2ee.md (format in its appendix).

Every input is fixed (seeds, chain keys, nonces), so the outputs are exact bytes another
implementation (the JS SDK in web/) must reproduce. Regenerate only when the format changes:

    python -m tests.sdk.e2ee_vectors      # rewrites the JSON file next to this one

tests/sdk/test_e2ee.py checks the Python implementation against the file, not against this
builder, so an accidental change of the format fails there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from crdt import b64encode
from yanzi import e2ee

VECTORS = Path(__file__).with_name("e2ee_vectors.json")
CONV_DIRECT = "d_FBpM0kK2foLt9KeLtBjUCmo4"  # direct_id("alice", "bob"), docs/protocol.md §6.3
CONV_GROUP = "g_vectors-1"


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def vector_nonce(label: str, k: int) -> bytes:
    """The nonces of the vectors: SHA-512(label || u32be(k))[:24] (appendix A)."""
    return hashlib.sha512(label.encode() + k.to_bytes(4, "big")).digest()[: e2ee.NONCE_BYTES]


class Nonces:
    def __init__(self, label: str) -> None:
        self.label = label
        self.drawn: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        assert n == e2ee.NONCE_BYTES
        nonce = vector_nonce(self.label, len(self.drawn))
        self.drawn.append(nonce)
        return nonce


DEVICES = [  # (user, device, seed label): ed25519 seed = SHA-256(label + "/sign"), x25519 = "/box"
    ("alice", "phone-1", "alice-phone"),
    ("alice", "laptop", "alice-laptop"),
    ("bob", "laptop", "bob-laptop"),
    ("carol", "web-1", "carol-web"),
]


def device(label: str) -> tuple[SigningKey, PrivateKey]:
    return SigningKey(sha256(label + "/sign")), PrivateKey(sha256(label + "/box"))


def build() -> dict[str, Any]:
    keys = {(u, d): device(label) for u, d, label in DEVICES}
    pub = {k: (bytes(s.verify_key), bytes(b.public_key)) for k, (s, b) in keys.items()}

    devices = []
    for user, dev, _label in DEVICES:
        signing, box = keys[(user, dev)]
        ed, x = pub[(user, dev)]
        devices.append(
            {
                "user": user,
                "device": dev,
                "ed25519_seed": b64encode(bytes(signing)),
                "x25519_secret": b64encode(bytes(box)),
                "ed25519": b64encode(ed),
                "x25519": b64encode(x),
                # keys_sig signs DEVICE_CONTEXT || record (docs/e2ee.md §1)
                "record": e2ee.device_record_bytes(user, dev, ed, x)[
                    len(e2ee.DEVICE_CONTEXT) :
                ].decode(),
                "keys_sig": b64encode(e2ee.sign_device(user, dev, signing, x)),
            }
        )

    def ed_keys(user: str) -> list[bytes]:
        return [pub[k][0] for k in pub if k[0] == user]

    safety = []
    for a, a_keys, b, b_keys in [
        ("alice", ed_keys("alice"), "bob", ed_keys("bob")),
        ("bob", ed_keys("bob"), "alice", ed_keys("alice")),  # the same number
        ("alice", [pub[("alice", "phone-1")][0]], "bob", ed_keys("bob")),  # one device fewer
        ("carol", ed_keys("carol"), "alice", ed_keys("alice")),
    ]:
        safety.append(
            {
                "a": a,
                "a_keys": [b64encode(k) for k in a_keys],
                "b": b,
                "b_keys": [b64encode(k) for k in b_keys],
                "number": e2ee.safety_number(a, a_keys, b, b_keys),
            }
        )

    ck0 = sha256("vector chain key 0")
    chain_id = sha256("vector chain id")[: e2ee.CHAIN_ID_BYTES]
    steps = []
    ck = ck0
    for i in range(e2ee.CHAIN_LENGTH):
        if i in (0, 1, 2, 3, 50, 99):
            steps.append({"i": i, "ck": b64encode(ck), "mk": b64encode(e2ee.message_key(ck))})
        ck = e2ee.next_chain_key(ck)

    messages = []
    for i, app in [(0, b"hi bob"), (1, "你好, 燕子 🐦".encode()), (2, b""), (99, b"\x00\xff" * 8)]:
        nonce = vector_nonce("message", i)
        mk = e2ee.message_key(e2ee.chain_key_at(0, ck0, i))
        body = e2ee.encrypt_body(CONV_DIRECT, chain_id, i, mk, app, nonce)
        messages.append(
            {
                "conv": CONV_DIRECT,
                "chain": b64encode(chain_id),
                "i": i,
                "mk": b64encode(mk),
                "n": b64encode(nonce),
                "app": b64encode(app),
                "body": body.decode(),
            }
        )

    alice_phone = keys[("alice", "phone-1")][1]
    recipients = [
        e2ee.Recipient(user=u, device=d, x25519=pub[(u, d)][1])
        for (u, d) in [("bob", "laptop"), ("carol", "web-1"), ("alice", "laptop")]
    ]
    nonces = Nonces("share")
    share_bodies = e2ee.seal_shares(
        conv=CONV_GROUP,
        chain_id=chain_id,
        start_index=0,
        start_key=ck0,
        sender_user="alice",
        sender_device="phone-1",
        sender_box=alice_phone,
        recipients=recipients,
        random_bytes=nonces,
    )
    later = Nonces("share-late")
    late_bodies = e2ee.seal_shares(  # an answer to a key request: one recipient, from index 3
        conv=CONV_GROUP,
        chain_id=chain_id,
        start_index=3,
        start_key=e2ee.chain_key_at(0, ck0, 3),
        sender_user="alice",
        sender_device="phone-1",
        sender_box=alice_phone,
        recipients=[recipients[0]],
        random_bytes=later,
    )
    shares = [
        {
            "conv": CONV_GROUP,
            "chain": b64encode(chain_id),
            "i": 0,
            "ck": b64encode(ck0),
            "sender_user": "alice",
            "sender_device": "phone-1",
            "recipients": [[r.user, r.device] for r in recipients],
            "nonce_label": "share",
            "bodies": [b.decode() for b in share_bodies],
        },
        {
            "conv": CONV_GROUP,
            "chain": b64encode(chain_id),
            "i": 3,
            "ck": b64encode(e2ee.chain_key_at(0, ck0, 3)),
            "sender_user": "alice",
            "sender_device": "phone-1",
            "recipients": [[recipients[0].user, recipients[0].device]],
            "nonce_label": "share-late",
            "bodies": [b.decode() for b in late_bodies],
        },
    ]

    # A share too big for one op: 250 users "u000".."u249", device "d", whose X25519 secret is
    # SHA-256("recipient-<user>"). Checked by length and SHA-256 of each body.
    many = [
        e2ee.Recipient(
            user=f"u{k:03d}",
            device="d",
            x25519=bytes(PrivateKey(sha256(f"recipient-u{k:03d}")).public_key),
        )
        for k in range(250)
    ]
    split_bodies = e2ee.seal_shares(
        conv=CONV_GROUP,
        chain_id=chain_id,
        start_index=0,
        start_key=ck0,
        sender_user="alice",
        sender_device="phone-1",
        sender_box=alice_phone,
        recipients=many,
        random_bytes=Nonces("split"),
    )
    split = {
        "conv": CONV_GROUP,
        "chain": b64encode(chain_id),
        "i": 0,
        "ck": b64encode(ck0),
        "sender_user": "alice",
        "sender_device": "phone-1",
        "recipient_users": 250,
        "nonce_label": "split",
        "body_lengths": [len(b) for b in split_bodies],
        "body_sha256": [b64encode(hashlib.sha256(b).digest()) for b in split_bodies],
        "shares_per_body": [len(json.loads(b)["shares"]) for b in split_bodies],
    }

    keyreqs = [
        {
            "chain": b64encode(chain_id),
            "sender_user": "alice",
            "sender_device": "phone-1",
            "body": e2ee.key_request_body(chain_id, "alice", "phone-1").decode(),
        }
    ]

    good = messages[0]["body"].encode()
    sealed = json.loads(good)
    invalid = [
        {"why": "another conversation", "conv": "d_other", "body": good.decode(),
         "reason": "tampered"},
        {"why": "index moved", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "i": 1}), "reason": "tampered"},
        {"why": "ciphertext bit flipped", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "c": _flip(sealed["c"])}), "reason": "tampered"},
        {"why": "nonce changed", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "n": _flip(sealed["n"])}), "reason": "tampered"},
        {"why": "unknown version", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "v": 2}), "reason": "malformed"},
        {"why": "extra field", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "x": 1}), "reason": "malformed"},
        {"why": "padded base64", "conv": CONV_DIRECT,
         "body": _canon({**sealed, "n": sealed["n"] + "="}), "reason": "malformed"},
    ]  # fmt: skip

    return {
        "format": "yanzi-e2ee-vectors",
        "version": 1,
        "spec": "docs/e2ee.md, appendix A",
        "devices": devices,
        "safety_numbers": safety,
        "chain": {"chain": b64encode(chain_id), "ck0": b64encode(ck0), "steps": steps},
        "messages": messages,
        "invalid_messages": {
            "chain": b64encode(chain_id),
            "ck0": b64encode(ck0),
            "cases": invalid,
        },
        "shares": shares,
        "split_share": split,
        "key_requests": keyreqs,
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _flip(text: str) -> str:
    """Change the first base64url character (and so the first byte) of `text`."""
    return ("B" if text[0] == "A" else "A") + text[1:]


def main() -> None:
    VECTORS.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
