"""Mesh-building helpers for the federation integration tests: real nats-servers (standalone or
a routed cluster) and real `yanzi up` nodes enrolled with the operator flow of docs/federation.md
(`MeshFiles.init` on the first node, an invite and a `join` per other node).

Everything binds to 127.0.0.1. Protocol timers are shrunk through the documented environment
overrides (YANZI_FED_*), never by patching code, so the nodes under test are the shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from federation.meshfiles import MeshFiles
from federation.natsd import EmbeddedNats, NatsServerConfig
from node.identity import load_or_create_key, node_id
from tests.helpers import NodeProcess, eventually
from tests.integration.conftest import PASSWORD, Api, Login, device_keys

HOST = "127.0.0.1"
INVITE_EXPIRY_S = 600

# Shrunk timers (docs/federation.md): hellos every 0.2 s, a peer silent for 3 s is down, a
# periodic anti-entropy round every ~1 s. Rate limits are raised so a test can write a few
# hundred ops from one device quickly; zeroconf is off (nothing here needs the LAN).
FAST_ENV = {
    "YANZI_FED_HELLO_INTERVAL_S": "0.2",
    "YANZI_FED_PEER_TIMEOUT_S": "3",
    "YANZI_FED_AE_INTERVAL_S": "1",
    "YANZI_FED_REQUEST_TIMEOUT_S": "3",
    "YANZI_FED_DISCOVERY": "false",
    "YANZI_RATE_PER_S": "100000",
    "YANZI_RATE_BURST": "100000",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS hands out now (all sockets held until every port is chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


# -- NATS --------------------------------------------------------------------------------------


class NatsServer:
    """One real nats-server on a fixed client port, which can be stopped and started again on
    that same port (EmbeddedNats supervises a running server; stopping it ends supervision)."""

    def __init__(self, config: NatsServerConfig, work_dir: Path) -> None:
        assert config.port, "a fixed port, so a restart comes back where clients look"
        self.config = config
        self.work_dir = work_dir
        self.server: EmbeddedNats | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.config.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> NatsServer:
        assert self.server is None
        server = EmbeddedNats(self.config, self.work_dir, restart_delay_s=0.2)
        await server.start()
        self.server = server
        return self

    async def stop(self) -> None:
        """End the server process (its clients see the connection drop)."""
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def kill(self) -> None:
        """kill -9 the server process, and end its supervision (no automatic restart)."""
        assert self.server is not None and self.server.pid is not None
        os.kill(self.server.pid, signal.SIGKILL)
        # stop() marks the server as stopping before it yields, so the supervisor never
        # restarts the killed process; the SIGTERM it would send finds nothing to end.
        await self.stop()


def standalone_nats(root: Path, name: str = "nats") -> NatsServer:
    """One nats-server on a free port (not started)."""
    (port,) = free_ports(1)
    return NatsServer(NatsServerConfig(host=HOST, port=port, server_name=name), root / name)


def nats_cluster(
    root: Path, size: int = 2, name: str = "yanzi-test", *, advertise: bool = True
) -> list[NatsServer]:
    """`size` nats-servers routed into one cluster (not started).

    With `advertise` False the servers do not tell clients about each other (`no_advertise`),
    so a client stays with the one server it was given: stopping that server then cuts its
    node off (a partition) instead of the client failing over to another server.
    """
    ports = free_ports(2 * size)
    clients, routes_at = ports[:size], ports[size:]
    servers = []
    for i in range(size):
        routes = [f"nats-route://{HOST}:{p}" for j, p in enumerate(routes_at) if j != i]
        # The whole block as raw lines: NatsServerConfig has no field for no_advertise, and a
        # second `cluster {}` block would replace the first.
        block = (
            "cluster {",
            f'  name: "{name}"',
            f"  listen: {HOST}:{routes_at[i]}",
            "  routes: [" + ", ".join(f'"{r}"' for r in routes) + "]",
            f"  no_advertise: {'false' if advertise else 'true'}",
            "}",
        )
        config = NatsServerConfig(host=HOST, port=clients[i], server_name=f"{name}-{i + 1}",
                                  extra=block)  # fmt: skip
        servers.append(NatsServer(config, root / f"nats-{i + 1}"))
    return servers


async def wait_routed(servers: Sequence[NatsServer], timeout: float = 20.0) -> None:
    """Until a message published on each server reaches a subscriber on every other one."""
    import nats  # local: only the cluster helpers need a client

    async def crosses(src: NatsServer, dst: NatsServer) -> bool:
        sub_nc = await nats.connect(dst.url, connect_timeout=2)
        pub_nc = await nats.connect(src.url, connect_timeout=2)
        try:
            subject = f"probe.{os.urandom(4).hex()}"
            sub = await sub_nc.subscribe(subject)
            await sub_nc.flush()

            async def probe() -> bool:
                await pub_nc.publish(subject, b"x")
                await pub_nc.flush()
                with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                    await sub.next_msg(timeout=0.2)
                    return True
                return False

            return bool(await eventually(probe, timeout=timeout, interval=0.05))
        finally:
            await pub_nc.close()
            await sub_nc.close()

    for src in servers:
        for dst in servers:
            if src is not dst:
                await crosses(src, dst)


# -- mesh nodes --------------------------------------------------------------------------------


@dataclass
class MeshNode:
    name: str
    region: str
    nats: NatsServer
    proc: NodeProcess
    node_id: str

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def data_dir(self) -> Path:
        return self.proc.data_dir

    def audit_entries(self) -> list[dict[str, Any]]:
        path = self.data_dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Mesh:
    """Nodes of one mesh in a test's tmp dir; `close()` stops every node, then every server."""

    root: Path
    servers: list[NatsServer] = field(default_factory=list)
    nodes: list[MeshNode] = field(default_factory=list)
    operator_dir: Path | None = None

    def _node(self, name: str, region: str, nats: NatsServer, env: dict[str, str]) -> MeshNode:
        data_dir = self.root / name
        proc = NodeProcess(
            data_dir,
            env={**FAST_ENV, "YANZI_FED_NATS_URL": nats.url, "YANZI_REGION": region, **env},
        )
        node = MeshNode(name, region, nats, proc, node_id(load_or_create_key(data_dir)))
        self.nodes.append(node)
        return node

    def init(self, name: str, region: str, nats: NatsServer, **env: str) -> MeshNode:
        """The operator's first node: `yanzi mesh init` in its data dir (not started yet)."""
        node = self._node(name, region, nats, env)
        MeshFiles(node.data_dir).init(region, [], now_ms())
        self.operator_dir = node.data_dir
        return node

    def invite(self, region: str, nats: NatsServer, *, expires_s: int = INVITE_EXPIRY_S,
               issued_ms: int | None = None) -> str:  # fmt: skip
        assert self.operator_dir is not None, "init a node first"
        issued = now_ms() if issued_ms is None else issued_ms
        return MeshFiles(self.operator_dir).invite(region, expires_s, [nats.url], issued)

    def join(
        self, name: str, region: str, nats: NatsServer, token: str | None = None, **env: str
    ) -> MeshNode:
        """A new node enrolled with an invite (a fresh one unless `token` is given)."""
        node = self._node(name, region, nats, env)
        token = token or self.invite(region, nats)
        MeshFiles(node.data_dir).join(token, region, [], now_ms())
        return node

    def adopt(self, data_dir: Path, region: str, nats: NatsServer, **env: str) -> MeshNode:
        """A node whose data dir was prepared elsewhere (e.g. by the `yanzi join` CLI)."""
        return self._node(data_dir.name, region, nats, env)

    async def standalone_nats(self, name: str = "nats") -> NatsServer:
        server = standalone_nats(self.root, name)
        self.servers.append(server)  # registered first: close() stops it whatever happens
        return await server.start()

    async def nats_cluster(self, size: int = 2, *, advertise: bool = True) -> list[NatsServer]:
        """A routed cluster; returns once messages cross every route."""
        servers = nats_cluster(self.root, size, advertise=advertise)
        self.servers += servers
        await asyncio.gather(*(s.start() for s in servers))
        await wait_routed(servers)
        return servers

    async def start(self, *nodes: MeshNode) -> None:
        """Start node processes concurrently (NodeProcess.start blocks: run it on threads)."""
        await asyncio.gather(*(asyncio.to_thread(n.proc.start) for n in nodes))

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(n.proc.stop) for n in self.nodes))
        await asyncio.gather(*(s.stop() for s in self.servers))


# -- looking at nodes through their public API ---------------------------------------------------


async def status(http: aiohttp.ClientSession, node: MeshNode) -> dict[str, Any]:
    async with http.get(node.url + "/v1/mesh/status") as resp:
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


def members_up(found: dict[str, Any]) -> dict[str, bool]:
    """{node id: up} of the members in a /v1/mesh/status answer."""
    return {m["node"]: bool(m["up"]) for m in found.get("members") or []}


async def wait_mesh_up(
    http: aiohttp.ClientSession, nodes: Sequence[MeshNode], timeout: float = 30.0
) -> None:
    """Until every node lists exactly these nodes as members, all up."""
    want = {n.node_id for n in nodes}

    async def all_up() -> bool:
        for node in nodes:
            seen = members_up(await status(http, node))
            if set(seen) != want or not all(seen.values()):
                return False
        return True

    await eventually(all_up, timeout=timeout, interval=0.1)


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


async def metric(http: aiohttp.ClientSession, node: MeshNode, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (labels must match exactly); 0 if absent."""
    async with http.get(node.url + "/metrics") as resp:
        text = await resp.text()
    want = {k: v for k, v in labels.items()}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == want:
            return float(match[3])
    return 0.0


async def metric_reaches(
    http: aiohttp.ClientSession, node: MeshNode, value: float, name: str, **labels: str
) -> bool:
    return await metric(http, node, name, **labels) >= value


async def login_when_replicated(api: Api, user: str, device: str, timeout: float = 20.0) -> Login:
    """Log in at `api`'s node once the user's account (registered elsewhere) has reached it."""

    async def attempt() -> Login | None:
        code, body = await api.call(
            "POST", "/v1/login",
            json_body={"username": user, "password": PASSWORD, "device": device,
                       "keys": device_keys()},
        )  # fmt: skip
        return Login(body["user"], body["device"], body["token"]) if code == 200 else None

    result: Login = await eventually(attempt, timeout=timeout, interval=0.1)
    return result


async def all_ops(api: Api, who: Login, cursor: str = "") -> tuple[list[dict[str, Any]], str]:
    """Every op a full sync returns (following `more`), and the final cursor."""
    ops, cursor, _ = await api.sync_all(who, cursor)
    return ops, cursor


async def full_history(api: Api, who: Login, conv: str) -> list[dict[str, Any]]:
    """Every visible message of a conversation, oldest first, by paging history backwards."""
    messages: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        page = await api.history(who, conv, before=before, limit=200)
        messages = page["messages"] + messages
        if not page["more"]:
            return messages
        before = page["messages"][0]["op_id"]


async def conv_vv(api: Api, who: Login, conv: str) -> dict[str, Any] | None:
    code, body = await api.call("GET", f"/v1/conversations/{conv}", who=who)
    return body["version_vector"] if code == 200 else None


def op_ids(ops: Sequence[dict[str, Any]]) -> list[str]:
    """Op ids of wire ops, recomputed as a client does (docs/protocol.md §5.2)."""
    from crdt import Op

    return [Op.from_json(op).op_id for op in ops]


async def send_many(
    api: Api, who: Login, conv: str, texts: Sequence[str], *, prefix: str, parallel: int = 16
) -> list[dict[str, Any]]:
    """POST /v1/ops for each text, `parallel` at a time, with unique cmids; the acks in order."""
    gate = asyncio.Semaphore(parallel)

    async def one(i: int, text: str) -> dict[str, Any]:
        async with gate:
            return await api.message(who, conv, text, cmid=f"{prefix}-{i}")

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
