"""deploy/ is real: every nats-server config parses (`nats-server -t`), and each topology, started
from the committed files, connects the way deploy/README.md says — routes join the cluster, leaf
nodes meet at the hub, gateways join the clusters — proven by messages crossing between clients
of different servers. Node configs pass `yanzi config check`; the systemd units pass
`systemd-analyze verify` where it exists.

The only change made to a committed config before running it is its ports: every
`127.0.0.1:PORT` of one topology is mapped to a free port (the same map for all its files), so
the test can run beside anything else on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from federation.natsd import nats_server_binary
from tests.helpers import ROOT, eventually

DEPLOY = ROOT / "deploy"
NATS_DIR = DEPLOY / "nats"
ALL_CONFS = sorted(NATS_DIR.glob("*/*.conf"))
NODE_TOMLS = sorted((DEPLOY / "nodes").glob("*.toml"))
ADDR = re.compile(r"127\.0\.0\.1:(\d+)")


def test_deploy_has_the_three_topologies_and_node_configs():
    assert {p.parent.name for p in ALL_CONFS} == {"cluster", "leafnodes", "supercluster"}
    assert {p.stem for p in NODE_TOMLS} == {"cn-east", "cn-south", "eu-west"}
    for name in ("README.md", "systemd/yanzi.service", "container/Containerfile"):
        assert (DEPLOY / name).is_file(), name


# -- syntax and shared settings --------------------------------------------------------------


@pytest.mark.parametrize("conf", ALL_CONFS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_nats_config_is_valid(conf: Path):
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = conf.read_text()
    # Settings every server must share (a message crosses routes, leaf links and gateways
    # unsplit, so max_payload must agree everywhere).
    assert re.search(r"^max_payload: 1MB$", text, re.M), conf
    assert re.search(r"^ping_interval: ", text, re.M) and re.search(r"^ping_max: ", text, re.M)
    # Every listener is host:port on loopback, so the port map below covers them all and the
    # example never listens on a public interface by accident.
    for line in re.findall(r"^\s*(?:listen|http)\s*:.*$", text, re.M):
        assert ADDR.search(line), f"{conf}: {line.strip()}"
    assert "0.0.0.0" not in text and not re.search(r"^\s*port\s*:", text, re.M)


# -- running the topologies -----------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _setting(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    assert match is not None, pattern
    return match[1]


class Topology:
    """One folder of deploy/nats/ copied to tmp with its ports remapped, and its servers."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        sources = sorted((NATS_DIR / name).glob("*.conf"))
        texts = {p.stem: p.read_text() for p in sources}
        ports = sorted({int(p) for t in texts.values() for p in ADDR.findall(t)})
        self.port_map = dict(zip(ports, _free_ports(len(ports)), strict=True))
        self.confs: dict[str, Path] = {}
        self.http: dict[str, int] = {}
        self.client: dict[str, str] = {}
        for name_, text in texts.items():
            moved = ADDR.sub(lambda m: f"127.0.0.1:{self.port_map[int(m[1])]}", text)
            path = self.dir / f"{name_}.conf"
            path.write_text(moved)
            self.confs[name_] = path
            self.http[name_] = int(_setting(r"^http: 127\.0\.0\.1:(\d+)", moved))
            self.client[name_] = "nats://" + _setting(r"^listen: (\S+)", moved)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        for name in names or tuple(self.confs):
            log = (self.dir / f"{name}.log").open("wb")
            self.procs[name] = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.confs[name])],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        for name in names or tuple(self.confs):
            self._wait_healthy(name)

    def _wait_healthy(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited:\n{self.log(name)}")
            with contextlib.suppress(OSError):
                if self.monitor(name, "healthz").get("status") == "ok":
                    return
            time.sleep(0.05)
        raise AssertionError(f"{name} never became healthy:\n{self.log(name)}")

    def monitor(self, name: str, endpoint: str) -> Any:
        url = f"http://127.0.0.1:{self.http[name]}/{endpoint}"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Any]:
    made: list[Topology] = []

    def make(name: str) -> Topology:
        topo = Topology(name, tmp_path)
        made.append(topo)
        return topo

    yield make
    for topo in made:
        topo.stop()


_counter = itertools.count()


async def assert_crosses(publisher: str, subscribers: list[str], timeout: float = 20.0) -> None:
    """A message published by a client of `publisher` reaches a client of every subscriber
    server, and a request from `publisher` is answered across (anti-entropy is request/reply).
    Interest propagates asynchronously, so publish until it arrives."""
    subject = f"yanzi.deploy.test.{next(_counter)}"
    pub = await nats.connect(publisher, connect_timeout=5)
    subs = [await nats.connect(url, connect_timeout=5) for url in subscribers]
    try:
        got = [asyncio.Event() for _ in subs]
        for nc, event in zip(subs, got, strict=True):

            async def on_msg(msg: Any, event: asyncio.Event = event) -> None:
                if msg.data == b"hello across":
                    event.set()

            await nc.subscribe(subject, cb=on_msg)
            await nc.flush()

        async def all_received() -> bool:
            await pub.publish(subject, b"hello across")
            await pub.flush()
            await asyncio.sleep(0.05)
            return all(e.is_set() for e in got)

        await eventually(all_received, timeout=timeout, interval=0.1)

        responder = subs[-1]

        async def answer(msg: Any) -> None:
            await responder.publish(msg.reply, b"answer:" + msg.data)

        await responder.subscribe(subject + ".req", cb=answer)
        await responder.flush()

        async def answered() -> bool:
            try:
                reply = await pub.request(subject + ".req", b"vv", timeout=0.5)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False
            return reply.data == b"answer:vv"

        await eventually(answered, timeout=timeout, interval=0.1)
    finally:
        for nc in [pub, *subs]:
            await nc.close()


async def test_cluster_routes_join_three_servers(topology: Any):
    topo = topology("cluster")
    topo.start()
    names = set(topo.confs)
    assert names == {"n1", "n2", "n3"}

    def routed() -> bool:
        return all(
            {r["remote_name"] for r in topo.monitor(n, "routez")["routes"]} == names - {n}
            for n in names
        )

    await eventually(routed, timeout=20, interval=0.1)
    for name in names:
        varz = topo.monitor(name, "varz")
        assert varz["max_payload"] == 1 << 20 and varz["cluster"]["name"] == "yanzi"
    await assert_crosses(topo.client["n1"], [topo.client["n2"], topo.client["n3"]])
    await assert_crosses(topo.client["n3"], [topo.client["n1"]])


async def test_leaf_nodes_meet_at_the_hub(topology: Any):
    topo = topology("leafnodes")
    topo.start("hub")
    leaves = sorted(n for n in topo.confs if n != "hub")
    assert leaves == ["leaf-cn-east", "leaf-cn-south", "leaf-eu-west"]
    topo.start(*leaves)

    def all_leaves_connected() -> bool:
        return {leaf["name"] for leaf in topo.monitor("hub", "leafz")["leafs"]} == set(leaves)

    await eventually(all_leaves_connected, timeout=20, interval=0.1)
    for leaf in leaves:
        assert topo.monitor(leaf, "varz")["max_payload"] == 1 << 20
    # From a client on one leaf to a client on the hub and a client on another leaf.
    await assert_crosses(
        topo.client["leaf-cn-east"], [topo.client["hub"], topo.client["leaf-eu-west"]]
    )
    await assert_crosses(topo.client["leaf-eu-west"], [topo.client["leaf-cn-south"]])


async def test_leaf_keeps_serving_its_region_without_the_hub(topology: Any):
    topo = topology("leafnodes")
    topo.start()
    await eventually(lambda: topo.monitor("leaf-cn-east", "leafz")["leafs"], timeout=20)
    os.kill(topo.procs["hub"].pid, signal.SIGTERM)
    topo.procs["hub"].wait(10)
    await eventually(lambda: not topo.monitor("leaf-cn-east", "leafz")["leafs"], timeout=20)
    # Two clients of the same regional leaf still talk: the region is cut off, not down.
    await assert_crosses(topo.client["leaf-cn-east"], [topo.client["leaf-cn-east"]])


async def test_supercluster_gateways_join_two_clusters(topology: Any):
    topo = topology("supercluster")
    topo.start()
    clusters = {"asia": {"a1", "a2"}, "europe": {"e1", "e2"}}
    assert set(topo.confs) == clusters["asia"] | clusters["europe"]

    def joined() -> bool:
        for cluster, members in clusters.items():
            other = next(c for c in clusters if c != cluster)
            for name in members:
                gatewayz = topo.monitor(name, "gatewayz")
                routes = {r["remote_name"] for r in topo.monitor(name, "routez")["routes"]}
                if gatewayz["name"] != cluster or routes != members - {name}:
                    return False
                if other not in gatewayz.get("outbound_gateways", {}):
                    return False
        return True

    await eventually(joined, timeout=30, interval=0.2)
    await assert_crosses(topo.client["a1"], [topo.client["e2"], topo.client["a2"]])
    await assert_crosses(topo.client["e1"], [topo.client["a2"]])


# -- node configs, systemd, container ---------------------------------------------------------


@pytest.mark.parametrize("toml", NODE_TOMLS, ids=lambda p: p.stem)
def test_node_config_passes_config_check(toml: Path):
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "config", "check", str(toml)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"{toml}: OK")
    config = tomllib.loads(toml.read_text())
    # Both tables, so no key silently lands at the top level (which would be read as [node]).
    assert set(config) == {"node", "federation"}
    assert config["node"]["region"] == toml.stem
    # The node connects to its own region's leaf from deploy/nats/leafnodes/.
    leaf = (NATS_DIR / "leafnodes" / f"leaf-{toml.stem}.conf").read_text()
    assert config["federation"]["nats_url"] == "nats://" + _setting(r"^listen: (\S+)", leaf)


def test_systemd_units_verify(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point the units' venv at a folder holding
    # the real yanzi and nats-server executables, wherever this environment installed them.
    scripts = tmp_path / "bin"
    scripts.mkdir()
    yanzi = shutil.which("yanzi") or str(Path(sysconfig.get_path("scripts")) / "yanzi")
    (scripts / "yanzi").symlink_to(yanzi)
    (scripts / "nats-server").symlink_to(nats_server_binary())
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} >= {"yanzi.service"}
    for unit in units:
        # The one change: the venv the units expect is this interpreter's scripts dir, because
        # verify checks that ExecStart's program exists.
        text = unit.read_text()
        assert "/opt/yanzi/venv/bin/" in text
        (tmp_path / unit.name).write_text(text.replace("/opt/yanzi/venv/bin", str(scripts)))
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(u.name in line for u in units)
    ]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_containerfile_copies_every_package(tmp_path: Path):
    """Not built here (no container engine): check what it copies exists and is complete."""
    text = (DEPLOY / "container" / "Containerfile").read_text()
    assert "not built in ci" in text.lower()
    copied = set()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not parts[1].startswith("--from"):
            for source in parts[1:-1]:
                assert (ROOT / source).exists(), source
                copied.add(source)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= copied, packages - copied
    assert pyproject["project"]["readme"] in copied
