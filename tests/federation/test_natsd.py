"""The embedded nats-server: supervised, restarted, and never outliving its node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nats

from federation.natsd import EmbeddedNats, NatsServerConfig
from tests.helpers import ROOT, eventually

HOLDER = """
import asyncio, sys
from pathlib import Path
from federation.natsd import EmbeddedNats, NatsServerConfig
async def main():
    server = EmbeddedNats(NatsServerConfig(port=int(sys.argv[2])), Path(sys.argv[1]))
    await server.start()
    print(server.pid, server.port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        return "nats-server" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def _start_holder(work: Path, port: int) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(work), str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    child, bound = (int(x) for x in proc.stdout.readline().split())
    return proc, child, bound


async def test_server_dies_with_a_killed_node_and_the_port_is_reusable(tmp_path: Path) -> None:
    holder, child, port = _start_holder(tmp_path / "n", 0)
    assert _alive(child)
    os.kill(holder.pid, signal.SIGKILL)  # kill -9 the node: no shutdown code runs
    holder.wait(timeout=10)
    await eventually(lambda: not _alive(child), timeout=10)
    # A restart of the node on the same fixed port works (nothing holds it).
    again, child2, port2 = _start_holder(tmp_path / "n", port)
    try:
        assert port2 == port and _alive(child2)
    finally:
        os.kill(again.pid, signal.SIGKILL)
        again.wait(timeout=10)
        await eventually(lambda: not _alive(child2), timeout=10)


async def test_supervisor_restarts_a_dead_server_on_the_same_port(tmp_path: Path) -> None:
    server = EmbeddedNats(NatsServerConfig(), tmp_path / "n", restart_delay_s=0.05)
    await server.start()
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: server.restarts == 1 and server.pid != first, timeout=15)
        await eventually(lambda: nc.is_connected, timeout=15)
        got: list[bytes] = []

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            got.append(msg.data)

        await nc.subscribe("t", cb=on_msg)
        await nc.publish("t", b"after restart")
        await nc.flush()
        await eventually(lambda: got == [b"after restart"])
        await nc.close()
    finally:
        await server.stop()
    assert server.pid is not None and not _alive(server.pid)
