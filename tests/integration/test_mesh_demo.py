"""`yanzi mesh demo` as a newcomer runs it: a real subprocess that starts a NATS cluster and three
nodes, printed URLs that work, and a SIGTERM that leaves no process and no temp dir behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest

from tests.helpers import ROOT, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE_ROW = re.compile(r"^\s+(demo-\d+)\s+(http://\S+)\s+(ws://\S+)\s+(nats://\S+)\s+(\d+)\s*$")
NATS_ROW = re.compile(r"^\s+(demo-nats-\d+)\s+(nats://\S+)\s+(nats-route://\S+)\s+(\d+)\s*$")
DATA_ROW = re.compile(r"^Data and logs: (\S+) \((.*)\)$")
READY = "Press Ctrl-C to stop."


@dataclass
class DemoRow:
    region: str
    http: str
    ws: str
    nats: str
    pid: int


@dataclass
class Printed:
    nodes: list[DemoRow]
    nats: list[tuple[str, str, int]]  # server name, client URL, pid
    data_root: Path
    text: str


class Demo:
    """The demo subprocess, its output read on a thread, and its process tree."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.err_path = tmp / "demo.err"
        env = {**os.environ, "YANZI_PWHASH_LEVEL": "min", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "mesh", "demo", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.err_path.open("w"), text=True,
        )  # fmt: skip
        self.lines: list[str] = []

    def read_until_ready(self) -> Printed:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == READY:
                return self.parse()
        raise AssertionError(f"demo ended before it was ready:\n{self.output()}")

    def parse(self) -> Printed:
        nodes, servers, root = [], [], None
        for line in self.lines:
            if match := NODE_ROW.match(line):
                region, http, ws, nats_url, pid = match.groups()
                nodes.append(DemoRow(region, http, ws, nats_url, int(pid)))
            elif match := NATS_ROW.match(line):
                servers.append((match[1], match[2], int(match[4])))
            elif match := DATA_ROW.match(line):
                root = Path(match[1])
        assert root is not None, self.output()
        return Printed(nodes, servers, root, "\n".join(self.lines))

    def output(self) -> str:
        return "\n".join(self.lines) + "\n-- stderr --\n" + self.err_path.read_text()

    def finish(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code; stdout drained so the demo never blocks on it."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- processes by /proc (Linux) ---------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`, with its start time (to tell a reused PID apart)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            if (fields := _stat(pid)) is not None:
                found[pid] = fields[19]  # starttime
                stack.append(pid)
    return found


def alive(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


@pytest.fixture
def demo_factory(tmp_path: Path) -> Iterator[type[Demo]]:
    started: list[Demo] = []
    tree: dict[int, str] = {}

    class Tracked(Demo):
        def __init__(self, *args: str) -> None:
            super().__init__(tmp_path, *args)
            started.append(self)

        def read_until_ready(self) -> Printed:
            printed = super().read_until_ready()
            tree.update(descendants(self.proc.pid))
            return printed

    yield Tracked
    for demo in started:  # a failed test must not leave a mesh running
        demo.kill()
    for pid, since in tree.items():
        if alive(pid, since):
            os.kill(pid, signal.SIGKILL)


async def _json(http: aiohttp.ClientSession, url: str) -> object:
    async with http.get(url) as resp:
        return await resp.json() if resp.status == 200 else None


async def test_three_node_demo_serves_forms_a_mesh_and_stops_clean(demo_factory: type[Demo]):
    demo = demo_factory("--nodes", "3")
    printed = await asyncio.wait_for(asyncio.to_thread(demo.read_until_ready), 180)
    tree = descendants(demo.proc.pid)

    assert [n.region for n in printed.nodes] == ["demo-1", "demo-2", "demo-3"], printed.text
    assert len(printed.nats) == 3, printed.text
    assert len({n.http for n in printed.nodes}) == 3
    for node in printed.nodes:
        assert node.ws == node.http.replace("http://", "ws://") + "/v1/ws"
    # Every process it says it runs is its child, and it runs nothing it does not show.
    shown = {n.pid for n in printed.nodes} | {pid for _, _, pid in printed.nats}
    assert shown == set(tree), (shown, tree)
    assert printed.data_root.is_dir()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for node in printed.nodes:
            async with http.get(node.http + "/healthz") as resp:
                assert resp.status == 200, node

        first = printed.nodes[0]
        async with http.post(
            first.http + "/v1/register",
            json={"username": "alice", "password": "correct horse battery"},
        ) as resp:
            assert resp.status in (200, 201), await resp.text()

        async def everyone_sees_three_members_up() -> bool:
            for node in printed.nodes:
                status = await _json(http, node.http + "/v1/mesh/status")
                if not isinstance(status, dict):
                    return False
                members = status.get("members") or []
                if len(members) != 3 or not all(m["up"] for m in members):
                    return False
                if {m["region"] for m in members} != {"demo-1", "demo-2", "demo-3"}:
                    return False
            return True

        await eventually(everyone_sees_three_members_up, timeout=60, interval=0.25)

        # A WebSocket handshake at every printed WebSocket URL.
        for node in printed.nodes:
            ws = await http.ws_connect(node.ws)
            await ws.close()

    # The NATS servers are one cluster: a message published at server 3 reaches server 1.
    (_, url1, _), (_, url3, _) = printed.nats[0], printed.nats[2]
    sub_nc, pub_nc = await nats.connect(url1), await nats.connect(url3)
    try:
        got = asyncio.Event()

        async def on_msg(msg: object) -> None:
            got.set()

        await sub_nc.subscribe("demo.test", cb=on_msg)
        await sub_nc.flush()

        async def delivered() -> bool:
            await pub_nc.publish("demo.test", b"hello")
            await pub_nc.flush()
            await asyncio.sleep(0.05)
            return got.is_set()

        await eventually(delivered, timeout=20, interval=0.1)
    finally:
        await sub_nc.close()
        await pub_nc.close()

    code = await asyncio.to_thread(demo.finish)
    assert code == 0, demo.output()
    still = [pid for pid, since in tree.items() if alive(pid, since)]
    assert still == [], f"left running: {still}\n{demo.output()}"
    assert not printed.data_root.exists(), "the demo's temporary data root was not removed"
    assert demo.lines[-1] == "stopped.", demo.output()


async def test_a_given_data_root_is_kept(demo_factory: type[Demo], tmp_path: Path):
    root = tmp_path / "mesh"
    demo = demo_factory("--nodes", "2", "--data-root", str(root))
    printed = await asyncio.wait_for(asyncio.to_thread(demo.read_until_ready), 180)
    assert printed.data_root == root.resolve()
    assert await asyncio.to_thread(demo.finish) == 0, demo.output()
    for name in ("node-1", "node-2"):
        assert (root / name / "mesh.json").exists()
        assert (root / name / "node.key").exists()
    assert (root / "node-1" / "operator.key").exists()
    assert not (root / "node-2" / "operator.key").exists()  # only the operator's node has it


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--nodes", "0"], 1, "--nodes must be"),
        (["--nodes", "2", "--base-port", "80"], 1, "--base-port must be"),
        (["--nodes", "2", "--data-root", "{full}"], 1, "is not empty"),
    ],
)
def test_refuses_bad_arguments_before_starting_anything(
    tmp_path: Path, args: list[str], code: int, message: str
):
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("mine")
    args = [a.replace("{full}", str(full)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "mesh", "demo", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == code, result
    assert message in result.stderr, result.stderr
    assert (full / "something").read_text() == "mine"
