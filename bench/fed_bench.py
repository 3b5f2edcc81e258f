"""The federation benchmark: two `yanzi up` nodes meshed over one nats-server vs issue #4's targets.

Run from the repository root (about 1½–2 minutes on 2 cores; everything on 127.0.0.1; it stops
by itself):

    python -m bench.fed_bench                         # every scenario, default sizes
    python -m bench.fed_bench --scenarios rate,max    # a subset of: rate max converge ceiling
    python -m bench.fed_bench --quick                 # 3 s windows, 2k ops per side (smoke)
    python -m bench.fed_bench --profile DIR           # also py-spy both nodes in each window

Setup: a standalone nats-server (federation.natsd, from the wheel), a mesh made by the operator
flow (init at A, invite, join at B), nodes A (region bench-a) and B (bench-b) started with
YANZI_FED_NATS_URL and bench._node_procs.NODE_ENV. Users s0..sN register and log in at A,
r0..rN at B (so each is local to its node); the bench waits until every account has replicated,
opens the direct conversation s_i -> r_i at A, and waits until B hosts it.

  rate      cross-node 1:1, open loop at each of `--rates` msgs/s in total: the senders' sockets
            at A, the receivers' at B -> latency from the send to the receiver's op frame at B.
  max       the same pairs, closed loop (`--window` unacked sends per sender at A) -> msgs/s
            delivered at B (and acked at A), latency.
  converge  a group with `--writers` members at each node; the nats-server is stopped (both
            nodes lose NATS: the partition), each side writes `--partition-ops` messages through
            its own node, the server is started again on the same port (the heal), and the bench
            polls GET /v1/conversations/{conv} on both nodes until their version vectors are
            identical -> seconds from the heal.
  ceiling   raw nats-py publish -> subscribe between two processes through the same nats-server,
            at the same rates and with the same number of messages in flight.

The load runs in separate processes (bench._fed_load), never in a node. On a 2-core machine the
two nodes, the nats-server and the load share the cores: the detail table reports, per window,
the CPU each of them used and what every other process on the machine took.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import multiprocessing
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp

from bench._fed_load import (
    NatsSpec,
    WriterSpec,
    nats_pub_main,
    nats_sub_main,
    writer_main,
    ws_worker_main,
)
from bench._fed_mesh import (
    NatsServer,
    accounts_at,
    fed_node,
    make_mesh,
    version_vector,
    wait_convs,
    wait_mesh,
    wait_users,
)
from bench._fed_report import code_version, delta, render, summarize
from bench._load import LoadResult, LoadSpec, SocketSpec, raise_nofile_limit
from bench._node_procs import NODE_ENV, Profiler, Server, _stat_cpu_s, system_busy_s
from bench._node_report import machine
from bench.node_bench import Worker, _await_ready, _reap, _sleep_until, create_group, direct_convs

ALL = ("rate", "max", "converge", "ceiling")
GROUP = "g_fedbench"
Job = tuple[Callable[..., None], Any]  # (process entry point, its spec)


# -- processes -------------------------------------------------------------------------------------


def _spawn(jobs: list[Job]) -> list[Worker]:
    ctx = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    for target, spec in jobs:
        parent, child = ctx.Pipe()
        proc: BaseProcess = ctx.Process(target=target, args=(spec, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
    return workers


def scrape(server: Server) -> dict[str, float]:
    """Every sample of the node's /metrics, keyed by name{labels}."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
    return out


@dataclass(slots=True)
class Cluster:
    """What one window's CPU accounting covers."""

    a: Server | None
    b: Server | None
    natsd: NatsServer

    def cpu(self) -> dict[str, float]:
        out = {"busy": system_busy_s()}
        for name, node in (("a", self.a), ("b", self.b)):
            if node is not None:
                out[name], out[name + "_loop"] = node.cpu_s()
        if self.natsd.pid is not None:
            out["nats"] = _stat_cpu_s(f"/proc/{self.natsd.pid}/stat")
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        return {name: scrape(n) for name, n in (("a", self.a), ("b", self.b)) if n is not None}


def run_window(
    cluster: Cluster, jobs: list[Job], warmup_s: float,
    measure_s: float, drain_s: float, on_window: list[Callable[[], None]],
) -> dict[str, Any]:  # fmt: skip
    """Start the workers at a shared instant, account one window, merge what they saw."""
    workers = _spawn(jobs)
    try:
        _await_ready(workers, timeout_s=120)
        start = time.monotonic_ns() + 300_000_000
        for _, pipe in workers:
            pipe.send(("go", start))
        m0 = start + int(warmup_s * 1e9)
        _sleep_until(m0)
        cpu0, met0 = cluster.cpu(), cluster.metrics()
        for hook in on_window:
            hook()
        _sleep_until(m0 + int(measure_s * 1e9))
        cpu1, met1 = cluster.cpu(), cluster.metrics()
        merged = LoadResult()
        for _, pipe in workers:
            if not pipe.poll(drain_s + 30):
                raise RuntimeError("a load worker did not report its result")
            merged.merge(pipe.recv()[1])
    finally:
        _reap(workers)
    return summarize(merged, measure_s, delta(cpu1, cpu0), met0, met1)


def _hooks(
    prof: Profiler, name: str, nodes: list[Server], seconds: float
) -> list[Callable[[], None]]:
    hooks = [prof.hook(f"{name}-{n.name.split(':')[1]}", n, seconds) for n in nodes]
    return [h for h in hooks if h is not None]


# -- scenarios -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Pairs:
    send_tokens: list[str]
    recv_tokens: list[str]
    convs: list[str]


def setup_pairs(args: argparse.Namespace, a: Server, b: Server) -> tuple[Pairs, dict[str, str]]:
    """Senders local to A, receivers local to B, one direct conversation each, hosted by both."""
    n = max(args.pairs, args.writers)
    senders, receivers = [f"s{i:03d}" for i in range(n)], [f"r{i:03d}" for i in range(n)]
    tok_a = asyncio.run(accounts_at(a.url, senders))
    tok_b = asyncio.run(accounts_at(b.url, receivers))
    asyncio.run(wait_users(a.url, tok_a[senders[0]], receivers))
    asyncio.run(wait_users(b.url, tok_b[receivers[0]], senders))
    pairs = list(zip(senders[: args.pairs], receivers[: args.pairs], strict=True))
    convs = asyncio.run(direct_convs(a.url, [(tok_a[s], r) for s, r in pairs]))
    asyncio.run(wait_convs(b.url, [(tok_b[r], c) for (_, r), c in zip(pairs, convs, strict=True)]))
    return (
        Pairs([tok_a[s] for s, _ in pairs], [tok_b[r] for _, r in pairs], convs),
        tok_a | tok_b,
    )


def _cross_jobs(p: Pairs, a: Server, b: Server, base: LoadSpec) -> list[Job]:
    send = [
        SocketSpec(token=t, send_to=c, tag=i)
        for i, (t, c) in enumerate(zip(p.send_tokens, p.convs, strict=True))
    ]
    recv = [SocketSpec(token=t, measure=True, tag=i) for i, t in enumerate(p.recv_tokens)]
    return [
        (ws_worker_main, replace(base, ws_url=a.ws_url, sockets=tuple(send))),
        (ws_worker_main, replace(base, ws_url=b.ws_url, sockets=tuple(recv), mode="closed")),
    ]


def scenario_cross(
    args: argparse.Namespace, cluster: Cluster, pairs: Pairs, prof: Profiler
) -> dict[str, Any]:
    a, b = cluster.a, cluster.b
    assert a is not None and b is not None
    base = LoadSpec(
        ws_url="", sockets=(), mode="closed", window=args.window, warmup_s=args.warmup,
        measure_s=args.duration, drain_s=20.0, body_bytes=args.body_bytes, cmid_prefix="max",
    )  # fmt: skip
    out: dict[str, Any] = {}
    if "rate" in args.scenarios:
        for rate in args.rates:
            print(f"== yanzi A -> B at {rate:,.0f} msgs/s ==", file=sys.stderr)
            spec = replace(
                base, mode="open", rate=rate, measure_s=args.rate_duration,
                cmid_prefix=f"rate{rate:.0f}",
            )  # fmt: skip
            hooks = _hooks(prof, f"rate{rate:.0f}", [a, b], args.rate_duration)
            jobs = _cross_jobs(pairs, a, b, spec)
            out[f"rate@{rate:.0f}"] = run_window(
                cluster, jobs, args.warmup, args.rate_duration, spec.drain_s, hooks
            )
    if "max" in args.scenarios:
        print("== yanzi A -> B, closed loop ==", file=sys.stderr)
        hooks = _hooks(prof, "max", [a, b], args.duration)
        jobs = _cross_jobs(pairs, a, b, base)
        out["max"] = run_window(cluster, jobs, args.warmup, args.duration, base.drain_s, hooks)
    return out


async def _converged(
    a: Server, b: Server, tok_a: str, tok_b: str, target: dict[str, Any], t0: float,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Poll both version vectors until each equals `target`; when did each get there."""
    done: dict[str, float] = {}
    polls = 0
    async with aiohttp.ClientSession() as http:
        while len(done) < 2 and time.monotonic() - t0 < timeout:
            vva, vvb = await asyncio.gather(
                version_vector(http, a.url, tok_a, GROUP), version_vector(http, b.url, tok_b, GROUP)
            )
            now = time.monotonic() - t0
            polls += 1
            for name, vv in (("a", vva), ("b", vvb)):
                if name not in done and vv == target:
                    done[name] = now
            if len(done) < 2:
                # Not faster: the handler reads the materialised state, so a poll can force a
                # rebuild of the log on a node that is still applying.
                await asyncio.sleep(0.05)
        return {"a_s": done.get("a", math.nan), "b_s": done.get("b", math.nan), "polls": polls,
                "final_a": vva, "final_b": vvb}  # fmt: skip


def _merge_vv(vva: dict[str, Any], vvb: dict[str, Any]) -> dict[str, Any]:
    """What both nodes hold once healed (no gaps: each side holds all of its own ops)."""
    if vva["x"] or vvb["x"]:
        raise RuntimeError(f"unexpected gaps before the heal: {vva['x']} {vvb['x']}")
    top = dict(vva["c"])
    for origin, seq in vvb["c"].items():
        top[origin] = max(seq, top.get(origin, 0))
    return {"c": top, "x": {}}


def scenario_converge(
    args: argparse.Namespace, cluster: Cluster, tokens: dict[str, str], prof: Profiler
) -> dict[str, Any]:
    a, b, natsd = cluster.a, cluster.b, cluster.natsd
    assert a is not None and b is not None
    side_a = [f"s{i:03d}" for i in range(args.writers)]
    side_b = [f"r{i:03d}" for i in range(args.writers)]
    print("== convergence: partition, 2 sides writing, heal ==", file=sys.stderr)
    asyncio.run(create_group(a.ws_url, tokens[side_a[0]], GROUP, side_a[1:] + side_b))
    asyncio.run(wait_convs(b.url, [(tokens[side_b[0]], GROUP)]))
    per_socket = math.ceil(args.partition_ops / args.writers)

    def writer(node: Server, names: list[str], tag: str) -> Job:
        spec = WriterSpec(
            ws_url=node.ws_url, tokens=tuple(tokens[n] for n in names), conv=GROUP,
            per_socket=per_socket, window=args.writer_window, body_bytes=args.body_bytes,
            cmid_prefix=f"part{tag}",
        )  # fmt: skip
        return writer_main, spec

    workers = _spawn([writer(a, side_a, "a"), writer(b, side_b, "b")])
    met0 = cluster.metrics()
    try:
        _await_ready(workers, timeout_s=60)
        t_part = time.monotonic()
        natsd.stop()  # the partition: neither node reaches NATS any more
        for _, pipe in workers:
            pipe.send(("go", 0))
        hold_until = t_part + args.hold_s
        writes = []
        for _, pipe in workers:
            if not pipe.poll(300):
                raise RuntimeError("a partition writer did not finish")
            _, res, seconds = pipe.recv()
            writes.append({"acked": res.acked_in_window, "errors": res.errors,
                           "first_error": res.first_error, "seconds": seconds,
                           "unacked": res.unacked_at_end})  # fmt: skip
    finally:
        _reap(workers)
    time.sleep(max(0.0, hold_until - time.monotonic()))

    async def both() -> tuple[Any, Any]:
        async with aiohttp.ClientSession() as http:
            return await asyncio.gather(
                version_vector(http, a.url, tokens[side_a[0]], GROUP),
                version_vector(http, b.url, tokens[side_b[0]], GROUP),
            )

    vva, vvb = asyncio.run(both())
    target = _merge_vv(vva, vvb)
    for hook in _hooks(prof, "heal", [a, b], args.heal_profile_s):
        hook()
    t_heal0 = time.monotonic()
    natsd.start()  # the heal: the same port, so both nodes' clients reconnect to it
    t_heal, cpu0 = time.monotonic(), cluster.cpu()
    conv = asyncio.run(_converged(a, b, tokens[side_a[0]], tokens[side_b[0]], target, t_heal, 60))
    cpu = delta(cluster.cpu(), cpu0)  # heal -> both converged (and one poll interval)
    met1 = cluster.metrics()
    da, db = delta(met1["a"], met0["a"]), delta(met1["b"], met0["b"])
    keys = {
        "ae_rounds": "yanzi_fed_ae_rounds_total", "ae_ops": "yanzi_fed_ae_ops_total",
        "ops_in": "yanzi_fed_ops_in_total", "duplicates": "yanzi_fed_duplicate_ops_total",
        "gaps": "yanzi_fed_gaps_total", "ae_pages": 'yanzi_fed_envelopes_in_total{kind="ae_rep"}',
    }  # fmt: skip
    return {
        "ops_per_side": per_socket * args.writers,
        "writes": writes,
        "partition_s": t_heal0 - t_part,
        "nats_restart_s": t_heal - t_heal0,
        "converged_s": max(conv["a_s"], conv["b_s"]),
        **conv,
        "target_ops": sum(target["c"].values()),
        "heal_cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "metrics": {
            side: {k: d.get(m, 0.0) for k, m in keys.items()} for side, d in (("a", da), ("b", db))
        },
    }


def scenario_ceiling(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    out: dict[str, Any] = {}
    in_flight = args.pairs * args.window
    base = NatsSpec(
        url=cluster.natsd.url, mode="closed", subjects=args.pairs, window=in_flight,
        warmup_s=args.warmup, measure_s=args.duration, body_bytes=args.body_bytes,
    )  # fmt: skip
    runs = [(f"rate@{r:.0f}", replace(base, mode="open", rate=r, measure_s=args.rate_duration))
            for r in args.rates]  # fmt: skip
    runs.append(("max", base))
    for name, spec in runs:
        print(f"== raw nats-py {name} ==", file=sys.stderr)
        spec = replace(spec, prefix=f"fedbench.{name.replace('@', '')}")
        jobs = [(nats_sub_main, spec), (nats_pub_main, spec)]
        out[name] = run_window(cluster, jobs, spec.warmup_s, spec.measure_s, spec.drain_s, [])
    return out


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fed_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--scenarios", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    p.add_argument("--pairs", type=int, default=32, help="1:1 pairs (sender at A, receiver at B)")
    p.add_argument("--window", type=int, default=4, help="unacked sends per sender (max)")
    p.add_argument("--rates", default="1000", help="open-loop rates, msgs/s in total")
    p.add_argument("--duration", type=float, default=10.0, help="closed-loop window, s")
    p.add_argument("--rate-duration", type=float, default=8.0, help="each fixed-rate window, s")
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window, s")
    p.add_argument("--partition-ops", type=int, default=10_000, help="ops written per side")
    p.add_argument("--writers", type=int, default=4, help="writing sockets (users) per side")
    p.add_argument("--writer-window", type=int, default=16, help="unacked sends per writer")
    p.add_argument(
        "--hold-s", type=float, default=0.0,
        help="keep the partition at least this long (s); default: just while the sides write",
    )  # fmt: skip
    p.add_argument("--body-bytes", type=int, default=128, help="opaque body bytes per message")
    p.add_argument("--quick", action="store_true", help="3 s windows, 2,000 ops per side")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy both nodes per window")
    p.add_argument("--heal-profile-s", type=float, default=4.0, help="py-spy after the heal, s")
    p.add_argument(
        "--node-env", action="append", default=[], metavar="YANZI_X=V",
        help="extra node environment for experiments (e.g. YANZI_FED_BATCH_DELAY_MS=0.5)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(args.scenarios) - set(ALL):
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.node_env = dict(item.split("=", 1) for item in args.node_env)
    if args.quick:
        args.duration = args.rate_duration = 3.0
        args.warmup = 1.0
        args.partition_ops = min(args.partition_ops, 2000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    busy0 = system_busy_s()
    time.sleep(1.0)
    others_pct = 100 * (system_busy_s() - busy0)
    if others_pct > 20:
        print(f"warning: other processes use {others_pct:.0f}% CPU: numbers will be low and noisy",
              file=sys.stderr)  # fmt: skip
    info = machine() | {
        "code": code_version(),
        "busy_before_pct": round(others_pct),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            ["python", "-m", "bench.fed_bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "node_env": {**NODE_ENV, **args.node_env},
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
    }
    tmp = Path(tempfile.mkdtemp(prefix="yanzi-fed-bench-"))
    prof = Profiler(args.profile)
    natsd = NatsServer(tmp / "nats")
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        natsd.start()
        dir_a, dir_b = make_mesh(tmp)
        a = fed_node(dir_a, "bench-a", natsd.url, args.node_env, tmp)
        b = fed_node(dir_b, "bench-b", natsd.url, args.node_env, tmp)
        cluster = Cluster(a, b, natsd)
        try:
            a.start()
            b.start()
            print(f"== mesh: A {a.url}, B {b.url}, nats {natsd.url} ==", file=sys.stderr)
            asyncio.run(wait_mesh(a, b))
            pairs, tokens = setup_pairs(args, a, b)
            if {"rate", "max"} & set(args.scenarios):
                results["yanzi"] = scenario_cross(args, cluster, pairs, prof)
            if "converge" in args.scenarios:
                results["converge"] = scenario_converge(args, cluster, tokens, prof)
        finally:
            a.stop()
            b.stop()
        if "ceiling" in args.scenarios:
            results["ceiling"] = scenario_ceiling(args, Cluster(None, None, natsd))
    finally:
        natsd.close()
        if args.keep:
            print(f"data and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["runtime_s"] = round(time.monotonic() - started, 1)
    print(render(results, info))
    if args.profile:
        print(prof.report())
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "results": results}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
