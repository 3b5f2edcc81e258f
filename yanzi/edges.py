"""Choosing the nearest edge of a mesh, and the next one when it fails (issue 4, item 6).

A node lists the mesh's edges at `GET /v1/edges` (docs/protocol.md §8.14): node id, region,
public URLs and whether it currently hears that node. The SDK measures the round trip to every
healthy edge (a few `GET /healthz`, median), connects to the nearest and, when the socket drops,
reconnects to the next one in that order. Because the cursor is a version vector over origins
(DESIGN.md decision 6), the same token and cursor resume exactly at any edge.

Two layers, like the rest of the SDK:

- pure functions over values: `parse_edges`, `order_edges`, `next_edge`, `should_move`, `median`;
- `EdgeProber` (RTT by `/healthz`, with an injectable clock) and `EdgeRouter` (discovery +
  measurement + the current order), which do I/O through the small callables they are given.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from yanzi.errors import InvalidRequest, ProtocolError, YanziError
from yanzi.transport import HttpApi

log = logging.getLogger(__name__)

EdgesOption = Literal["auto"] | Sequence[str] | None
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """One way to reach one node: a base URL, with what the mesh says about its node.

    `node` and `region` are None for an edge given by the application (a fixed list) rather
    than learned from `/v1/edges`; `rtt_s` is the measured median round trip (None: not
    measured, or it did not answer)."""

    url: str
    node: str | None = None
    region: str | None = None
    healthy: bool = True
    rtt_s: float | None = None

    @property
    def key(self) -> str:
        """What identifies the machine behind the URL: failover must skip a node's other URLs."""
        return self.node or self.url


# -- pure parts -------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"an edge URL must start with http:// or https://, not {url!r}")
    return url.rstrip("/")


def check_edges_option(edges: object) -> tuple[str, ...] | Literal["auto"] | None:
    """Validate `Client(edges=...)`: None, "auto", or a non-empty list of base URLs."""
    if edges is None or edges == "auto":
        return edges
    if isinstance(edges, str) or not isinstance(edges, Iterable):
        raise InvalidRequest('edges must be None, "auto" or a list of base URLs')
    urls = tuple(dict.fromkeys(normalize_url(u) for u in edges))
    if not urls:
        raise InvalidRequest("edges must list at least one base URL")
    return urls


def parse_edges(data: Mapping[str, Any]) -> list[Edge]:
    """The body of `GET /v1/edges` as one `Edge` per (node, URL), in the node's order.

    Rows this SDK cannot use (no node id, no http(s) URL) are skipped rather than failing the
    whole list: a newer node may list edges of kinds an older SDK does not know."""
    rows = data.get("edges")
    if not isinstance(rows, list):
        raise ProtocolError('GET /v1/edges must answer {"edges": [...]}')
    out: list[Edge] = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("node"), str):
            continue
        urls = row.get("urls")
        region = row.get("region")
        for url in urls if isinstance(urls, list) else ():
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                out.append(
                    Edge(
                        url=url.rstrip("/"),
                        node=row["node"],
                        region=region if isinstance(region, str) else None,
                        healthy=row.get("healthy", True) is True,
                    )
                )
    return out


def median(samples: Sequence[float]) -> float:
    if not samples:
        raise ValueError("median of no samples")
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rank(edge: Edge) -> tuple[int, float]:
    # Tiers: measured and healthy by RTT, then healthy but silent to our probe, then the edges
    # the mesh itself reports down. The last two stay in the list as a last resort: a node can
    # be cut off from its peers yet reachable by this client (and vice versa).
    if not edge.healthy:
        return 2, math.inf
    if edge.rtt_s is None:
        return 1, math.inf
    return 0, edge.rtt_s


def order_edges(candidates: Sequence[Edge], rtts: Mapping[str, float | None]) -> list[Edge]:
    """Nearest first: one entry per node (its fastest URL), each carrying its measured RTT.

    Stable: equal ranks keep the order the node listed them in (itself first)."""
    best: dict[str, tuple[tuple[int, float, int], Edge]] = {}
    for index, candidate in enumerate(candidates):
        edge = replace(candidate, rtt_s=rtts.get(candidate.url))
        rank = (*_rank(edge), index)
        held = best.get(edge.key)
        if held is None or rank < held[0]:
            best[edge.key] = (rank, edge)
    return [edge for _, edge in sorted(best.values(), key=lambda item: item[0])]


def next_edge(order: Sequence[str], current: str | None) -> str | None:
    """The edge to try after `current` fails: the next in order, wrapping round (so a client
    whose every edge is down keeps cycling through them with backoff). None if none is known."""
    if not order:
        return None
    if current not in order:
        return order[0]
    return order[(order.index(current) + 1) % len(order)]


def should_move(current: Edge | None, best: Edge, margin_s: float) -> bool:
    """After a re-measure: leave a working connection for `best` only if it is clearly nearer
    (by more than `margin_s`), so two edges at nearly the same distance do not flap."""
    if current is None:
        return True  # the current edge left the mesh's list
    if best.key == current.key:
        return False
    if _rank(best)[0] < _rank(current)[0]:
        return True  # the current one stopped answering probes, or the mesh reports it down
    if best.rtt_s is None or current.rtt_s is None:
        return False
    return current.rtt_s - best.rtt_s > margin_s


# -- measuring --------------------------------------------------------------------------------


class EdgeProber:
    """Round trips to edges: `samples` sequential `probe(url)` calls per edge, median, within
    `timeout_s` per edge; every edge in parallel. `clock` is injectable (tests use a fake)."""

    def __init__(
        self,
        probe: Callable[[str], Awaitable[object]],
        *,
        clock: Clock,
        samples: int,
        timeout_s: float,
    ) -> None:
        self._probe = probe
        self._clock = clock
        self._samples = samples
        self._timeout_s = timeout_s

    async def rtt(self, url: str) -> float | None:
        """Median round trip to `url`, or None if any probe failed or the time ran out (an edge
        that drops one probe in three is not one to prefer)."""
        times: list[float] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                for _ in range(self._samples):
                    start = self._clock()
                    await self._probe(url)
                    times.append(max(self._clock() - start, 0.0))
        except (YanziError, TimeoutError) as exc:
            log.debug("edge %s did not answer its probe: %s", url, exc)
            return None
        return median(times)

    async def measure(self, urls: Iterable[str]) -> dict[str, float | None]:
        unique = list(dict.fromkeys(urls))
        async with asyncio.TaskGroup() as group:  # every probe is awaited here, none outlives us
            tasks = {url: group.create_task(self.rtt(url)) for url in unique}
        return {url: task.result() for url, task in tasks.items()}


class EdgeSource(Protocol):
    """What the router needs from the transport: the edge list a node publishes, and a probe."""

    async def fetch_edges(self, url: str) -> Mapping[str, Any]: ...
    async def probe(self, url: str) -> object: ...


class HttpEdgeSource:
    """`EdgeSource` over the node's HTTP API (one `HttpApi` per base URL, from `api_at`)."""

    def __init__(self, api_at: Callable[[str], HttpApi]) -> None:
        self._api_at = api_at

    async def fetch_edges(self, url: str) -> Mapping[str, Any]:
        return await self._api_at(url).edges()

    async def probe(self, url: str) -> object:
        return await self._api_at(url).healthz()


class EdgeRouter:
    """The client's knowledge of the mesh's edges, nearest first, and when it last measured.

    `mode` is "auto" (learn the edges from `/v1/edges` of the configured or any known edge) or
    a fixed tuple of base URLs given by the application (e.g. a mini-program may only reach
    the domains it declared)."""

    def __init__(
        self,
        *,
        mode: Literal["auto"] | tuple[str, ...],
        seed: str,
        source: EdgeSource,
        clock: Clock,
        samples: int,
        timeout_s: float,
        max_age_s: float,
    ) -> None:
        self.mode = mode
        self.seed = seed
        self._source = source
        self._clock = clock
        self._max_age_s = max_age_s
        self._prober = EdgeProber(source.probe, clock=clock, samples=samples, timeout_s=timeout_s)
        self.order: tuple[Edge, ...] = ()
        self.measured_at: float | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(edge.url for edge in self.order)

    def fresh(self) -> bool:
        """Measured recently enough to reuse (a mini-program reconnects on every onShow)."""
        if self.measured_at is None or not self.order:
            return False
        return self._max_age_s <= 0 or self._clock() - self.measured_at < self._max_age_s

    def get(self, url: str) -> Edge | None:
        return next((edge for edge in self.order if edge.url == url), None)

    def next_after(self, current: str) -> str | None:
        return next_edge(self.urls, current)

    async def refresh(self, *, prefer: Sequence[str] = ()) -> tuple[Edge, ...]:
        """Learn the candidates, measure every healthy one in parallel, and reorder. Never
        raises for an unreachable mesh: the previous order (or the seed alone) stays usable."""
        candidates = await self._candidates(prefer)
        rtts = await self._prober.measure(edge.url for edge in candidates if edge.healthy)
        self.order = tuple(order_edges(candidates, rtts))
        self.measured_at = self._clock()
        log.info(
            "edges by round trip: %s",
            ", ".join(f"{e.url} ({_ms(e.rtt_s)})" for e in self.order),
        )
        return self.order

    async def _candidates(self, prefer: Sequence[str]) -> list[Edge]:
        if self.mode != "auto":
            return [Edge(url=url) for url in self.mode]
        # Ask the edge we are on first, then the configured one, then any we knew of.
        asked = dict.fromkeys([*prefer, self.seed, *self.urls])
        for url in asked:
            try:
                edges = parse_edges(await self._source.fetch_edges(url))
            except YanziError as exc:
                log.info("cannot list edges at %s: %s", url, exc)
                continue
            if edges:
                return edges
        log.warning("no edge answered GET /v1/edges; keeping the edges already known")
        return list(self.order) or [Edge(url=self.seed)]


def _ms(rtt: float | None) -> str:
    return "no answer" if rtt is None else f"{rtt * 1000:.1f} ms"
