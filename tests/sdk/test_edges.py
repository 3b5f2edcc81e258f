"""The nearest edge and failover (issue 4, item 6): ordering by RTT with fakes, then real meshes.

Pure parts (ordering, the next edge, when to move, parsing, RTT with a fake clock) run without
I/O. The rest uses real `yanzi up` processes: delayed TCP proxies in front of one node stand in
for near and far edges; a real two-node mesh over a real nats-server shows a client failing over
when its node is SIGKILLed and a client moving between nodes with its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from federation.meshfiles import MeshFiles
from federation.natsd import EmbeddedNats, NatsServerConfig
from tests.helpers import NodeProcess, eventually
from tests.sdk.conftest import FAST, MakeClient, Recorder, unique_user
from yanzi import (
    Ack,
    CaughtUp,
    Client,
    ClientConfig,
    Connected,
    ConnectionLost,
    Disconnected,
    Edge,
    EdgeChanged,
    InvalidRequest,
    ServerError,
)
from yanzi.edges import (
    EdgeProber,
    EdgeRouter,
    check_edges_option,
    median,
    next_edge,
    order_edges,
    parse_edges,
    should_move,
)

T = TypeVar("T")

# -- pure: ordering, the next edge, moving ---------------------------------------------------


def test_order_is_nearest_first_one_url_per_node_unreachable_then_down_last() -> None:
    candidates = [
        Edge(url="http://a1", node="A", region="r1"),
        Edge(url="http://a2", node="A", region="r1"),
        Edge(url="http://b", node="B", region="r2"),
        Edge(url="http://c", node="C", region="r3", healthy=False),
        Edge(url="http://d", node="D", region="r4"),
        Edge(url="http://e", node="E", region="r5"),
    ]
    rtts = {"http://a1": 0.030, "http://a2": 0.012, "http://b": 0.020, "http://d": None}
    order = order_edges(candidates, rtts)
    assert [e.url for e in order] == ["http://a2", "http://b", "http://d", "http://e", "http://c"]
    assert [e.rtt_s for e in order] == [0.012, 0.020, None, None, None]
    # Equal round trips keep the node's own order (it lists itself first).
    tied = order_edges(candidates[2:3] + candidates[:1], {"http://b": 0.01, "http://a1": 0.01})
    assert [e.node for e in tied] == ["B", "A"]
    assert order_edges([], {}) == []


def test_next_edge_wraps_round_and_starts_at_the_nearest_for_an_unknown_one() -> None:
    order = ["http://a", "http://b", "http://c"]
    assert next_edge(order, "http://a") == "http://b"
    assert next_edge(order, "http://c") == "http://a"
    assert next_edge(order, "http://elsewhere") == "http://a"
    assert next_edge(["http://a"], "http://a") == "http://a"
    assert next_edge([], "http://a") is None


def test_should_move_only_to_a_clearly_nearer_or_working_edge() -> None:
    here = Edge(url="http://a", node="A", rtt_s=0.050)
    assert should_move(here, Edge(url="http://b", node="B", rtt_s=0.020), margin_s=0.015)
    assert not should_move(here, Edge(url="http://b", node="B", rtt_s=0.040), margin_s=0.015)
    assert not should_move(here, here, margin_s=0.0)
    # Another URL of the same node is not a move.
    assert not should_move(here, Edge(url="http://a2", node="A", rtt_s=0.001), margin_s=0.0)
    # The current edge stopped answering probes / the mesh reports it down / it left the list.
    silent = Edge(url="http://a", node="A", rtt_s=None)
    down = Edge(url="http://a", node="A", healthy=False)
    far = Edge(url="http://b", node="B", rtt_s=0.300)
    assert should_move(silent, far, margin_s=0.015)
    assert should_move(down, far, margin_s=0.015)
    assert should_move(None, far, margin_s=0.015)
    assert not should_move(here, Edge(url="http://b", node="B"), margin_s=0.015)


def test_parse_edges_keeps_usable_rows_in_order() -> None:
    body = {
        "edges": [
            {"node": "A", "region": "cn-east", "urls": ["http://a:1/", "nats://a:4222"],
             "healthy": True, "self": True},
            {"node": "B", "region": "cn-south", "urls": ["https://b.example"], "healthy": False},
            {"region": "no node id", "urls": ["http://x"]},
            "junk",
            {"node": "C", "urls": "not a list"},
        ]
    }  # fmt: skip
    assert parse_edges(body) == [
        Edge(url="http://a:1", node="A", region="cn-east", healthy=True),
        Edge(url="https://b.example", node="B", region="cn-south", healthy=False),
    ]
    with pytest.raises(Exception, match="edges"):
        parse_edges({"nodes": []})


def test_edges_option_and_config_are_validated() -> None:
    assert check_edges_option(None) is None
    assert check_edges_option("auto") == "auto"
    assert check_edges_option(["http://a/", "http://a", "https://b"]) == ("http://a", "https://b")
    for bad in ("http://a", [], ["ws://a"], 5):
        with pytest.raises(InvalidRequest):
            check_edges_option(bad)
    with pytest.raises(InvalidRequest):
        ClientConfig(edge_probe_samples=0)
    with pytest.raises(InvalidRequest):
        ClientConfig(edge_probe_timeout_s=0)
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0]) == 2.5


# -- RTT with a fake clock --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMesh:
    """An `EdgeSource` whose probes take the listed times on a fake clock (one sample after the
    other, so samples of parallel probes cannot overlap on the shared clock)."""

    def __init__(self, clock: FakeClock, rtts: Mapping[str, list[float] | None]) -> None:
        self.clock = clock
        self.rtts = {url: None if s is None else list(s) for url, s in rtts.items()}
        self.listed: dict[str, Mapping[str, Any]] = {}
        self.asked: list[str] = []
        self.probes: Counter[str] = Counter()

    async def fetch_edges(self, url: str) -> Mapping[str, Any]:
        self.asked.append(url)
        if url not in self.listed:
            raise ConnectionLost(f"{url} is down")
        return self.listed[url]

    async def probe(self, url: str) -> object:
        self.probes[url] += 1
        samples = self.rtts.get(url)
        if not samples:
            raise ConnectionLost(f"{url} does not answer")
        self.clock.now += samples.pop(0) if len(samples) > 1 else samples[0]
        return {"ok": True}


def _router(source: FakeMesh, mode: Any = "auto", max_age_s: float = 60.0) -> EdgeRouter:
    return EdgeRouter(mode=mode, seed="http://seed", source=source, clock=source.clock,
                      samples=3, timeout_s=1.0, max_age_s=max_age_s)  # fmt: skip


async def test_rtt_is_the_median_of_samples_and_a_failed_probe_means_no_answer() -> None:
    clock = FakeClock()
    source = FakeMesh(clock, {"http://a": [0.200, 0.010, 0.012], "http://b": None})
    prober = EdgeProber(source.probe, clock=clock, samples=3, timeout_s=1.0)
    assert await prober.measure(["http://a", "http://b", "http://a"]) == {
        "http://a": pytest.approx(0.012),  # the slow first sample (a TCP handshake) is ignored
        "http://b": None,
    }
    assert source.probes == {"http://a": 3, "http://b": 1}


async def test_a_probe_slower_than_the_timeout_counts_as_no_answer() -> None:
    async def hangs(url: str) -> object:
        await asyncio.Event().wait()
        return None

    prober = EdgeProber(hangs, clock=FakeClock(), samples=3, timeout_s=0.05)
    assert await prober.rtt("http://slow") is None


async def test_router_asks_known_edges_for_the_list_and_orders_by_rtt() -> None:
    clock = FakeClock()
    source = FakeMesh(clock, {"http://near": [0.005], "http://far": [0.080], "http://seed": [0.03]})
    source.listed["http://seed"] = {
        "edges": [
            {"node": "S", "region": "r0", "urls": ["http://seed"], "healthy": True},
            {"node": "F", "region": "r1", "urls": ["http://far"], "healthy": True},
            {"node": "N", "region": "r2", "urls": ["http://near"], "healthy": True},
            {"node": "X", "region": "r3", "urls": ["http://down"], "healthy": False},
        ]
    }
    router = _router(source)
    assert not router.fresh()
    order = await router.refresh()
    assert router.urls == ("http://near", "http://seed", "http://far", "http://down")
    assert order[0].rtt_s == pytest.approx(0.005) and order[0].region == "r2"
    assert "http://down" not in source.probes  # the mesh says it is down: not measured
    assert router.fresh() and router.next_after("http://near") == "http://seed"
    clock.now += 61
    assert not router.fresh()

    # The seed dies: the list comes from the edge we are on, else from any edge known.
    del source.listed["http://seed"]
    source.listed["http://far"] = {
        "edges": [{"node": "F", "region": "r1", "urls": ["http://far"], "healthy": True}]
    }
    source.asked.clear()
    await router.refresh(prefer=["http://near"])
    assert source.asked == ["http://near", "http://seed", "http://far"]
    assert router.urls == ("http://far",)
    # Nobody answers: keep what we knew rather than forgetting every edge.
    source.listed.clear()
    await router.refresh()
    assert router.urls == ("http://far",)


async def test_a_fixed_list_is_measured_but_never_extended() -> None:
    clock = FakeClock()
    source = FakeMesh(clock, {"http://a": [0.040], "http://b": [0.010]})
    router = _router(source, mode=("http://a", "http://b", "http://c"), max_age_s=0)
    await router.refresh()
    assert source.asked == []  # no /v1/edges in this mode
    assert router.urls == ("http://b", "http://a", "http://c")
    clock.now += 10_000
    assert router.fresh()  # max age 0: measured once, reused until refresh() is called


# -- one real node behind delayed proxies (near and far edges) ---------------------------------


class DelayProxy:
    """A TCP proxy that holds every client->node chunk for `delay` seconds: a farther edge."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._conns |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer))
        finally:
            self._conns -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                if slow and self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    async def close(self) -> None:
        for conn in tuple(self._conns):
            conn.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxies(node: NodeProcess) -> AsyncIterator[tuple[DelayProxy, DelayProxy]]:
    near = await DelayProxy(node.port, 0.0).start()
    far = await DelayProxy(node.port, 0.060).start()
    yield near, far
    await near.close()
    await far.close()


async def test_connect_picks_the_nearest_of_a_list_and_skips_a_dead_one(
    node: NodeProcess, proxies: tuple[DelayProxy, DelayProxy], make_client: MakeClient
) -> None:
    near, far = proxies
    dead = "http://127.0.0.1:9"  # discard port: nothing listens there
    client = await make_client(url=node.url, connect=False, edges=[far.url, dead, near.url])
    rec = Recorder(client)
    await client.connect()
    assert client.edge == near.url and client.connected
    assert [e.url for e in client.edges] == [near.url, far.url, dead]
    assert client.edges[1].rtt_s is not None and client.edges[1].rtt_s >= 0.05
    assert client.edges[2].rtt_s is None
    kinds = [type(e) for e in rec.poll()]
    assert kinds[:3] == [EdgeChanged, Connected, CaughtUp]
    assert rec.of(EdgeChanged) == [EdgeChanged(None, near.url)]


async def test_re_measuring_moves_to_a_nearer_edge_without_losing_a_message(
    proxies: tuple[DelayProxy, DelayProxy], make_client: MakeClient
) -> None:
    near, far = proxies
    config = FAST.replace(edge_refresh_s=0.3, edge_move_margin_s=0.02)
    bob = await make_client(url=near.url, config=config, edges=[near.url, far.url])
    alice = await make_client()
    assert bob.edge == near.url
    conv = await alice.direct(bob.user)
    rec = Recorder(bob)
    near.delay, far.delay = 0.120, 0.0  # the network changed: the other edge is nearer now
    sending = asyncio.ensure_future(_send_all(alice, conv, [f"during {i}" for i in range(20)]))
    await eventually(lambda: bob.edge == far.url and bob.connected, timeout=15)
    acks = await sending
    assert rec.of(EdgeChanged) == [EdgeChanged(near.url, far.url)]
    assert rec.of(Disconnected)[0].will_retry  # a move, not a stop
    await eventually(lambda: {op.op_id for op in rec.ops("message")} >= {a.op_id for a in acks})
    assert all(n == 1 for n in Counter(op.op_id for op in rec.ops()).values())
    await eventually(lambda: alice.view(conv).to_bytes() == bob.view(conv).to_bytes())


async def test_move_to_an_unreachable_edge_raises_and_stays_where_it_was(
    make_client: MakeClient, node: NodeProcess
) -> None:
    client = await make_client(config=FAST.replace(connect_timeout_s=1.0))
    rec = Recorder(client)
    with pytest.raises(ConnectionLost):
        await client.move_to("http://127.0.0.1:9")
    assert client.edge == node.url
    await eventually(lambda: client.connected)
    assert rec.of(EdgeChanged) == []
    with pytest.raises(InvalidRequest):
        await client.refresh_edges()  # made without edges=


# -- a real two-node mesh -----------------------------------------------------------------------


# Shrunk federation timers through the documented environment overrides; no zeroconf.
MESH_ENV = {
    "YANZI_FED_HELLO_INTERVAL_S": "0.2",
    "YANZI_FED_PEER_TIMEOUT_S": "2",
    "YANZI_FED_DISCOVERY": "false",
}


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    """A mesh of two real nodes (operator flow: init at a, invite, join at b) over one
    standalone nats-server; yields once each lists both edges as healthy in /v1/edges."""
    nats = EmbeddedNats(NatsServerConfig(), tmp_path / "nats")
    nodes: list[NodeProcess] = []
    try:
        await nats.start()
        now_ms = time.time_ns() // 1_000_000
        operator = MeshFiles(tmp_path / "a")
        operator.init("east", [], now_ms)  # URLs: each node advertises its own in its hellos
        invite = operator.invite("south", 600, [nats.url], now_ms)
        MeshFiles(tmp_path / "b").join(invite, "south", [], now_ms)
        for name, region in (("a", "east"), ("b", "south")):
            env = {**MESH_ENV, "YANZI_FED_NATS_URL": nats.url, "YANZI_REGION": region}
            nodes.append(NodeProcess(tmp_path / name, env=env))
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes))
        want = {node.url for node in nodes}
        async with aiohttp.ClientSession() as http:

            async def both_list_both_healthy() -> bool:
                for node in nodes:
                    async with http.get(node.url + "/v1/edges") as resp:
                        rows = (await resp.json())["edges"]
                    # Exact URLs: a node's first hellos can carry http://127.0.0.1:0 (see the
                    # report: federation starts before the HTTP port is bound).
                    urls = {url for row in rows for url in row["urls"]}
                    if urls != want or not all(row["healthy"] for row in rows):
                        return False
                return True

            await eventually(both_list_both_healthy, timeout=30, interval=0.1)
        yield nodes[0], nodes[1]
    finally:
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))
        await nats.stop()


async def _until_accepted(call: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """Retry a call refused only because an account has not reached this node yet."""

    async def attempt() -> tuple[T] | None:
        try:
            return (await call(),)
        except ServerError:
            return None

    result: tuple[T] = await eventually(attempt, timeout=timeout, interval=0.1)
    return result[0]


async def _send_all(client: Client, conv: str, texts: list[str]) -> list[Ack]:
    return [await client.send(conv, text) for text in texts]


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()


async def _client(
    clients: list[Client], url: str, keystore: Path, user: str, *, register: bool, **kw: Any
) -> Client:
    client = Client(url, keystore_path=keystore, config=FAST, **kw)
    clients.append(client)
    if register:
        await client.register(user, "correct-horse-battery")
    await _until_accepted(lambda: client.login(user, "correct-horse-battery"))
    return client


@pytest.mark.integration
async def test_sigkill_of_the_nearest_node_fails_over_and_gets_exactly_the_gap(
    two_nodes: tuple[NodeProcess, NodeProcess], clients: list[Client], tmp_path: Path
) -> None:
    a, b = two_nodes
    by_url = {a.url: a, b.url: b}
    bob_name, alice_name = unique_user("bob"), unique_user("alice")
    bob = await _client(clients, a.url, tmp_path / "bob", bob_name, register=True, edges="auto")
    rec = Recorder(bob)
    await bob.connect()
    assert {e.url for e in bob.edges} == {a.url, b.url}
    assert all(e.rtt_s is not None for e in bob.edges)
    picked = by_url[bob.edge]
    other = b if picked is a else a
    assert rec.of(EdgeChanged) == [EdgeChanged(None, picked.url)]

    alice = await _client(clients, other.url, tmp_path / "alice", alice_name, register=True)
    await alice.connect()
    conv = await _until_accepted(lambda: alice.direct(bob_name))
    # Wait for the conversation to reach bob's node before writing in it: a message that gets
    # there ahead of the create is stored but never pushed to bob's socket (see the report).
    await eventually(lambda: bob.state(conv).conv_type == "direct", timeout=15)
    before = await alice.send(conv, "before the crash")
    await eventually(lambda: [m.op_id for m in bob.messages(conv)] == [before.op_id], timeout=15)

    await asyncio.to_thread(picked.kill)  # kill -9: no close frame, no goodbye
    gap = await _send_all(alice, conv, [f"while the nearest is dead {i}" for i in range(10)])
    await eventually(lambda: bob.connected and bob.edge == other.url, timeout=20)
    assert rec.of(EdgeChanged)[1:] == [EdgeChanged(picked.url, other.url)]
    assert rec.of(Disconnected)[0].will_retry

    want = [before.op_id] + [ack.op_id for ack in gap]
    await eventually(lambda: [m.op_id for m in bob.messages(conv)] == want, timeout=15)
    received = Counter(op.op_id for op in rec.ops("message"))
    assert received == dict.fromkeys(want, 1)  # the gap exactly once (and nothing older again)

    reply = await bob.send(conv, "still here, on the other edge")
    await eventually(lambda: reply.op_id in {m.op_id for m in alice.messages(conv)}, timeout=15)
    await eventually(lambda: alice.view(conv).to_bytes() == bob.view(conv).to_bytes())


@pytest.mark.integration
async def test_a_client_moving_from_a_to_b_with_its_cursor_gets_exactly_the_gap(
    two_nodes: tuple[NodeProcess, NodeProcess], clients: list[Client], tmp_path: Path
) -> None:
    a, b = two_nodes
    bob_name, alice_name = unique_user("bob"), unique_user("alice")
    alice = await _client(clients, a.url, tmp_path / "alice", alice_name, register=True)
    bob = await _client(clients, a.url, tmp_path / "bob", bob_name, register=True)
    await alice.connect()
    await bob.connect()
    conv = await alice.direct(bob_name)
    seen = await _send_all(alice, conv, [f"at a {i}" for i in range(3)])
    await eventually(lambda: len(bob.messages(conv)) == 3)
    cursor_at_a = bob.cursor

    await bob.disconnect()  # the app goes to the background at A...
    gap = await _send_all(alice, conv, [f"gap {i}" for i in range(25)])
    rec = Recorder(bob)
    await bob.move_to(b.url)  # ...and comes back nearer to B, with the same cursor and token
    assert bob.edge == b.url and bob.connected
    assert rec.of(EdgeChanged) == [EdgeChanged(a.url, b.url)]
    assert rec.of(CaughtUp)

    # B may answer that first catch-up before it has fetched the history of a conversation it
    # did not host (it adopts a newly local user in the background); what it fetches then comes
    # over the socket. Either way: the whole gap, each op once, nothing from before the cursor.
    want = [ack.op_id for ack in gap]
    await eventually(lambda: [op.op_id for op in rec.ops("message")] == want, timeout=15)
    assert Counter(op.op_id for op in rec.ops()) == dict.fromkeys(want, 1)
    assert [m.op_id for m in bob.messages(conv)] == [ack.op_id for ack in seen + gap]
    assert all(bob.cursor[c][o] >= n for c, vv in cursor_at_a.items() for o, n in vv.items())

    # Live at B: A's new ops reach bob through the mesh, and bob's reach alice at A.
    live = await alice.send(conv, "live from a")
    await eventually(lambda: live.op_id in {op.op_id for op in rec.ops()}, timeout=15)
    reply = await bob.send(conv, "answered from b")
    await eventually(lambda: reply.op_id in {m.op_id for m in alice.messages(conv)}, timeout=15)
    assert Counter(op.op_id for op in rec.ops("message")) == dict.fromkeys(
        [*want, live.op_id, reply.op_id], 1
    )
