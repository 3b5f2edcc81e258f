"""Acknowledged means durable (DESIGN.md decision 7): kill -9 under load, restart, count.

A client pipelines a burst of sends over one WebSocket, each with its own client message id and
with that id as the body, and records every ack. The node is killed with SIGKILL once at least
300 acks have arrived, while the rest are still in flight. After a restart on the same data dir:
every acked op is there exactly once, and re-sending everything that was not acked (with the
original ids) completes the burst without a single duplicate.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import Api, Login, Nodes, body_of, text_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = 2000
KILL_AFTER = 300
FAST = {
    "YANZI_RATE_PER_S": "1000000",
    "YANZI_RATE_BURST": "1000000",
    "YANZI_SEND_QUEUE": "100000",
}


async def pipeline(
    api: Api, who: Login, conv: str, cmids: list[str], on_ack: Any = None
) -> dict[str, dict[str, Any]]:
    """Send every cmid without waiting, collect acks until all arrived or the socket died."""
    ws = await api.ws(who)
    acks: dict[str, dict[str, Any]] = {}

    async def send_all() -> None:
        try:
            for cmid in cmids:
                frame = {
                    "type": "send",
                    "id": cmid,
                    "cmid": cmid,
                    "conv": conv,
                    "kind": "message",
                    "body": body_of(cmid),
                }
                await ws.ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError):
            pass  # the node died under us

    sender = asyncio.create_task(send_all())
    try:
        async for msg in ws.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["type"] == "ack":
                acks[frame["id"]] = frame
                if on_ack is not None:
                    on_ack(acks)
                if len(acks) == len(cmids):
                    break
            elif frame["type"] == "error":
                pytest.fail(f"unexpected error during the burst: {frame}")
    finally:
        await sender
        await ws.close()
    return acks


def messages_by_body(ops: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        if op["content"]["kind"] == "message":
            found.setdefault(text_of(op), []).append(op)
    return found


async def test_kill_9_mid_burst_loses_no_acked_op_and_retries_make_no_duplicates(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    node = nodes.start(FAST)
    api = Api(http, node)
    alice, bob = await api.users("alice", "bob")
    conv = await api.direct(alice, "bob")
    cmids = [f"burst-{i:04d}" for i in range(BURST)]
    killed_at: list[int] = []

    def kill_when_enough(acks: dict[str, Any]) -> None:
        if len(acks) >= KILL_AFTER and not killed_at:
            node.kill()
            killed_at.append(len(acks))

    acked = await pipeline(api, alice, conv, cmids, kill_when_enough)
    assert killed_at, "the node was never killed"
    assert KILL_AFTER <= len(acked) < BURST, "the kill did not land mid-burst"

    node.start()  # same data dir, same port
    ops, cursor, _ = await api.sync_all(bob, limit=500)
    stored = messages_by_body(ops)
    for cmid, ack in acked.items():
        assert [op["dot"] for op in stored.get(cmid, [])] == [ack["dot"]], cmid
        assert stored[cmid][0]["hlc"] == ack["hlc"]
    assert all(len(copies) == 1 for copies in stored.values())
    survivors = set(stored) - set(acked)  # committed, but the ack never made it out

    # Retry everything that was not acked, with the original client message ids.
    unacked = [c for c in cmids if c not in acked]
    retried = await pipeline(api, alice, conv, unacked)
    assert set(retried) == set(unacked)
    for cmid in survivors:
        assert retried[cmid]["dot"] == stored[cmid][0]["dot"], "a committed op was re-created"
    newest_before = max(op["hlc"] for op in ops)
    fresh = [retried[c] for c in unacked if c not in survivors]
    assert all(ack["hlc"] > newest_before for ack in fresh), "the HLC went backwards"

    # A retry of something acked before the crash is answered from the store, too.
    sample = [c for c in cmids if c in acked][:20]
    again = await pipeline(api, alice, conv, sample)
    assert {c: a["op_id"] for c, a in again.items()} == {c: acked[c]["op_id"] for c in sample}

    ops, _, _ = await api.sync_all(bob, limit=500)
    stored = messages_by_body(ops)
    assert sorted(stored) == cmids
    assert all(len(copies) == 1 for copies in stored.values())
    seqs = sorted(op["dot"][1] for op in ops)
    assert seqs == list(range(1, BURST + 2)), "dots are dense: create + one per message"
    more, _, _ = await api.sync_all(bob, cursor)
    assert len(more) == len(unacked) - len(survivors)  # only what the retry created
