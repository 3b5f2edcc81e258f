"""Reconnects resume exactly: the gap comes over HTTP, nothing twice, nothing missing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, eventually
from tests.sdk.conftest import FAST, PASSWORD, MakeClient, Recorder, new_client, unique_user
from tests.sdk.proxy import TcpProxy
from yanzi import CaughtUp, Client, Connected, Disconnected, ServerError


@pytest.fixture
async def proxy(node: NodeProcess) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", node.port).start()
    yield proxy
    await proxy.close()


async def test_abrupt_drop_then_reconnect_gets_exactly_the_gap(
    proxy: TcpProxy, make_client: MakeClient
) -> None:
    alice = await make_client()
    bob = await make_client(url=proxy.url)
    conv = await alice.direct(bob.user)
    await alice.send(conv, "before the drop")
    await eventually(lambda: len(bob.messages(conv)) == 1)
    rec = Recorder(bob)

    proxy.block()
    proxy.cut()  # the socket dies without a close frame
    await eventually(lambda: not bob.connected)
    # bob sends while offline: retried (HTTP fallback, then the socket) with the same cmid.
    offline_send = asyncio.ensure_future(bob.send(conv, "typed while offline"))
    acks = [await alice.send(conv, f"gap {i}") for i in range(30)]
    await eventually(lambda: proxy.refused >= 3)  # bob keeps trying; the proxy refuses
    assert not bob.connected and not offline_send.done()
    proxy.unblock()

    bob_ack = await offline_send
    expected = {a.op_id for a in acks} | {bob_ack.op_id}
    await eventually(lambda: {op.op_id for op in rec.ops("message")} == expected)
    # No duplicate (bob's first send also wrote an E2EE key_share op).
    assert Counter(op.op_id for op in rec.ops() if op.kind != "key_share") == dict.fromkeys(
        expected, 1
    )
    assert max(Counter(op.op_id for op in rec.ops()).values()) == 1
    assert len(bob.messages(conv)) == 32
    await eventually(lambda: alice.view(conv).to_bytes() == bob.view(conv).to_bytes())
    drops = rec.of(Disconnected)
    assert drops and drops[0].will_retry
    assert rec.of(Connected) and rec.of(CaughtUp)


async def test_disconnect_then_connect_resumes_from_the_cursor(make_client: MakeClient) -> None:
    """The mini-program case: onHide closes the socket, onShow reconnects and catches up."""
    alice = await make_client()
    bob = await make_client(config=FAST.replace(sync_page=7))  # 30 ops come in 5 pages
    conv = await alice.direct(bob.user)
    await eventually(lambda: bob.state(conv).conv_type == "direct")
    rec = Recorder(bob)
    await bob.disconnect()
    acks = [await alice.send(conv, f"while hidden {i}") for i in range(30)]
    await bob.connect()  # returns once the HTTP catch-up is done
    got = rec.ops("message")
    assert [op.op_id for op in got] == [a.op_id for a in acks]
    assert [m.text for m in bob.messages(conv)] == [f"while hidden {i}" for i in range(30)]
    assert rec.of(Disconnected)[0].will_retry is False
    # Live again afterwards.
    live = await alice.send(conv, "live")
    await eventually(lambda: live.op_id in {op.op_id for op in rec.ops()})


async def test_node_restart_client_reconnects_and_resumes(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node").start()
    clients: list[Client] = []
    try:
        alice = await new_client(node.url, tmp_path / "a.keys", clients, user=unique_user())
        bob = await new_client(node.url, tmp_path / "b.keys", clients, user=unique_user())
        conv = await alice.direct(bob.user)
        before = await alice.send(conv, "before restart")
        await eventually(lambda: len(bob.messages(conv)) == 1)
        rec = Recorder(bob)

        await asyncio.to_thread(node.stop)  # graceful: sessions close with 1001 going away
        await eventually(lambda: not alice.connected and not bob.connected)
        during = asyncio.ensure_future(alice.send(conv, "sent while the node was down"))
        await asyncio.to_thread(node.start)  # same data dir and port

        down_ack = await during
        after = await alice.send(conv, "after restart")
        await eventually(lambda: alice.connected and bob.connected)
        await eventually(
            lambda: (
                [m.op_id for m in bob.messages(conv)] == [before.op_id, down_ack.op_id, after.op_id]
            )
        )
        assert Counter(op.op_id for op in rec.ops()) == {down_ack.op_id: 1, after.op_id: 1}
        assert rec.of(Disconnected)[0].code == 1001 and rec.of(Disconnected)[0].will_retry
    finally:
        for client in clients:
            await client.close()
        node.stop()


async def test_logout_everywhere_stops_other_devices_for_good(make_client: MakeClient) -> None:
    user = unique_user("out")
    phone = await make_client(user)
    laptop = await make_client(user, register=False)
    rec = Recorder(phone)
    await laptop.logout(all_devices=True)
    await eventually(lambda: rec.of(Disconnected))
    dropped = rec.of(Disconnected)[0]
    assert (dropped.code, dropped.will_retry) == (4011, False)
    assert not phone.connected and laptop.keystore.token is None
    with pytest.raises(ServerError) as refused:
        await phone.connect()
    assert refused.value.needs_login
    await phone.login(user, PASSWORD)  # a fresh token brings the device back
    await phone.connect()
    assert phone.connected
