"""The processes bench.node_bench measures: `yanzi up` or the raw relay, read through /proc.

Also the optional py-spy profiler attached to the node for one measurement window, and the
summary of its collapsed stacks.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")

#: What the bench changes in the node's environment (docs/benchmarks.md says why).
NODE_ENV = {
    "YANZI_PWHASH_LEVEL": "min",  # setting up 10k accounts takes seconds, not minutes
    "YANZI_RATE_PER_S": "1000000",  # the per-device send limit (50/s) would cap each sender
    "YANZI_RATE_BURST": "1000000",
    "YANZI_MAP_SIZE_MB": "2048",  # pre-sized LMDB map: no map doubling inside a window
}


class Server:
    """A subprocess that prints "... listening on http://HOST:PORT" once it serves."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.is_yanzi = name.startswith("yanzi")

    def start(self, timeout: float = 30.0) -> Server:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            if match := _LISTENING.search(line):
                self.url = match.group(1)
                break
        else:
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
        if self.is_yanzi:
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
        raise RuntimeError(f"{self.name} never became ready; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1))

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds so far: (every thread, the main thread = the event loop)."""
        return (
            _stat_cpu_s(f"/proc/{self.pid}/stat"),
            _stat_cpu_s(f"/proc/{self.pid}/task/{self.pid}/stat"),
        )

    def metric(self, name: str) -> float:
        """One unlabelled sample from the node's /metrics."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return math.nan

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def _stat_cpu_s(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def system_busy_s() -> float:
    """Busy CPU-seconds of the whole machine so far (/proc/stat, all CPUs)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def yanzi_node(tmp: Path, name: str, extra_env: dict[str, str]) -> Server:
    cmd = [
        sys.executable, "-m", "node.cli", "up",
        "--data-dir", str(tmp / name), "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    return Server(f"yanzi:{name}", cmd, {**NODE_ENV, **extra_env}, tmp / f"{name}.log")


def raw_relay(tmp: Path) -> Server:
    cmd = [sys.executable, "-m", "bench.raw_relay", "--host", "127.0.0.1", "--port", "0"]
    return Server("raw relay", cmd, {}, tmp / "raw.log")


# -- profiling ---------------------------------------------------------------------------------


class Profiler:
    """`py-spy record` on the node for the length of one measurement window, if asked for."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.exe = shutil.which("py-spy")
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            if self.exe is None:
                print("--profile: py-spy not found (pip install py-spy)", file=sys.stderr)

    def hook(self, name: str, server: Server, seconds: float) -> Callable[[], None] | None:
        """A callback for run_load's window start, or None when not profiling."""
        if self.out_dir is None or self.exe is None or not server.is_yanzi:
            return None
        exe, out = self.exe, self.out_dir / f"{name}.collapsed.txt"

        def start() -> None:
            # --nonblocking: never pause the node, so the profile costs it little throughput.
            cmd = [
                exe, "record", "--pid", str(server.pid), "--duration", str(max(1, int(seconds))),
                "--rate", "250", "--format", "raw", "--nonblocking", "--threads",
                "--output", str(out),
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((name, proc, out))

        return start

    def report(self, top: int = 25) -> str:
        lines = []
        for name, proc, out in self.procs:
            proc.wait(timeout=60)
            if out.exists():
                lines.append(summarize_collapsed(name, out.read_text(), top))
            else:
                lines.append(f"{name}: py-spy wrote nothing (is ptrace permitted?)")
        return "\n".join(lines)


def summarize_collapsed(name: str, text: str, top: int) -> str:
    """Per-thread shares, then self and inclusive shares of the event-loop (main) thread."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = main = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        thread, *frames = stack.split(";")
        thread_name = thread.split(": ", 1)[-1]
        threads[thread_name] += count
        total += count
        if thread_name != "MainThread" or not frames:
            continue
        main += count
        short = [_short(f) for f in frames]
        own[short[-1]] += count
        for frame in set(short):
            incl[frame] += count
    shares = ", ".join(f"{t} {100 * c / total:.0f}%" for t, c in threads.most_common())
    out = [f"\n== py-spy: {name}: {total} samples ==", f"threads: {shares}"]
    if main:
        out.append("event-loop thread, self %:")
        out += [f"  {100 * c / main:5.1f}  {f}" for f, c in own.most_common(top)]
        out.append("event-loop thread, inclusive %:")
        out += [f"  {100 * c / main:5.1f}  {f}" for f, c in incl.most_common(top + 15)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """ "func (path/to/pkg/file.py:123)" -> "func (pkg/file.py)" """
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({'/'.join(Path(match.group(2)).parts[-2:])})"
