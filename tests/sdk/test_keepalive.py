"""An idle SDK client stays connected: it pings at the protocol level, and the node's idle
timeout counts only application frames (WebSocket pongs do not)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, eventually
from tests.sdk.conftest import FAST, Recorder, new_client, unique_user
from yanzi import Client, Disconnected


@pytest.fixture
def strict_node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path / "node", env={"YANZI_IDLE_TIMEOUT_S": "1.5"}).start()
    yield proc
    proc.stop()


def pings_received(node: NodeProcess) -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r'^yanzi_frames_in_total\{type="ping"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_an_idle_client_outlives_the_idle_timeout(strict_node: NodeProcess, tmp_path: Path):
    clients: list[Client] = []
    pinging = await new_client(
        strict_node.url, tmp_path / "a.json", clients, user=unique_user(),
        config=FAST.replace(app_ping_s=0.3),
    )  # fmt: skip
    silent = await new_client(
        strict_node.url, tmp_path / "b.json", clients, user=unique_user(),
        config=FAST.replace(app_ping_s=3600),
    )  # fmt: skip
    pinging_events, silent_events = Recorder(pinging), Recorder(silent)
    try:
        # The client that never pings is closed for idling (4010) ...
        await eventually(lambda: silent_events.of(Disconnected), timeout=15)
        assert silent_events.of(Disconnected)[0].code == 4010
        # ... while the pinging one, idle just as long and longer, stays on its first session.
        await eventually(lambda: pings_received(strict_node) >= 10, timeout=15)
        assert pinging.connected and pinging_events.of(Disconnected) == []
    finally:
        for client in clients:
            await client.close()
