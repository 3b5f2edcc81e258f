"""Numbers and tables for bench.node_bench: percentiles, one summary per run, the report."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import LoadResult

TARGETS = {
    "relay_msgs_s": 10_000,
    "rate": 2000.0,
    "rate_p99_ms": 20.0,
    "fanout_deliveries_s": 100_000,
    "idle_kib_per_conn": 30.0,
}


@dataclass(slots=True)
class Measured:
    """One load run: what the workers saw plus what the server process spent in the window."""

    result: LoadResult
    seconds: float
    server_cpu_s: tuple[float, float]  # all threads, event-loop thread
    server_rss_kib: int
    node_stats: dict[str, float]  # from the node's /metrics (empty for the raw relay)
    system_busy_s: float  # CPU-seconds every process on the machine used in the window


def percentiles(samples_ns: Any) -> dict[str, float]:
    """Nearest-rank p50/p99/p999 and the max, in ms."""
    data = sorted(samples_ns)
    if not data:
        return dict.fromkeys(("p50_ms", "p99_ms", "p999_ms", "max_ms"), math.nan)

    def rank(q: float) -> float:
        return float(data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]) / 1e6

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "p999_ms": rank(0.999), "max_ms": rank(1)}


def summarize(m: Measured, recipients_per_msg: int) -> dict[str, Any]:
    r = m.result
    ack = percentiles(r.ack_latencies)
    return {
        "msgs_s": r.acked_in_window / m.seconds,
        "deliveries_s": r.deliveries_in_window / m.seconds,
        **percentiles(r.latencies),
        "latency_samples": len(r.latencies),
        "ack_p50_ms": ack["p50_ms"],
        "ack_p99_ms": ack["p99_ms"],
        "sent_in_window": r.sent_in_window,
        # deliveries of in-window sends that never arrived (before the drain deadline)
        "missing_deliveries": r.sent_in_window * recipients_per_msg - len(r.latencies),
        "errors": r.errors,
        "first_error": r.first_error,
        "closed_early": r.closed_early,
        "unacked_at_end": r.unacked_at_end,
        "server_cpu_pct": 100 * m.server_cpu_s[0] / m.seconds,
        "server_loop_cpu_pct": 100 * m.server_cpu_s[1] / m.seconds,
        "server_cpu_us_per_msg": 1e6 * m.server_cpu_s[0] / max(r.acked_in_window, 1),
        "load_cpu_pct": 100 * r.cpu_s / m.seconds,
        # CPU used by neither the server nor the load: other tenants of this machine
        "other_cpu_pct": 100 * (m.system_busy_s - m.server_cpu_s[0] - r.cpu_s) / m.seconds,
        "server_rss_mib": m.server_rss_kib / 1024,
        "sockets": r.connected,
        "seconds": m.seconds,
        **{f"node_{k}": v for k, v in m.node_stats.items()},
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(int(mem.group(1)) / 1024**2, 1) if mem else math.nan,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "code": _code_version(),
    }


def _code_version() -> str:
    """The commit measured, and whether node/ or crdt/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        run = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "node", "crdt")
    return head + (" + uncommitted changes in node/ or crdt/" if dirty else "")


def _ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _lat(r: dict[str, Any]) -> str:
    return f"p50 {_ms(r['p50_ms'])} / p99 {_ms(r['p99_ms'])} / p999 {_ms(r['p999_ms'])} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(results: dict[str, Any], info: dict[str, Any]) -> str:
    """The markdown report: context, one row per target, then one row of detail per run."""
    a = info["args"]
    y, raw = results.get("yanzi", {}), results.get("raw", {})
    rows = ["| scenario | result | target | |", "|---|---|---|---|"]
    if r := y.get("relay"):
        rows.append(
            f"| (a) 1:1 relay, durable, {a['pairs']} pairs x {a['window']} in flight | "
            f"**{r['msgs_s']:,.0f} msgs/s** acked; {_lat(r)} | ≥ 10,000 msgs/s | "
            f"{_verdict(r['msgs_s'] >= TARGETS['relay_msgs_s'])} |"
        )
    for key, r in y.items():
        if key.startswith("rate@"):
            rate = float(key[5:])
            target = rate == TARGETS["rate"]
            rows.append(
                f"| (a) 1:1 fixed rate {rate:,.0f} msgs/s | {r['msgs_s']:,.0f} acked/s; "
                f"{_lat(r)} | {'p99 < 20 ms' if target else '-'} | "
                f"{_verdict(r['p99_ms'] < TARGETS['rate_p99_ms']) if target else ''} |"
            )
    if r := results.get("fanout"):
        rows.append(
            f"| (b) group fan-out, {r['group_size']} members, {r['senders']} senders x "
            f"{a['fanout_window']} in flight | **{r['deliveries_s']:,.0f} deliveries/s** "
            f"({r['msgs_s']:,.0f} msgs/s); {_lat(r)} | ≥ 100,000 deliveries/s | "
            f"{_verdict(r['deliveries_s'] >= TARGETS['fanout_deliveries_s'])} |"
        )
    if r := results.get("idle"):
        rows.append(
            f"| (c) idle authenticated WebSockets: {r['connected']:,} of {r['requested']:,} | "
            f"**{r['kib_per_conn']:.1f} KiB/conn** (VmRSS {r['rss_before_mib']:.0f} -> "
            f"{r['rss_after_mib']:.0f} MiB) | ≤ 30 KiB | "
            f"{_verdict(r['kib_per_conn'] <= TARGETS['idle_kib_per_conn'])} |"
        )
    if r := raw.get("relay"):
        ratio = y["relay"]["msgs_s"] / r["msgs_s"] if "relay" in y else math.nan
        rows.append(
            f"| (d) raw aiohttp relay, same 1:1 closed loop | {r['msgs_s']:,.0f} msgs/s; "
            f"{_lat(r)} | ceiling | Yanzi = **{ratio:.2f}x** |"
        )
    for key, r in raw.items():
        if key.startswith("rate@"):
            rows.append(
                f"| (d) raw relay at {float(key[5:]):,.0f} msgs/s | {_lat(r)} | "
                f"latency floor of load + loopback | |"
            )
    return "\n".join(_head(info) + rows + _detail(results))


def _head(info: dict[str, Any]) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in info["node_env"].items())
    return [
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Linux "
        f"{info['kernel']}, Python {info['python']}, aiohttp {info['aiohttp']}",
        f"- Before the run: load average {' '.join(info['loadavg_before'])}, other processes "
        f"using {info['busy_before_pct']}% CPU (of {100 * (info['nproc'] or 1)}%)",
        f"- Date: {info['date']}; bench runtime {info['runtime_s']} s",
        f"- Command: `{info['command']}`; code {info['code']}",
        f"- Load: {info['args']['workers']} worker processes on the same {info['nproc']} CPUs "
        "as the server",
        f"- Node environment: `{env}`",
        "",
    ]


def _detail(results: dict[str, Any]) -> list[str]:
    out = [
        "",
        "| run | server CPU % (event loop) | server CPU µs/msg | load CPU % | other procs CPU % "
        "| errors / closed | missing | ack p50 / p99 ms | node: ack ms mean, commits/s, batch, "
        "commit ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in _runs(results):
        node = (
            f"{r['node_ack_ms']:.1f}, {r['node_commits'] / r['seconds']:,.0f}, "
            f"{r['node_mean_batch']:.1f}, {r['node_mean_commit_ms']:.2f}"
            if "node_commits" in r
            else "-"
        )
        errors = f"{r['errors']} / {r['closed_early']}"
        if r["first_error"]:
            errors += f" ({r['first_error'][:60]})"
        out.append(
            f"| {label} | {r['server_cpu_pct']:.0f} ({r['server_loop_cpu_pct']:.0f}) | "
            f"{r['server_cpu_us_per_msg']:.0f} | {r['load_cpu_pct']:.0f} | "
            f"{r['other_cpu_pct']:.0f} | {errors} | {r['missing_deliveries']} | "
            f"{_ms(r['ack_p50_ms'])} / {_ms(r['ack_p99_ms'])} | {node} |"
        )
    return out


def _runs(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("yanzi", "raw"):
        for name, r in results.get(kind, {}).items():
            yield f"{kind} {name}", r
    if "fanout" in results:
        yield "yanzi fanout", results["fanout"]
