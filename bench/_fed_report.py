"""Numbers and tables for bench.fed_bench: one summary per window, the report, the code version."""

from __future__ import annotations

import math
import os
import subprocess
from typing import Any

from bench._load import LoadResult
from bench._node_procs import ROOT
from bench._node_report import percentiles

TARGETS = {"p50_ms": 3.0, "p99_ms": 15.0, "rate": 1000.0, "msgs_s": 10_000, "converge_s": 3.0}


def delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


def summarize(
    r: LoadResult, seconds: float, cpu: dict[str, float],
    met0: dict[str, dict[str, float]], met1: dict[str, dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    pct = {k: 100 * v / seconds for k, v in cpu.items()}
    ours = sum(cpu.get(k, 0.0) for k in ("a", "b", "nats")) + r.cpu_s
    out: dict[str, Any] = {
        "acked_s": r.acked_in_window / seconds,
        "delivered_s": r.deliveries_in_window / seconds,
        **percentiles(r.latencies),
        "latency_samples": len(r.latencies),
        "sent_in_window": r.sent_in_window,
        "missing": r.sent_in_window - len(r.latencies),
        "errors": r.errors,
        "first_error": r.first_error,
        "closed_early": r.closed_early,
        "cpu_pct": {k: v for k, v in pct.items() if k != "busy"},
        "load_cpu_pct": 100 * r.cpu_s / seconds,
        "other_cpu_pct": 100 * (cpu["busy"] - ours) / seconds,
        "seconds": seconds,
    }
    delivered = max(r.deliveries_in_window, 1)
    for name in ("a", "b"):
        if name in cpu:
            out[f"{name}_us_per_msg"] = 1e6 * cpu[name] / delivered
    if "a" in met1 and "b" in met1:
        a, b = delta(met1["a"], met0["a"]), delta(met1["b"], met0["b"])
        out["fed"] = fed_stats(a, b, seconds)
    return out


def fed_stats(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, float]:
    """Window deltas of A's sending side and B's receiving side, from their /metrics."""
    env_out = a.get('yanzi_fed_envelopes_out_total{kind="ops"}', 0.0)
    lag_n = b.get("yanzi_fed_replication_lag_seconds_count", 0.0)
    commits_a = a.get("yanzi_commit_batch_size_count", 0.0)
    commits_b = b.get("yanzi_commit_batch_size_count", 0.0)
    return {
        "a_ops_out": a.get("yanzi_fed_ops_out_total", 0.0),
        "a_ops_per_envelope": a.get("yanzi_fed_ops_out_total", 0.0) / max(env_out, 1),
        "a_commits_s": commits_a / seconds,
        "a_batch": a.get("yanzi_commit_batch_size_sum", 0.0) / max(commits_a, 1),
        "a_ack_ms": 1000
        * a.get("yanzi_ack_latency_seconds_sum", 0.0)
        / max(a.get("yanzi_ack_latency_seconds_count", 0.0), 1),
        "a_commit_ms": 1000 * a.get("yanzi_commit_seconds_sum", 0.0) / max(commits_a, 1),
        "b_commit_ms": 1000 * b.get("yanzi_commit_seconds_sum", 0.0) / max(commits_b, 1),
        "b_ops_in": b.get("yanzi_fed_ops_in_total", 0.0),
        "b_commits_s": commits_b / seconds,  # LMDB transactions (remote ops commit in one each)
        "b_ops_per_commit": b.get("yanzi_fed_ops_in_total", 0.0) / max(commits_b, 1),
        "b_lag_ms": 1000 * b.get("yanzi_fed_replication_lag_seconds_sum", 0.0) / max(lag_n, 1),
        "b_gaps": b.get("yanzi_fed_gaps_total", 0.0),
        "dropped": sum(v for k, v in {**a, **b}.items() if k.startswith("yanzi_fed_dropped")),
    }


# -- report ------------------------------------------------------------------------------------


def code_version() -> str:
    def git(*argv: str) -> str:
        run = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "node", "crdt", "federation")
    return head + (" + uncommitted changes in node/, crdt/ or federation/" if dirty else "")


def _ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _lat(r: dict[str, Any]) -> str:
    return f"p50 {_ms(r['p50_ms'])} / p99 {_ms(r['p99_ms'])} / p999 {_ms(r['p999_ms'])} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(results: dict[str, Any], info: dict[str, Any]) -> str:
    a = info["args"]
    y, raw = results.get("yanzi", {}), results.get("ceiling", {})
    rows = ["| scenario | result | target | |", "|---|---|---|---|"]
    for key, r in y.items():
        if key.startswith("rate@"):
            rate = float(key[5:])
            ok = r["p50_ms"] < TARGETS["p50_ms"] and r["p99_ms"] < TARGETS["p99_ms"]
            at_target = rate == TARGETS["rate"]
            rows.append(
                f"| (1) A → B 1:1, {a['pairs']} pairs, open loop {rate:,.0f} msgs/s | "
                f"{r['delivered_s']:,.0f} delivered/s at B; {_lat(r)} | "
                f"{'p50 < 3 ms, p99 < 15 ms' if at_target else '-'} | "
                f"{_verdict(ok) if at_target else ''} |"
            )
    if r := y.get("max"):
        rows.append(
            f"| (1) A → B 1:1, {a['pairs']} pairs × {a['window']} unacked | "
            f"**{r['delivered_s']:,.0f} msgs/s delivered at B** "
            f"({r['acked_s']:,.0f} acked/s at A); {_lat(r)} | "
            f"≥ 10,000 msgs/s | {_verdict(r['delivered_s'] >= TARGETS['msgs_s'])} |"
        )
    if c := results.get("converge"):
        w = c["writes"]
        rows.append(
            f"| (2) partition (nats-server stopped {c['partition_s']:.1f} s), "
            f"{c['ops_per_side']:,} ops per side, heal | **identical version vectors "
            f"{c['converged_s']:.2f} s after the heal** (A {c['a_s']:.2f} s, B {c['b_s']:.2f} s; "
            f"{c['target_ops']:,} ops); writes took {w[0]['seconds']:.1f} s at A, "
            f"{w[1]['seconds']:.1f} s at B | < 3 s | "
            f"{_verdict(c['converged_s'] < TARGETS['converge_s'])} |"
        )
    for key, r in raw.items():
        if key.startswith("rate@"):
            rows.append(
                f"| (3) raw nats-py pub → sub, open loop {float(key[5:]):,.0f} msgs/s | "
                f"{_lat(r)} | ceiling | |"
            )
    if r := raw.get("max"):
        ratio = y["max"]["delivered_s"] / r["delivered_s"] if "max" in y else math.nan
        rows.append(
            f"| (3) raw nats-py pub → sub, {a['pairs'] * a['window']} in flight | "
            f"{r['delivered_s']:,.0f} msgs/s; {_lat(r)} | ceiling | Yanzi = **{ratio:.3f}x** |"
        )
    return "\n".join(_head(info) + rows + _detail(results) + _converge_detail(results))


def _head(info: dict[str, Any]) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in info["node_env"].items())
    return [
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Linux "
        f"{info['kernel']}, Python {info['python']}, aiohttp {info['aiohttp']}",
        f"- Before the run: load average {' '.join(info['loadavg_before'])}, other processes "
        f"using {info['busy_before_pct']}% CPU (of {100 * (info['nproc'] or 1)}%)",
        f"- Date: {info['date']}; bench runtime {info['runtime_s']} s",
        f"- Command: `{info['command']}`; code {info['code']}",
        "- Processes: node A, node B, one nats-server, load in 2 processes (senders at A, "
        "receivers at B; or publisher and subscriber), all on the same CPUs",
        f"- Node environment: `{env}`",
        "",
    ]


def _detail(results: dict[str, Any]) -> list[str]:
    if not results.get("yanzi") and not results.get("ceiling"):
        return []
    out = [
        "",
        "| run | CPU %: A (loop) / B (loop) / nats / load / other | µs CPU per delivered msg: "
        "A / B | missing / errors | A: ops per envelope, LMDB txns/s, sends per txn, txn ms, "
        "ack ms | B: LMDB txns/s, ops per txn, txn ms, lag ms, gaps |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("yanzi", "ceiling"):
        for name, r in results.get(kind, {}).items():
            c = r["cpu_pct"]
            cpu = (
                f"{c.get('a', 0):.0f} ({c.get('a_loop', 0):.0f}) / "
                f"{c.get('b', 0):.0f} ({c.get('b_loop', 0):.0f}) / "
                if "a" in c
                else "- / - / "
            )
            cpu += f"{c.get('nats', 0):.0f} / {r['load_cpu_pct']:.0f} / {r['other_cpu_pct']:.0f}"
            us = (
                f"{r['a_us_per_msg']:.0f} / {r['b_us_per_msg']:.0f}" if "a_us_per_msg" in r else "-"
            )
            errors = f"{r['missing']} / {r['errors']}"
            if r["first_error"]:
                errors += f" ({r['first_error'][:60]})"
            f = r.get("fed")
            fa = (f"{f['a_ops_per_envelope']:.1f}, {f['a_commits_s']:,.0f}, {f['a_batch']:.1f}, "
                  f"{f['a_commit_ms']:.1f}, {f['a_ack_ms']:.1f}") if f else "-"  # fmt: skip
            fb = (f"{f['b_commits_s']:,.0f}, {f['b_ops_per_commit']:.1f}, {f['b_commit_ms']:.1f}, "
                  f"{f['b_lag_ms']:.1f}, {f['b_gaps']:.0f}") if f else "-"  # fmt: skip
            label = "yanzi" if kind == "yanzi" else "raw nats"
            out.append(f"| {label} {name} | {cpu} | {us} | {errors} | {fa} | {fb} |")
    return out


def _converge_detail(results: dict[str, Any]) -> list[str]:
    c = results.get("converge")
    if not c:
        return []
    lines = ["", "| convergence | A | B |", "|---|---|---|"]
    wa, wb = c["writes"]
    lines.append(
        f"| partition writes (acked, errors, ops/s) | {wa['acked']:,}, {wa['errors']}, "
        f"{wa['acked'] / wa['seconds']:,.0f} | {wb['acked']:,}, {wb['errors']}, "
        f"{wb['acked'] / wb['seconds']:,.0f} |"
    )
    lines.append(
        f"| identical to the merged vector after the heal, s | {c['a_s']:.2f} | {c['b_s']:.2f} |"
    )
    ma, mb = c["metrics"]["a"], c["metrics"]["b"]
    for key in ("ops_in", "ae_ops", "ae_rounds", "ae_pages", "duplicates", "gaps"):
        lines.append(f"| fed {key} (partition + heal) | {ma[key]:,.0f} | {mb[key]:,.0f} |")
    cpu = c["heal_cpu_s"]
    lines.append(
        f"| CPU-seconds from the heal to convergence (event loop) | {cpu['a']:.2f} "
        f"({cpu['a_loop']:.2f}) | {cpu['b']:.2f} ({cpu['b_loop']:.2f}) |"
    )
    lines.append(
        f"| nats-server restart (start → listening) | {c['nats_restart_s']:.2f} s | "
        f"{c['polls']} polls of both vectors |"
    )
    ncpu = os.cpu_count() or 1
    others = cpu["busy"] - cpu["a"] - cpu["b"] - cpu.get("nats", 0.0)
    lines += [
        "",
        f"From the heal to convergence ({c['converged_s']:.1f} s) the nats-server used "
        f"{cpu.get('nats', 0.0):.2f} CPU-seconds and every other process on the machine "
        f"{others:.2f} (of {ncpu * c['converged_s']:.1f} available on {ncpu} CPUs).",
    ]
    return lines
