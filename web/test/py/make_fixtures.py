"""Generate the JS SDK's test fixtures from the Python reference code (crdt/).

Run from the repository root: `python web/test/py/make_fixtures.py`. Writes
web/test/fixtures/{canonical,ops}.json. The JS tests check that the JS canonical JSON, op ids,
device signatures, cursor encoding and fold give exactly the bytes the Python crdt gives.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402

from crdt import (  # noqa: E402
    Content,
    Dot,
    MessageLog,
    Op,
    Timestamp,
    b64encode,
    canonical_json,
    encode_cursor,
    node_id_for,
    sign_content,
    sign_envelope,
)
from tests.crdt.test_canonical import (  # noqa: E402
    MATRIX_CANONICAL_EXAMPLES,
    MATRIX_UNPADDED_BASE64,
)

OUT = ROOT / "web" / "test" / "fixtures"


def random_string(rng: random.Random) -> str:
    pools = [
        "abcXYZ019 _-/",
        '"\\\b\f\n\r\t\x00\x01\x1f\x7f',
        "é日本語€",
        "\ue000\uffff\ufffd",
        "😀𝄞\U0010ffff\U00010000",
        "\u2028\u2029",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 8)))


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice(
            [
                None,
                True,
                False,
                rng.randint(-(2**53 - 1), 2**53 - 1),
                rng.randint(-1000, 1000),
                random_string(rng),
            ]
        )
    if roll < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def canonical_fixtures() -> dict[str, object]:
    rng = random.Random(20261126)
    values = [random_value(rng) for _ in range(300)]
    values.append({"😀": 2, "\uffff": 1, "\ue000": 3, "a": 0})
    values.append({"b": {"😀": [1, {"\U0010ffff": 1, "\uffff": 2}]}, "a": -(2**53 - 1)})
    digests = [b"", b"abc", b"a" * 55, b"a" * 56, b"a" * 64, b"a" * 1000]
    digests += [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 63, 65, 119, 120, 200)]
    return {
        "matrix": [{"input": i, "canonical": c} for i, c in MATRIX_CANONICAL_EXAMPLES],
        "values": [
            {
                "value_json": json.dumps(v, ensure_ascii=True),
                "canonical": canonical_json(v).decode(),
            }
            for v in values
        ],
        "base64": [{"raw": r, "encoded": e} for r, e in MATRIX_UNPADDED_BASE64],
        "sha256": [
            {"input": b64encode(d), "digest": hashlib.sha256(d).hexdigest()} for d in digests
        ],
        "b64_bytes": [{"raw": b64encode(d), "hex": d.hex()} for d in digests],
    }


def op_fixtures() -> dict[str, object]:
    """A group conversation across two origins with every kind of op and the conflicts of
    docs/crdt.md §6, the Python view bytes, and the cursor after holding all of it."""
    keys = {
        u: SigningKey(hashlib.sha256(f"{u}-dev".encode()).digest())
        for u in ("alice", "bob", "carol", "dave")
    }
    n1 = SigningKey(bytes(range(32, 64)))
    n2 = SigningKey(hashlib.sha256(b"node-2").digest())
    o1, o2 = node_id_for(n1.verify_key), node_id_for(n2.verify_key)
    seqs = {o1: 0, o2: 0}
    conv = "g_fixture-1"
    ops: list[Op] = []

    def stamp(
        author: str, kind: str, ms: int, origin: str, *, target: str = "", attrs=None, body=b""
    ) -> Op:
        content = Content(
            conv=conv, kind=kind, author=author, device=f"{author}-dev",
            target=target, attrs=attrs or {}, body=body,
        )  # fmt: skip
        seqs[origin] += 1
        op = Op(
            content=content, hlc=Timestamp(ms, 0), dot=Dot(origin, seqs[origin]),
            dsig=sign_content(content, keys[author]),
        )  # fmt: skip
        op = sign_envelope(op, n1 if origin == o1 else n2)
        ops.append(op)
        return op

    stamp(
        "alice",
        "create",
        1000,
        o1,
        attrs={"type": "group", "members": ["bob", "carol"], "title": "Trip"},
    )
    m1 = stamp("alice", "message", 1010, o1, body="hi 日本 😀".encode())
    m2 = stamp("bob", "message", 1020, o1, body=b"draft plan")
    r1 = stamp("carol", "react", 1100, o2, target=m1.op_id, attrs={"key": "👍"})
    stamp("carol", "unreact", 2000, o2, target=m1.op_id, attrs={"removes": [r1.op_id]})
    stamp("carol", "message", 2005, o2, body=b"brb")
    stamp("alice", "member_remove", 2010, o1, target="carol")
    stamp("bob", "delete", 2015, o2, target=m2.op_id)
    stamp("bob", "react", 2020, o1, target=m1.op_id, attrs={"key": "👍"})
    stamp("bob", "edit", 2030, o1, target=m2.op_id, body=b"final plan")
    stamp("carol", "message", 2040, o2, body=b"hello?")
    m5 = stamp("alice", "message", 2050, o1, body=b"\x00binary\xff")
    stamp("alice", "edit", 2060, o1, target=m5.op_id, body=b"fixed")
    stamp("bob", "edit", 2061, o1, target=m5.op_id, body=b"not yours")
    stamp("alice", "member_add", 2070, o1, target="dave", attrs={"role": "admin"})
    stamp("dave", "member_add", 2080, o1, target="erin", attrs={"role": "owner"})
    stamp("alice", "member_role", 2090, o1, target="bob", attrs={"role": "admin"})
    stamp("bob", "settings", 2100, o1, attrs={"topic": "plans", "title": "Trip 2"})
    stamp("dave", "react", 2110, o1, target=m5.op_id, attrs={"key": "+1"})
    r3 = stamp("dave", "react", 2111, o1, target=m5.op_id, attrs={"key": "+1"})
    stamp("dave", "unreact", 2112, o1, target=m5.op_id, attrs={"removes": [r3.op_id, r3.op_id]})
    stamp("alice", "key_share", 2120, o1, body=b'{"v":1}')
    stamp(
        "bob",
        "react",
        2130,
        o2,
        target="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        attrs={"key": "x"},
    )

    log = MessageLog(conv)
    for op in ops:
        log.apply(op)
    view = log.view()
    cursor = {conv: {o: n for o, n in log.version_vector.contiguous().items()}}
    return {
        "conv": conv,
        "device_keys": {u: b64encode(bytes(k.verify_key)) for u, k in keys.items()},
        "ops": [op.to_json() for op in ops],
        "op_ids": [op.op_id for op in ops],
        "content_bytes": [op.content.signing_bytes().decode() for op in ops],
        "view": view.to_bytes().decode(),
        "cursor": cursor,
        "cursor_encoded": encode_cursor(cursor),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in (("canonical", canonical_fixtures()), ("ops", op_fixtures())):
        text = json.dumps(data, ensure_ascii=True, indent=1) + "\n"
        (OUT / f"{name}.json").write_text(text)
        print(f"wrote {OUT / name}.json")


if __name__ == "__main__":
    main()
