"""The node benchmark: a real `yanzi up` subprocess under WebSocket load vs issue #3's targets.

Run from the repository root (about 2½ minutes on 2 cores; everything on 127.0.0.1; it stops
by itself):

    python -m bench.node_bench                          # every scenario, default sizes
    python -m bench.node_bench --scenarios relay,rate   # a subset
    python -m bench.node_bench --quick                  # 3 s windows, 2k idle sockets (smoke)
    python -m bench.node_bench --profile DIR            # also py-spy the node in each window

Scenarios (each on a fresh node with its own data dir in a temp folder; fsync on):

  relay   1:1 relay, durable: `--pairs` sender/receiver pairs, each sender keeping `--window`
          sends unacked (closed loop) -> acked msgs/s, send -> receiver's op frame latency.
  rate    the same pairs, open loop at each of `--rates` msgs/s in total -> latency.
  fanout  one group of `--group-size` members, each with an open session; `--group-senders`
          members post (closed loop) -> deliveries/s (op frames members receive), latency.
  idle    `--idle` authenticated idle WebSockets; node VmRSS before/after -> KiB per connection.
  raw     bench.raw_relay (aiohttp; no storage, no auth) under the relay load and the highest
          rate: the ceiling Yanzi's throughput is divided by.

The load runs in `--workers` processes (multiprocessing, spawn), never in the server's process;
on a 2-core machine they share the cores with the server, so the detail table reports the CPU
the server, the load and every other process on the machine used in each window.
The node's environment is bench._node_procs.NODE_ENV (docs/benchmarks.md says why).
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
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from bench._load import LoadResult, LoadSpec, SocketSpec, raise_nofile_limit, worker_main
from bench._node_procs import (
    NODE_ENV,
    Profiler,
    Server,
    raw_relay,
    running,
    system_busy_s,
    yanzi_node,
)
from bench._node_report import Measured, machine, render, summarize
from crdt import b64encode

PASSWORD = "bench-password"
ALL = ("relay", "rate", "fanout", "idle", "raw")

# -- accounts and conversations, set up by the bench process before any load --------------------


def _device_keys() -> dict[str, str]:
    return {
        "ed25519": b64encode(bytes(SigningKey.generate().verify_key)),
        "x25519": b64encode(bytes(PrivateKey.generate().public_key)),
    }


async def _ok(resp: aiohttp.ClientResponse) -> Any:
    body = await resp.json()
    if resp.status >= 300:
        raise RuntimeError(f"{resp.method} {resp.url.path}: {resp.status} {body}")
    return body


async def make_accounts(url: str, names: list[str], concurrency: int = 64) -> dict[str, str]:
    """Register and log in every name (one device each); returns name -> session token."""
    gate = asyncio.Semaphore(concurrency)
    tokens: dict[str, str] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def one(name: str) -> None:
            async with gate:
                creds = {"username": name, "password": PASSWORD}
                await _ok(await http.post(url + "/v1/register", json=creds))
                login = {**creds, "device": "bench", "keys": _device_keys()}
                tokens[name] = (await _ok(await http.post(url + "/v1/login", json=login)))["token"]

        await asyncio.gather(*(one(n) for n in names))
    return tokens


async def direct_convs(url: str, pairs: list[tuple[str, str]]) -> list[str]:
    """POST /v1/direct as each sender (token) with its receiver (name)."""
    async with aiohttp.ClientSession() as http:

        async def one(token: str, peer: str) -> str:
            headers = {"Authorization": f"Bearer {token}"}
            resp = await http.post(url + "/v1/direct", json={"user": peer}, headers=headers)
            return str((await _ok(resp))["conv"])

        return list(await asyncio.gather(*(one(t, p) for t, p in pairs)))


async def create_group(ws_url: str, token: str, conv: str, members: list[str]) -> None:
    """A group is created by a `create` op sent over the WebSocket like any other."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "auth", "token": token})
        create = {
            "type": "send", "id": 1, "cmid": f"create-{conv}", "conv": conv, "kind": "create",
            "attrs": {"type": "group", "members": members, "title": "bench"},
        }  # fmt: skip
        while True:
            frame = json.loads(await ws.receive_str(timeout=30))
            if frame["type"] == "ready":
                await ws.send_json(create)
            elif frame["type"] == "error":
                raise RuntimeError(f"group create refused: {frame}")
            elif frame["type"] == "ack" and frame.get("id") == 1:
                return


# -- worker processes ----------------------------------------------------------------------------

Worker = tuple[BaseProcess, Connection]


def _spawn(specs: list[LoadSpec]) -> list[Worker]:
    ctx = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    for spec in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
    return workers


def _await_ready(workers: list[Worker], timeout_s: float) -> int:
    """Wait until every worker has its sockets authenticated; returns how many sockets."""
    sockets = 0
    for _, pipe in workers:
        if not pipe.poll(timeout_s):
            raise RuntimeError("a load worker did not get its sockets ready in time")
        try:
            status = pipe.recv()
        except EOFError:
            raise RuntimeError("a load worker died before its sockets were ready") from None
        if status[0] != "ready":
            raise RuntimeError(f"load worker failed: {status[1]}")
        sockets += status[1]
    return sockets


def _reap(workers: list[Worker]) -> None:
    for proc, pipe in workers:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        pipe.close()


def _sleep_until(instant_ns: int) -> None:
    time.sleep(max(0.0, (instant_ns - time.monotonic_ns()) / 1e9))


def _node_stats(server: Server, since: dict[str, float] | None = None) -> dict[str, float]:
    """Group-commit and ack counters from the node's /metrics; window deltas given `since`."""
    if not server.is_yanzi:
        return {}
    names = {
        "commits": "yanzi_commit_batch_size_count",
        "batched": "yanzi_commit_batch_size_sum",
        "commit_s": "yanzi_commit_seconds_sum",
        "acks": "yanzi_ack_latency_seconds_count",
        "ack_s": "yanzi_ack_latency_seconds_sum",
    }
    now = {key: server.metric(metric) for key, metric in names.items()}
    if since is None:
        return now
    d = {key: now[key] - since[key] for key in now}
    return {
        "commits": d["commits"],
        "mean_batch": d["batched"] / max(d["commits"], 1),
        "mean_commit_ms": 1000 * d["commit_s"] / max(d["commits"], 1),
        "ack_ms": 1000 * d["ack_s"] / max(d["acks"], 1),  # frame read -> ack queued, in the node
    }


def run_load(
    server: Server, specs: list[LoadSpec], on_window: Callable[[], None] | None = None
) -> Measured:
    """One worker per spec: connect, go at a shared instant, measure one window, merge."""
    workers = _spawn(specs)
    try:
        _await_ready(workers, timeout_s=120)
        spec = specs[0]
        start = time.monotonic_ns() + 300_000_000
        for _, pipe in workers:
            pipe.send(("go", start))
        m0 = start + int(spec.warmup_s * 1e9)
        _sleep_until(m0)
        cpu0, busy0, stats0 = server.cpu_s(), system_busy_s(), _node_stats(server)
        if on_window is not None:
            on_window()
        _sleep_until(m0 + int(spec.measure_s * 1e9))
        cpu1, busy1 = server.cpu_s(), system_busy_s()
        stats = _node_stats(server, since=stats0)
        rss = server.rss_kib()
        merged = LoadResult()
        for _, pipe in workers:
            if not pipe.poll(spec.drain_s + 30):
                raise RuntimeError("a load worker did not report its result")
            merged.merge(pipe.recv()[1])
    finally:
        _reap(workers)
    cpu = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
    return Measured(merged, spec.measure_s, cpu, rss, stats, busy1 - busy0)


# -- scenarios -----------------------------------------------------------------------------------


def _pair_specs(
    base: LoadSpec, senders: list[SocketSpec], receivers: list[SocketSpec], workers: int
) -> list[LoadSpec]:
    """Pair i (both ends) goes to worker i % workers, so each latency is read in one process."""
    return [
        replace(
            base,
            sockets=(*senders[w::workers], *receivers[w::workers]),
            cmid_prefix=f"{base.cmid_prefix}w{w}s",
        )
        for w in range(workers)
    ]


def scenario_relay(
    args: argparse.Namespace, server: Server, prof: Profiler, rates: list[float]
) -> dict[str, Any]:
    """The 1:1 closed loop (msgs/s) and open-loop fixed rates (latency) on one server."""
    n = args.pairs
    send_names = [f"s{i:04d}" for i in range(n)]
    recv_names = [f"r{i:04d}" for i in range(n)]
    if server.is_yanzi:
        tokens = asyncio.run(make_accounts(server.url, send_names + recv_names))
        convs = asyncio.run(
            direct_convs(
                server.url, [(tokens[s], r) for s, r in zip(send_names, recv_names, strict=True)]
            )
        )
        send_tok = [tokens[s] for s in send_names]
        recv_tok = [tokens[r] for r in recv_names]
    else:  # the raw relay's "token" is the user name, and `conv` names the receiver
        send_tok, recv_tok, convs = send_names, recv_names, recv_names
    senders = [
        SocketSpec(token=t, send_to=c, tag=i)
        for i, (t, c) in enumerate(zip(send_tok, convs, strict=True))
    ]
    receivers = [SocketSpec(token=t, measure=True, tag=i) for i, t in enumerate(recv_tok)]
    base = LoadSpec(
        ws_url=server.ws_url, sockets=(), mode="closed", window=args.window,
        warmup_s=args.warmup, measure_s=args.duration, drain_s=3.0,
        body_bytes=args.body_bytes, cmid_prefix="max",
    )  # fmt: skip
    kind = "yanzi" if server.is_yanzi else "raw"
    out: dict[str, Any] = {}
    if "relay" in args.scenarios or not server.is_yanzi:
        hook = prof.hook(f"{kind}-relay", server, args.duration)
        measured = run_load(server, _pair_specs(base, senders, receivers, args.workers), hook)
        out["relay"] = summarize(measured, 1)
    for rate in rates:
        spec = replace(
            base, mode="open", rate=rate / args.workers, measure_s=args.rate_duration,
            cmid_prefix=f"rate{rate:.0f}",
        )  # fmt: skip
        hook = prof.hook(f"{kind}-rate{rate:.0f}", server, args.rate_duration)
        measured = run_load(server, _pair_specs(spec, senders, receivers, args.workers), hook)
        out[f"rate@{rate:.0f}"] = summarize(measured, 1)
    return out


def scenario_fanout(args: argparse.Namespace, server: Server, prof: Profiler) -> dict[str, Any]:
    names = [f"m{i:04d}" for i in range(args.group_size)]
    tokens = asyncio.run(make_accounts(server.url, names))
    conv = "g_bench"
    asyncio.run(create_group(server.ws_url, tokens[names[0]], conv, names[1:]))
    socks = [
        SocketSpec(token=tokens[name], send_to=conv if i < args.group_senders else None,
                   measure=True, tag=i)
        for i, name in enumerate(names)
    ]  # fmt: skip
    base = LoadSpec(
        ws_url=server.ws_url, sockets=(), mode="closed", window=args.fanout_window,
        warmup_s=args.warmup, measure_s=args.duration, drain_s=5.0, body_bytes=args.body_bytes,
    )  # fmt: skip
    specs = [
        replace(base, sockets=tuple(socks[w :: args.workers]), cmid_prefix=f"fanw{w}s")
        for w in range(args.workers)
    ]
    measured = run_load(server, specs, prof.hook("yanzi-fanout", server, args.duration))
    return summarize(measured, args.group_size) | {
        "group_size": args.group_size,
        "senders": args.group_senders,
    }


def scenario_idle(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    """Authenticated sockets that only answer heartbeats; VmRSS before vs after connecting."""
    names = [f"i{i:05d}" for i in range(args.idle)]
    t0 = time.monotonic()
    tokens = asyncio.run(make_accounts(server.url, names, concurrency=128))
    setup_s = time.monotonic() - t0
    time.sleep(1.0)
    before = server.rss_kib()
    socks = [SocketSpec(token=tokens[name]) for name in names]
    base = LoadSpec(ws_url=server.ws_url, sockets=(), mode="idle", connect_concurrency=200)
    t1 = time.monotonic()
    workers = _spawn(
        [replace(base, sockets=tuple(socks[w :: args.workers])) for w in range(args.workers)]
    )
    try:
        connected = _await_ready(workers, timeout_s=240)
        connect_s = time.monotonic() - t1
        time.sleep(2.0)  # let the node settle: handshakes done, writer tasks parked
        after = server.rss_kib()
        gauge = server.metric("yanzi_connections")
        for _, pipe in workers:
            pipe.send(("stop",))
        closed = sum(pipe.recv()[1].closed_early for _, pipe in workers if pipe.poll(60))
    finally:
        _reap(workers)
    return {
        "requested": args.idle,
        "connected": connected,
        "node_connections_gauge": gauge,
        "closed_early": closed,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_conn": (after - before) / connected if connected else math.nan,
        "account_setup_s": setup_s,
        "connect_s": connect_s,
    }


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.node_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--scenarios", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--pairs", type=int, default=32, help="1:1 sender/receiver pairs")
    p.add_argument("--window", type=int, default=4, help="unacked sends per 1:1 sender")
    p.add_argument("--rates", default="500,1000,2000", help="open-loop rates, msgs/s in total")
    p.add_argument("--duration", type=float, default=10.0, help="closed-loop window, s")
    p.add_argument("--rate-duration", type=float, default=8.0, help="each fixed-rate window, s")
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window, s")
    p.add_argument("--group-size", type=int, default=100)
    p.add_argument("--group-senders", type=int, default=4)
    p.add_argument("--fanout-window", type=int, default=4, help="unacked sends per group sender")
    p.add_argument("--idle", type=int, default=10_000, help="idle WebSockets to open")
    p.add_argument("--body-bytes", type=int, default=128, help="opaque body bytes per message")
    p.add_argument("--quick", action="store_true", help="3 s windows, at most 2,000 idle sockets")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the node in each window")
    p.add_argument(
        "--node-env", action="append", default=[], metavar="YANZI_X=V",
        help="extra node environment for experiments (e.g. YANZI_FSYNC=false); repeatable",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the node data dirs and logs")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(args.scenarios) - set(ALL):
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.node_env = dict(item.split("=", 1) for item in args.node_env)
    if args.quick:
        args.duration = args.rate_duration = 3.0
        args.warmup = 1.0
        args.idle = min(args.idle, 2000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile_limit()  # the node and the raw relay inherit it
    if "idle" in args.scenarios and args.idle + 500 > nofile:
        print(f"open-files limit is {nofile}: idle sockets capped", file=sys.stderr)
        args.idle = nofile - 500
    busy0 = system_busy_s()
    time.sleep(1.0)
    others_pct = 100 * (system_busy_s() - busy0)
    if others_pct > 20:
        print(f"warning: other processes use {others_pct:.0f}% CPU: numbers will be low and noisy",
              file=sys.stderr)  # fmt: skip
    info = machine() | {
        "busy_before_pct": round(others_pct),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            ["python", "-m", "bench.node_bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "node_env": {**NODE_ENV, **args.node_env},
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
    }
    tmp = Path(tempfile.mkdtemp(prefix="yanzi-node-bench-"))
    prof = Profiler(args.profile)
    rates = args.rates if "rate" in args.scenarios else []
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        if "relay" in args.scenarios or rates:
            print("== yanzi: 1:1 relay ==", file=sys.stderr)
            with running(yanzi_node(tmp, "relay", args.node_env)) as node:
                results["yanzi"] = scenario_relay(args, node, prof, rates)
        if "fanout" in args.scenarios:
            print("== yanzi: group fan-out ==", file=sys.stderr)
            with running(yanzi_node(tmp, "fanout", args.node_env)) as node:
                results["fanout"] = scenario_fanout(args, node, prof)
        if "idle" in args.scenarios:
            print(f"== yanzi: {args.idle:,} idle connections ==", file=sys.stderr)
            with running(yanzi_node(tmp, "idle", args.node_env)) as node:
                results["idle"] = scenario_idle(args, node)
        if "raw" in args.scenarios:
            print("== raw aiohttp relay (the ceiling) ==", file=sys.stderr)
            with running(raw_relay(tmp)) as relay:
                results["raw"] = scenario_relay(args, relay, prof, rates[-1:])
    finally:
        if args.keep:
            print(f"data and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["runtime_s"] = round(time.monotonic() - started, 1)
    print(render(results, info))
    if args.profile:
        print(prof.report())
    if args.json:
        report = {"machine": info, "results": results}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
