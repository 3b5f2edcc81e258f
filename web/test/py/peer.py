"""A Python SDK peer for the JS interop tests: JSON lines on stdin, JSON lines on stdout.

    python web/test/py/peer.py <base url> <keystore path> [plain]

Each input line is {"id": n, "cmd": ..., ...}; each answer is {"id": n, "ok": true, ...} or
{"id": n, "ok": false, "error": "..."}. Commands: register, login, connect, direct, send, edit,
messages, safety_number, trust, wait_text, close. `messages` reports what the Python `yanzi`
SDK shows: text, whether it decrypted (`e2ee`) and whether the signature is trusted
(`verified`). Whatever the SDK logs goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from yanzi import Client, ClientConfig  # noqa: E402

FAST = dict(
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    ack_timeout_s=5.0,
    send_timeout_s=15.0,
    connect_timeout_s=5.0,
    request_timeout_s=5.0,
    persist_delay_s=0.01,
)


def config(plain: bool) -> ClientConfig:
    fields = ClientConfig.__dataclass_fields__
    extra: dict[str, Any] = {}
    if "key_request_delay_s" in fields:
        extra["key_request_delay_s"] = 0.3
    if "e2ee" in fields:
        extra["e2ee"] = not plain
    return ClientConfig(**{k: v for k, v in FAST.items() if k in fields}, **extra)


def message_json(m: Any) -> dict[str, Any]:
    return {
        "op_id": m.op_id,
        "author": m.author,
        "device": m.device,
        "text": None if getattr(m, "e2ee", "plain") in ("pending", "failed") else m.text,
        "e2ee": getattr(m, "e2ee", "plain"),
        "verified": getattr(m, "verified", False),
        "deleted": m.deleted,
        "edited": m.edited_by is not None,
        "reactions": {k: list(v) for k, v in m.reactions.items()},
    }


async def handle(client: Client, req: dict[str, Any]) -> dict[str, Any]:
    cmd = req["cmd"]
    if cmd == "register":
        await client.register(req["user"], req["password"])
        return {}
    if cmd == "login":
        await client.login(req["user"], req["password"], device_name="python peer")
        return {"device": client.device}
    if cmd == "connect":
        await client.connect()
        return {}
    if cmd == "direct":
        return {"conv": await client.direct(req["peer"])}
    if cmd == "send":
        ack = await client.send(req["conv"], req["text"])
        return {"op_id": ack.op_id}
    if cmd == "edit":
        ack = await client.edit(req["conv"], req["op_id"], req["text"])
        return {"op_id": ack.op_id}
    if cmd == "messages":
        return {"messages": [message_json(m) for m in client.messages(req["conv"])]}
    if cmd == "wait_text":  # until a message with this text is visible (and decrypted)
        deadline = time.monotonic() + req.get("timeout", 15)
        while time.monotonic() < deadline:
            for m in client.messages(req["conv"]):
                j = message_json(m)
                if j["text"] == req["text"] and (not req.get("verified") or j["verified"]):
                    return {"message": j}
            await asyncio.sleep(0.02)
        shown = [message_json(m) for m in client.messages(req["conv"])]
        raise TimeoutError(f"no message {req['text']!r} within the timeout; shown: {shown}")
    if cmd == "safety_number":
        return {"number": await client.safety_number(req["user"])}
    if cmd == "trust":
        return {"trusted": client.trust(req["user"], req["device"])}
    if cmd == "features":
        return {
            "e2ee": hasattr(client, "safety_number") and bool(getattr(client.config, "e2ee", False))
        }
    if cmd == "close":
        await client.close()
        return {}
    raise ValueError(f"unknown command {cmd!r}")


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, keystore = sys.argv[1], sys.argv[2]
    plain = sys.argv[3:] == ["plain"]
    client = Client(url, keystore_path=keystore, config=config(plain))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            req = json.loads(line)
            try:
                answer = {"id": req.get("id"), "ok": True, **await handle(client, req)}
            except Exception as exc:  # reported to the test, which fails with it
                answer = {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if req.get("cmd") == "close":
                break
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
