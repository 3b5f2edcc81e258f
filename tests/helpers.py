"""Test helpers shared by the node, SDK and integration tests: real node processes, waiting."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {last!r})")
        await asyncio.sleep(interval)


class NodeProcess:
    """`yanzi up` as a real subprocess on 127.0.0.1 with a free port and its own data dir."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, port: int = 0):
        self.data_dir = Path(data_dir)
        self.extra_env = {"YANZI_PWHASH_LEVEL": "min", **(env or {})}
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 30.0) -> NodeProcess:
        env = {**os.environ, **self.extra_env}
        cmd = [
            sys.executable, "-m", "node.cli", "up",
            "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node exited early; log:\n{self.read_log()}")
            match = _LISTENING.search(line)
            if match:
                self.url = match.group(1)
                # Keep the same port across restarts so clients can reconnect.
                self.port = int(self.url.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError(f"node did not start; log:\n{self.read_log()}")
        self._wait_ready(deadline)
        return self

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node never became ready; log:\n{self.read_log()}")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    def read_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for a graceful exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
