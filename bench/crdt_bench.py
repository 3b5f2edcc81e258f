"""The crdt benchmark: a realistic 100k-op group conversation, measured against issue #2's targets.

Run from the repository root:

    python -m bench.crdt_bench            # human-readable report (~75 s on 2 cores)
    python -m bench.crdt_bench --json     # the same numbers as one JSON object
    python -m bench.crdt_bench --profile  # also cProfile the random-order apply + view

The conversation is generated deterministically (fixed seed, fixed start time, keys derived from
the seed), so every run measures the same op set; the report prints its digest. `random` is fine
here: bench/ is not crdt/ and nothing here needs to shrink.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import hashlib
import heapq
import io
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from nacl.signing import SigningKey

from crdt import (
    AttrValue,
    Content,
    ConvId,
    DeviceId,
    Dot,
    HybridClock,
    MessageLog,
    NodeId,
    Op,
    OpId,
    OpKind,
    Timestamp,
    UserId,
    VersionVector,
    node_id_for,
    sign_content,
    sign_envelope,
)
from crdt.op import compute_op_id

T = TypeVar("T")
CONV = ConvId("conv:bench-group")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so the op set is reproducible
REACTION_KEYS = ("👍", "❤️", "😂", "🎉", "🙏", "👀", "+1", "ok")

# Kind mix after the create op (weights sum to 1000): mostly ~100-byte messages.
MIX: tuple[tuple[str, int], ...] = (
    ("message", 850),
    ("edit", 35),
    ("delete", 15),
    ("react", 65),
    ("unreact", 15),
    ("member", 8),  # member_add / member_role / member_remove
    ("key_share", 10),
    ("settings", 2),
)

# Issue #2's targets.
TARGET_APPLY_OPS_S = 100_000
TARGET_VIEW_S = 1.0
TARGET_MISSING_S = 0.050
TARGET_OVERHEAD_B = 1024


# -- the generator ----------------------------------------------------------------------------


@dataclass
class _Origin:
    node: NodeId
    key: SigningKey
    clock: HybridClock
    skew_ms: int  # this node's physical clock error


@dataclass
class _User:
    user: UserId
    devices: list[tuple[DeviceId, SigningKey]]
    origin: int  # index of the user's home node


@dataclass
class _Delivery:
    """Pending replication of an op's HLC to another origin (what the HLC would `observe`)."""

    at_ms: int
    origin: int
    hlc: Timestamp

    def __lt__(self, other: _Delivery) -> bool:
        return (self.at_ms, self.origin) < (other.at_ms, other.origin)


@dataclass
class ConversationGenerator:
    """One group: an owner creates it, members on several edge nodes chat, edit, react, leave."""

    seed: int
    origins: int = 4
    users: int = 48
    initial_members: int = 24
    mean_gap_ms: float = 40.0  # ~25 ops/s into the whole group
    rng: random.Random = field(init=False)
    log: MessageLog = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.log = MessageLog(CONV)  # the generator's truth: only for dense seqs (next_seq)
        self._nodes = [
            _Origin(
                node=node_id_for((key := SigningKey(self.rng.randbytes(32))).verify_key),
                key=key,
                clock=HybridClock(),
                skew_ms=self.rng.randint(-400, 400),
            )
            for _ in range(self.origins)
        ]
        self._users = [
            _User(
                user=UserId(f"@user{i:03d}:yanzi.example"),
                devices=[
                    (DeviceId(f"dev{i:03d}{d}"), SigningKey(self.rng.randbytes(32)))
                    for d in "ab"[: self.rng.choice((1, 1, 2))]
                ],
                origin=self.rng.randrange(self.origins),
            )
            for i in range(self.users)
        ]
        self._index = {u.user: i for i, u in enumerate(self._users)}
        self._now = START_MS
        self._pending: list[_Delivery] = []
        self._members: dict[int, str] = {}  # user index -> role, as the generator believes
        self._about: dict[int, Timestamp] = {}  # user -> HLC of the last member op about them
        self._messages: list[tuple[OpId, int, Timestamp]] = []  # (id, author, hlc)
        self._deleted: set[OpId] = set()
        self._reacts: list[tuple[OpId, int, str, list[OpId]]] = []  # (message, user, key, adds)
        self.ops: list[Op] = []

    def generate(self, n: int) -> list[Op]:
        owner = 0
        members: list[str] = [self._users[i].user for i in range(1, self.initial_members)]
        self._emit(owner, "create", attrs={"type": "group", "members": members, "title": "bench"})
        self._members = {i: "member" for i in range(1, self.initial_members)}
        self._members[owner] = "owner"
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        while len(self.ops) < n:
            kind = self.rng.choices(kinds, weights)[0]
            getattr(self, f"_gen_{kind}")()
        return self.ops

    # one method per kind; each may decline (no valid target yet) and emit nothing

    def _gen_message(self) -> None:
        self._emit(self._any_member(), "message", body=self._body(60, 140))

    def _gen_key_share(self) -> None:
        self._emit(self._any_member(), "key_share", body=self._body(150, 300))

    def _gen_settings(self) -> None:
        admins = [u for u, r in self._members.items() if r != "member"]
        topic = f"topic {self.rng.randrange(1000)}"
        self._emit(self.rng.choice(admins), "settings", attrs={"topic": topic})

    def _gen_edit(self) -> None:
        found = self._recent_message()
        if found and found[1] in self._members:
            self._emit(found[1], "edit", target=found[0], body=self._body(60, 140), dep=found[2])

    def _gen_delete(self) -> None:
        found = self._recent_message()
        if not found:
            return
        author = found[1]
        if author not in self._members or self.rng.random() < 0.2:
            author = self.rng.choice([u for u, r in self._members.items() if r != "member"])
        self._deleted.add(found[0])
        self._emit(author, "delete", target=found[0], dep=found[2])

    def _gen_react(self) -> None:
        found = self._recent_message()
        if not found:
            return
        user, key = self._any_member(), self.rng.choice(REACTION_KEYS)
        op = self._emit(user, "react", target=found[0], attrs={"key": key}, dep=found[2])
        self._reacts.append((found[0], user, key, [op.op_id]))

    def _gen_unreact(self) -> None:
        if not self._reacts:
            return
        i = len(self._reacts) - 1 - min(int(self.rng.expovariate(1 / 30)), len(self._reacts) - 1)
        message, user, _key, adds = self._reacts.pop(i)
        if message in self._deleted or user not in self._members:
            return
        msg_hlc = next(h for m, _, h in reversed(self._messages) if m == message)
        self._emit(user, "unreact", target=message, attrs={"removes": list(adds)}, dep=msg_hlc)

    def _gen_member(self) -> None:
        owner = 0
        outsiders = [i for i in range(len(self._users)) if i not in self._members]
        roll = self.rng.random()
        if roll < 0.5 and outsiders:
            user = self.rng.choice(outsiders)
            adder = self.rng.choice([u for u, r in self._members.items() if r != "member"])
            self._emit(adder, "member_add", target=self._users[user].user, attrs={"role": "member"})
            self._members[user] = "member"
        elif roll < 0.75:
            user = self.rng.choice([u for u in self._members if u != owner])
            role = "admin" if self._members[user] == "member" else "member"
            self._emit(owner, "member_role", target=self._users[user].user, attrs={"role": role})
            self._members[user] = role
        elif plain := [u for u, r in self._members.items() if r == "member"]:
            user = self.rng.choice(plain)
            remover = user if self.rng.random() < 0.5 else owner  # leave, or be removed
            self._emit(remover, "member_remove", target=self._users[user].user)
            del self._members[user]
            if remover == owner and self.rng.random() < 0.5:
                # The removed user posts at the same moment, before their node has heard of the
                # removal: a real "removal vs post" race, settled by the total order.
                self._emit(user, "message", body=self._body(60, 140), unaware=True)

    # helpers

    def _any_member(self) -> int:
        return self.rng.choice(list(self._members))

    def _body(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))  # stands in for ciphertext

    def _recent_message(self) -> tuple[OpId, int, Timestamp] | None:
        """A live message, biased towards the newest (people edit and react to recent ones)."""
        for _ in range(4):
            if not self._messages:
                return None
            back = min(int(self.rng.expovariate(1 / 25)), len(self._messages) - 1)
            found = self._messages[-1 - back]
            if found[0] not in self._deleted:
                return found
        return None

    def _emit(
        self,
        author: int,
        kind: str,
        *,
        target: str = "",
        attrs: dict[str, AttrValue] | None = None,
        body: bytes = b"",
        dep: Timestamp | None = None,
        unaware: bool = False,
    ) -> Op:
        if not unaware:
            self._now += max(1, int(self.rng.expovariate(1 / self.mean_gap_ms)))
        user = self._users[author]
        origin = self._nodes[user.origin]
        now = self._now + origin.skew_ms
        self._deliver()
        # Causality: the author's node has seen what the op refers to, the last membership
        # change of its author, and of the user a member op is about (the generator decided
        # from them, so a real node would have had them).
        about = self._index.get(UserId(target)) if kind.startswith("member") else None
        seen = [dep, self._about.get(about) if about is not None else None]
        if not unaware:
            seen.append(self._about.get(author))
        for stamp in seen:
            if stamp is not None:
                origin.clock.observe(stamp, now)
        device, device_key = self.rng.choice(user.devices)
        content = Content(
            conv=CONV,
            kind=_kind(kind),
            author=user.user,
            device=device,
            target=target,
            attrs=attrs if attrs is not None else {},
            body=body,
        )
        op = Op(
            content=content,
            hlc=origin.clock.tick(now),
            dot=Dot(origin.node, self.log.next_seq(origin.node)),
            dsig=sign_content(content, device_key),
        )
        op = sign_envelope(op, origin.key)
        self.log.apply(op)
        self.ops.append(op)
        if kind == "message" and not unaware:  # a racing post may well end up hidden
            self._messages.append((op.op_id, author, op.hlc))
        if about is not None:
            self._about[about] = op.hlc
        for other in range(len(self._nodes)):
            if other != user.origin:  # replication delay 30-300 ms
                delay = self.rng.randint(30, 300)
                heapq.heappush(self._pending, _Delivery(self._now + delay, other, op.hlc))
        return op

    def _deliver(self) -> None:
        """Let every node observe the stamps replicated to it by now (HLC receive events)."""
        while self._pending and self._pending[0].at_ms <= self._now:
            d = heapq.heappop(self._pending)
            node = self._nodes[d.origin]
            node.clock.observe(d.hlc, self._now + node.skew_ms)


def _kind(kind: str) -> OpKind:
    return kind  # type: ignore[return-value]  # the generator only passes valid kinds


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    wall: float  # time.perf_counter seconds: what the targets are about
    cpu: float  # time.process_time seconds: the same work, minus waiting for other processes

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.wall + other.wall, self.cpu + other.cpu)


def _timed(fn: Callable[..., T], *args: Any) -> tuple[Timing, T]:
    """Wall and CPU time of one call. The cyclic GC stays on: a node runs with it too."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


class Best:
    """The best (lowest) wall and CPU time seen per measure: `name` and `name_cpu` in seconds."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def keep(self, name: str, t: Timing) -> None:
        for key, value in ((name, t.wall), (f"{name}_cpu", t.cpu)):
            self.times[key] = min(value, self.times.get(key, float("inf")))


def _apply_all(ops: Sequence[Op]) -> MessageLog:
    log = MessageLog(CONV)
    apply = log.apply
    for op in ops:
        apply(op)
    return log


def bench_apply(shuffled: Sequence[Op], in_order: Sequence[Op], runs: int) -> dict[str, float]:
    """(a) + (b): apply in random order, then rebuild the state and snapshot the view."""
    best = Best()
    keep = best.keep
    for run in range(runs):
        gc.collect()
        t_apply, log = _timed(_apply_all, shuffled)
        t_state, _ = _timed(attrgetter("state"), log)  # the fold over all ready ops
        t_view, view = _timed(log.view)  # the immutable snapshot
        keep("apply_random_s", t_apply)
        keep("state_rebuild_s", t_state)
        keep("view_snapshot_s", t_view)
        keep("view_total_s", t_state + t_view)
        keep("apply_random_incl_view_s", t_apply + t_state + t_view)
        if run == 0:  # not a target, and slow: once is enough
            keep("view_to_bytes_s", _timed(view.to_bytes)[0])
        del log, view
        gc.collect()
        t_ordered, _ = _timed(_apply_all, in_order)  # the live path: incremental fold
        keep("apply_in_order_s", t_ordered)
    return best.times


def bench_missing(log: MessageLog, in_order: Sequence[Op], gap: int, runs: int) -> dict[str, Any]:
    """(c): what a replica lacking the newest `gap` ops, or one whole origin, is sent."""
    behind = VersionVector.from_dots(op.dot for op in in_order[: len(in_order) - gap])
    counts: dict[NodeId, int] = {}
    for op in in_order:
        counts[op.dot.origin] = counts.get(op.dot.origin, 0) + 1
    lost = min(counts, key=lambda o: (counts[o], o))  # the smallest origin: the tightest number
    without = VersionVector.from_dots(op.dot for op in in_order if op.dot.origin != lost)
    current = log.version_vector
    best = Best()
    out: dict[str, Any] = {}
    gc.collect()
    for name, remote, expect in (
        ("gap", behind, gap),
        ("origin", without, counts[lost]),
        ("none", current, 0),
    ):
        for _ in range(runs):
            t, missing = _timed(log.missing_for, remote)
            best.keep(f"missing_{name}_s", t)
            if len(missing) != expect:
                raise AssertionError(f"missing_for({name}) gave {len(missing)} ops, not {expect}")
        out[f"missing_{name}_ops"] = expect
    return out | best.times


def _retained(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """Bytes still allocated (and the peak) after `fn`, by tracemalloc; `fn`'s result is kept."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = fn()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current - before, peak - before, result


def bench_memory(ops: Sequence[Op], sample: int) -> dict[str, float]:
    """(d): bytes retained per op beyond its body: the Op objects, then the log's indexes.

    Holding ops costs the same per op however many there are, so it is measured on a sample
    (tracemalloc makes decoding ~5x slower); the log's dicts amortise, so they get all the ops.
    """
    part = ops[:sample]
    wire = [op.to_bytes() for op in part]
    part_body = sum(len(op.content.body) for op in part)
    held: list[Op | None] = [None] * len(part)  # allocated before tracing: not the ops' cost

    def decode() -> None:  # ops as a replica holds them after receiving them
        for i, data in enumerate(wire):
            held[i] = Op.from_bytes(data)

    def construct() -> None:  # ops built in-process, id strings shared with the generator's
        for i, op in enumerate(part):
            held[i] = _rebuild(op)

    decoded_b = _retained(decode)[0]
    held[:] = [None] * len(part)
    constructed_b = _retained(construct)[0]
    held.clear()

    def build() -> MessageLog:  # dicts, version vector, parking, and the materialised state
        log = _apply_all(ops)
        _ = log.state
        return log

    log_b, log_peak, _log = _retained(build)
    del _log
    n = len(ops)
    return {
        "sample_ops": len(part),
        "body_bytes_per_op": sum(len(op.content.body) for op in ops) / n,
        "op_decoded_overhead_b": (decoded_b - part_body) / len(part),
        "op_constructed_overhead_b": (constructed_b - part_body) / len(part),
        "log_index_b": log_b / n,
        "log_index_peak_b": log_peak / n,
        "overhead_per_op_b": (decoded_b - part_body) / len(part) + log_b / n,
    }


def _rebuild(op: Op) -> Op:
    """A fresh Op with fresh body, signatures and stamps; only id strings are shared."""
    c = op.content
    content = Content(
        conv=c.conv,
        kind=c.kind,
        author=c.author,
        device=c.device,
        target=c.target,
        attrs=dict(c.attrs) if c.attrs else c.attrs,
        body=bytes(bytearray(c.body)),
    )
    return Op(
        content=content,
        hlc=Timestamp(op.hlc.l, op.hlc.c),
        dot=Dot(op.dot.origin, op.dot.seq),
        dsig=bytes(bytearray(op.dsig)),
        nsig=bytes(bytearray(op.nsig)),
    )


def bench_codec(ops: Sequence[Op], runs: int) -> dict[str, float]:
    """(e): wire encode/decode and op id rates on a sample."""
    wire = [op.to_bytes() for op in ops]
    gc.collect()
    best = Best()
    for _ in range(runs):
        best.keep("encode", _timed(lambda: [op.to_bytes() for op in ops])[0])
        best.keep("decode", _timed(lambda: [Op.from_bytes(w) for w in wire])[0])
        best.keep("op_id", _timed(lambda: [compute_op_id(o.content, o.hlc, o.dot) for o in ops])[0])
    n = len(ops)
    rates = {f"{name}_ops_s": n / seconds for name, seconds in best.times.items()}
    return {"sample_ops": n, "wire_bytes_per_op": sum(map(len, wire)) / n} | rates


def _commit() -> str:
    """What was measured: `git describe --always --dirty` of the working tree, if any."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # Other work on the box (tests, other benchmarks) shows up here and in the timings.
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
    }


# -- reporting --------------------------------------------------------------------------------


def _digest(ops: Sequence[Op]) -> str:
    return hashlib.sha256("".join(sorted(op.op_id for op in ops)).encode()).hexdigest()[:16]


def report(r: dict[str, Any]) -> str:
    """The human-readable table: wall time (what the targets are about) and CPU time."""
    m, a, g, mem, c = r["machine"], r["apply"], r["missing"], r["memory"], r["codec"]
    n = r["ops"]
    lines = [
        f"crdt benchmark at {r['commit']}: {n} ops (seed {r['seed']}, digest {r['digest']})",
        f"ops: {r['mix']}",
        f"machine: {m['nproc']} cpu, {m['cpu']}, {m['python']}, {m['platform']}, {m['date']}, "
        f"load average {' '.join(map(str, m['loadavg']))}",
        "",
        f"  {'measure':<50} {'target':>12} {'wall':>16} {'cpu':>16}",
    ]

    def row(what: str, target: str, wall: str, cpu: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        lines.append(f"  {what:<50} {target:>12} {wall:>16} {cpu:>16}{mark}".rstrip())

    def rate(d: dict[str, Any], key: str, target: str = "") -> None:
        ok = n / d[key] >= TARGET_APPLY_OPS_S if target else None
        row(what, target, f"{n / d[key]:,.0f} ops/s", f"{n / d[key + '_cpu']:,.0f} ops/s", ok)

    def ms(d: dict[str, Any], key: str, target: str = "", limit: float = 0.0) -> None:
        ok = d[key] < limit if target else None
        wall, cpu = d[key] * 1e3, d[key + "_cpu"] * 1e3
        digits = 1 if wall >= 1 else 3
        row(what, target, f"{wall:,.{digits}f} ms", f"{cpu:,.{digits}f} ms", ok)

    what = "(a) apply, random order"
    rate(a, "apply_random_s", "≥100k ops/s")
    what = "(a) apply, random order, incl. view"
    rate(a, "apply_random_incl_view_s", "≥100k ops/s")
    what = "    apply, total order (incremental fold)"
    rate(a, "apply_in_order_s")
    what = "(b) view after random-order apply: rebuild+snapshot"
    ms(a, "view_total_s", "< 1 s", TARGET_VIEW_S)
    what = "    log.state: rebuild (sort + fold)"
    ms(a, "state_rebuild_s")
    what = "    log.view(): snapshot of the built state"
    ms(a, "view_snapshot_s")
    what = "    view.to_bytes() (canonical JSON, not a target)"
    ms(a, "view_to_bytes_s")
    what = f"(c) missing_for, newest {g['missing_gap_ops']:,} ops lacking"
    ms(g, "missing_gap_s", "< 50 ms", TARGET_MISSING_S)
    what = f"    missing_for, one origin lacking ({g['missing_origin_ops']:,} ops)"
    ms(g, "missing_origin_s")
    what = "    missing_for, nothing lacking"
    ms(g, "missing_none_s")
    row(
        "(d) memory per op beyond body (decoded op + log)",
        "≤ 1024 B",
        f"{mem['overhead_per_op_b']:,.0f} B",
        ok=mem["overhead_per_op_b"] <= TARGET_OVERHEAD_B,
    )
    row(
        f"    Op decoded from wire ({mem['sample_ops']:,} sampled)",
        "",
        f"{mem['op_decoded_overhead_b']:,.0f} B",
    )
    row(
        "    Op constructed in-process (id strings shared)",
        "",
        f"{mem['op_constructed_overhead_b']:,.0f} B",
    )
    row("    log indexes + materialised state", "", f"{mem['log_index_b']:,.0f} B")
    row("    (mean body, for scale)", "", f"{mem['body_bytes_per_op']:,.0f} B")
    for name, label in (
        (
            "encode",
            f"(e) Op.to_bytes ({c['wire_bytes_per_op']:,.0f} B/op, {c['sample_ops']:,} ops)",
        ),
        ("decode", "    Op.from_bytes (strict decode + op_id)"),
        ("op_id", "    compute_op_id"),
    ):
        wall, cpu = c[f"{name}_ops_s"], c[f"{name}_cpu_ops_s"]
        row(label, "", f"{wall:,.0f} ops/s", f"{cpu:,.0f} ops/s")
    lines += [
        "",
        f"generation {r['generate_s']:.1f} s, total {r['total_s']:.1f} s; "
        f"parked after random-order apply: {r['parked_final']}, hidden ops: {r['hidden']}",
    ]
    return "\n".join(lines)


def profile_apply(shuffled: Sequence[Op]) -> str:
    prof = cProfile.Profile()
    prof.enable()
    log = _apply_all(shuffled)
    log.view()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crdt_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--ops", type=int, default=100_000, help="conversation size (default 100000)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="generator seed (default 2026)")
    parser.add_argument("--gap", type=int, default=10_000, help="missing_for gap (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="best-of runs (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--profile", action="store_true", help="cProfile random-order apply + view")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.json:
            print(f"[{time.perf_counter() - t0:5.1f} s] {msg}", file=sys.stderr)

    progress(f"generating {args.ops} ops ...")
    t_gen, ops = _timed(lambda: ConversationGenerator(args.seed).generate(args.ops))
    in_order = sorted(ops, key=lambda op: op.order_key)
    shuffled = list(ops)
    random.Random(args.seed + 1).shuffle(shuffled)
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.kind] = counts.get(op.kind, 0) + 1

    progress("(a)(b) apply + view ...")
    applied = bench_apply(shuffled, in_order, args.runs)
    log = _apply_all(shuffled)
    parked_final, hidden = len(log.parked), len(log.state.hidden)
    progress("(c) missing_for ...")
    missing = bench_missing(log, in_order, min(args.gap, len(ops)), max(5, args.runs))
    del log
    progress("(d) memory ...")
    memory = bench_memory(ops, min(10_000, len(ops)))
    progress("(e) codec ...")
    codec = bench_codec(ops[: min(10_000, len(ops))], args.runs)
    result = {
        "ops": len(ops),
        "seed": args.seed,
        "digest": _digest(ops),
        "commit": _commit(),
        "mix": ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
        "kinds": counts,
        "machine": machine(),
        "generate_s": t_gen.wall,
        "apply": applied,
        "missing": missing,
        "memory": memory,
        "codec": codec,
        "parked_final": parked_final,
        "hidden": hidden,
        "targets": {
            "apply_ops_s": TARGET_APPLY_OPS_S,
            "view_s": TARGET_VIEW_S,
            "missing_s": TARGET_MISSING_S,
            "overhead_b": TARGET_OVERHEAD_B,
        },
    }
    result["total_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(report(result))
    if args.profile:
        print(profile_apply(shuffled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
