"""`yanzi mesh demo`: a whole mesh on loopback in one command (DESIGN decision 10).

It starts an N-server NATS cluster (real nats-servers from the wheel, joined by routes), makes a
mesh with the ordinary operator flow (`MeshFiles.init` on node 1, an invite per other node,
`MeshFiles.join` in each fresh data dir), starts N `yanzi up` processes, each attached with
`--nats` to its own cluster server and labelled with its own region (demo-1..N), waits until
they are ready and see each other, prints their URLs, and runs until SIGINT/SIGTERM. Then it
stops the nodes first (so they drain their NATS connections), then the NATS servers, every
process by its PID, and removes the data root if it made one.

Ports: with ``base_port`` 0 the OS picks free ones; otherwise node i (from 0) gets HTTP
``base+i``, NATS client ``base+100+i`` and NATS cluster ``base+200+i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from federation.errors import FederationError
from federation.meshfiles import MeshFiles
from federation.natsd import EmbeddedNats, NatsServerConfig

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_NODES = 9  # each node is a Python process of ~60 MB: plenty for a laptop demo
CLUSTER_NAME = "yanzi-demo"
PORT_STRIDE = 100  # fixed layout: HTTP base+i, NATS base+100+i, cluster base+200+i
INVITE_EXPIRY_S = 600
READY_TIMEOUT_S = 60.0
MESH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class DemoError(FederationError):
    """The demo cannot start; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class DemoPorts:
    http: int
    nats: int
    cluster: int


@dataclass(slots=True)
class DemoNode:
    index: int  # 1-based
    data_dir: Path
    ports: DemoPorts
    proc: asyncio.subprocess.Process | None = None
    log_file: IO[bytes] | None = None

    @property
    def region(self) -> str:
        return f"demo-{self.index}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.ports.http}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.ports.http}/v1/ws"

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.ports.nats}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_name(f"{self.data_dir.name}.log")


def plan_ports(nodes: int, base_port: int) -> list[DemoPorts]:
    """Three ports per node: the fixed layout from `base_port`, or free ones if it is 0."""
    if base_port == 0:
        found = _free_ports(3 * nodes)
        return [DemoPorts(*found[3 * i : 3 * i + 3]) for i in range(nodes)]
    if not 1024 <= base_port <= 65535 - 2 * PORT_STRIDE - nodes:
        raise DemoError(f"--base-port must be 1024-{65535 - 2 * PORT_STRIDE - nodes}")
    plan = [
        DemoPorts(base_port + i, base_port + PORT_STRIDE + i, base_port + 2 * PORT_STRIDE + i)
        for i in range(nodes)
    ]
    for ports in plan:
        for port in (ports.http, ports.nats, ports.cluster):
            if not _port_is_free(port):
                raise DemoError(f"port {port} is in use: pick another --base-port (or 0)")
    return plan


def _free_ports(count: int) -> list[int]:
    """Ports the OS hands out now; all sockets stay open until every port is chosen, so the
    list has no duplicates (another program could still take one before we bind it)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class MeshDemo:
    """Owns every process and folder of one demo run; `stop()` ends all of them."""

    nodes: int = 3
    base_port: int = 0
    data_root: Path | None = None
    env: Mapping[str, str] | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    root: Path = field(init=False, default=Path())
    members: list[DemoNode] = field(init=False, default_factory=list)
    nats: list[EmbeddedNats] = field(init=False, default_factory=list)
    mesh_id: str = field(init=False, default="")
    mesh_formed: bool = field(init=False, default=False)
    _made_root: bool = field(init=False, default=False)
    _nats_log: logging.Handler | None = field(init=False, default=None)

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise DemoError(f"--nodes must be 1-{MAX_NODES}, not {self.nodes}")
        self._make_root()
        plan = plan_ports(self.nodes, self.base_port)
        self.members = [
            DemoNode(i + 1, self.root / f"node-{i + 1}", ports) for i, ports in enumerate(plan)
        ]
        self._say(f"starting a {self.nodes}-server NATS cluster ...")
        await self._start_nats()
        self._make_mesh()
        self._say(f"starting {self.nodes} nodes in mesh {self.mesh_id} ...")
        for node in self.members:
            await self._spawn_node(node)
        await _all_or_none(self._wait_ready(node) for node in self.members)
        self.mesh_formed = await self._wait_mesh()

    def _make_root(self) -> None:
        if self.data_root is None:
            self.root = Path(tempfile.mkdtemp(prefix="yanzi-demo-"))
            self._made_root = True
            return
        self.root = Path(self.data_root).resolve()
        if self.root.exists() and any(self.root.iterdir()):
            raise DemoError(f"{self.root} is not empty: pass a new or empty --data-root")
        self.root.mkdir(parents=True, exist_ok=True)

    async def _start_nats(self) -> None:
        # nats-server logs "Error trying to connect to route" while its peers come up: keep
        # those lines in a file rather than on the newcomer's terminal.
        natsd_log = logging.getLogger("federation.natsd")
        self._nats_log = logging.FileHandler(self.root / "nats.log")
        natsd_log.addHandler(self._nats_log)
        natsd_log.propagate = False
        routes = [f"nats-route://{HOST}:{node.ports.cluster}" for node in self.members]
        for node in self.members:
            config = NatsServerConfig(
                host=HOST,
                port=node.ports.nats,
                server_name=f"demo-nats-{node.index}",
                cluster_name=CLUSTER_NAME,
                cluster_port=node.ports.cluster,
                routes=tuple(r for r in routes if not r.endswith(f":{node.ports.cluster}")),
            )
            # Registered before it starts, so stop() ends it even if start-up is interrupted.
            self.nats.append(EmbeddedNats(config, self.root / f"nats-{node.index}"))
        await _all_or_none(server.start() for server in self.nats)

    def _make_mesh(self) -> None:
        """The operator flow of docs: init on node 1, then an invite and a join per node."""
        first, *others = self.members
        now_ms = time.time_ns() // 1_000_000
        operator = MeshFiles(first.data_dir)
        mesh_id, _ = operator.init(first.region, [first.http_url], now_ms)
        self.mesh_id = mesh_id
        for node in others:
            token = operator.invite(node.region, INVITE_EXPIRY_S, [node.nats_url], now_ms)
            MeshFiles(node.data_dir).join(token, node.region, [node.http_url], now_ms)

    async def _spawn_node(self, node: DemoNode) -> None:
        node.log_file = open(node.log_path, "ab")  # noqa: SIM115 - closed by stop()
        # A session of its own: Ctrl-C in the terminal reaches the demo only, which then
        # stops the nodes in order (before the NATS servers they are draining into).
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node.cli", "up",
            "--data-dir", str(node.data_dir), "--host", HOST, "--port", str(node.ports.http),
            "--region", node.region, "--nats", node.nats_url,
            stdin=asyncio.subprocess.DEVNULL, stdout=node.log_file, stderr=node.log_file,
            env=dict(os.environ if self.env is None else self.env),
            start_new_session=True,
        )  # fmt: skip
        log.info("node %s pid %d", node.region, node.proc.pid)

    async def _wait_ready(self, node: DemoNode) -> None:
        assert node.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc.returncode is not None:
                raise DemoError(
                    f"node {node.region} exited with {node.proc.returncode} during start-up; "
                    f"its log ({node.log_path}) ends:\n{_tail(node.log_path)}"
                )
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(_get_json, node.http_url + "/readyz")
                return
            await asyncio.sleep(0.1)
        raise DemoError(f"node {node.region} not ready after {READY_TIMEOUT_S:.0f} s")

    async def _wait_mesh(self) -> bool:
        """True once every node reports every member up (hellos crossed the cluster)."""
        deadline = time.monotonic() + MESH_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(await asyncio.gather(*(self._sees_all(node) for node in self.members))):
                return True
            await asyncio.sleep(0.2)
        return False

    async def _sees_all(self, node: DemoNode) -> bool:
        try:
            status = await asyncio.to_thread(_get_json, node.http_url + "/v1/mesh/status")
        except (OSError, ValueError):
            return False
        members = status.get("members") or []
        return len(members) == self.nodes and all(m.get("up") for m in members)

    # -- run ------------------------------------------------------------------------------

    async def wait(self, stop: asyncio.Event) -> int:
        """Until `stop` is set (0) or a node exits by itself (1)."""
        waits: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait(), name="demo-stop")}
        for node in self.members:
            assert node.proc is not None
            waits.add(asyncio.create_task(node.proc.wait(), name=f"demo-{node.region}"))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if stop.is_set():
            return 0
        for node in self.members:
            assert node.proc is not None
            if node.proc.returncode is not None:
                print(
                    f"yanzi: node {node.region} exited with {node.proc.returncode}; its log "
                    f"({node.log_path}) ends:\n{_tail(node.log_path)}",
                    file=sys.stderr,
                )
        return 1

    def table(self) -> str:
        rows = [
            f"Yanzi mesh demo: {self.nodes} nodes in mesh {self.mesh_id}, "
            f'NATS cluster "{CLUSTER_NAME}" of {len(self.nats)} servers',
            "",
            f"  {'region':8} {'HTTP':24} {'WebSocket':30} {'NATS':24} pid",
        ]
        for node in self.members:
            pid = node.proc.pid if node.proc else "-"
            rows.append(
                f"  {node.region:8} {node.http_url:24} {node.ws_url:30} {node.nats_url:24} {pid}"
            )
        rows += ["", f"  {'nats-server':12} {'client':24} {'cluster route':30} pid"]
        for node, server in zip(self.members, self.nats, strict=True):
            route = f"nats-route://{HOST}:{node.ports.cluster}"
            rows.append(
                f"  {server.config.server_name:12} {server.url:24} {route:30} {server.pid or '-'}"
            )
        first = self.members[0]
        kept = "removed when the demo stops" if self._made_root else "kept"
        warning = "Warning: the nodes do not all see each other yet; try `yanzi mesh status`."
        rows += [
            "",
            f"Data and logs: {self.root} ({kept})",
            "" if self.mesh_formed else warning,
            "Try it:",
            f"  yanzi mesh status --url {first.http_url}",
            f"  curl -s -X POST {first.http_url}/v1/register -H 'Content-Type: application/json' "
            """-d '{"username": "alice", "password": "correct horse battery"}'""",
            "  then point the Python SDK (README) or any WebSocket client at any node above.",
            "",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(rows)

    # -- stop -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Nodes first (SIGTERM, then SIGKILL after a grace period), then NATS, by PID."""
        running = [n for n in self.members if n.proc is not None and n.proc.returncode is None]
        if running:
            self._say(f"stopping {len(running)} nodes ...")
        await asyncio.gather(*(self._stop_node(node) for node in running))
        for node in self.members:
            if node.log_file is not None:
                node.log_file.close()
        if self.nats:
            self._say(f"stopping {len(self.nats)} nats-servers ...")
        await asyncio.gather(*(server.stop() for server in self.nats))
        if self._nats_log is not None:
            natsd_log = logging.getLogger("federation.natsd")
            natsd_log.removeHandler(self._nats_log)
            natsd_log.propagate = True
            self._nats_log.close()
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)
        self._say("stopped.")

    async def _stop_node(self, node: DemoNode) -> None:
        proc = node.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("node %s ignored SIGTERM; killing pid %d", node.region, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


async def _all_or_none(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; on the first failure cancel (and await) the rest, then raise it."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def run_demo(demo: MeshDemo) -> int:
    """Start, print the table, wait for SIGINT/SIGTERM, stop. 0 on a requested stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(demo.start(), name="demo-start")
    stopping = asyncio.create_task(stop.wait(), name="demo-signal")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal during start-up: give up starting, clean up
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        try:
            starting.result()
        except (FederationError, OSError, TimeoutError) as exc:
            print(f"yanzi: mesh demo failed: {exc}", file=sys.stderr)
            return 1
        demo._say(demo.table())
        return await demo.wait(stop)
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        await demo.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(nodes: int = 3, base_port: int = 0, data_root: Path | None = None) -> int:
    """`yanzi mesh demo`: blocks until Ctrl-C or SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_demo(MeshDemo(nodes=nodes, base_port=base_port, data_root=data_root)))
