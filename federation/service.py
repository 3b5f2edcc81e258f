"""The federation façade a node owns: embedded nats-server, the NATS connection, the roster and
the replicator, started and stopped with the node.

A node with no mesh (no mesh.json in its data dir) still runs its nats-server and connection, so
`yanzi mesh init` / `yanzi join` only need a restart to take effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nacl.signing import SigningKey

from crdt import ConvId, node_id_for, strict_loads
from federation.accounts_sync import DBS as ACCOUNTS_SYNC_DBS
from federation.accounts_sync import AccountsSync
from federation.config import FederationConfig
from federation.discovery import Advert, Advertiser, DiscoveryError, parse_interfaces, url_port
from federation.envelope import Envelope, EnvelopeError, open_envelope, seal
from federation.meshfiles import MeshFiles, MeshInfo
from federation.metrics import FederationMetrics
from federation.natsd import EmbeddedNats, NatsServerConfig
from federation.replicator import Replicator
from federation.roster import Roster, RosterError, encode_record, record_id
from federation.subjects import Subjects
from node.accounts import Accounts
from node.audit import AuditLog
from node.hub import Hub
from node.store import Put, Store

log = logging.getLogger(__name__)
DBS = ("roster", "local_users", *ACCOUNTS_SYNC_DBS)
ROSTER_PUSH_MIN_INTERVAL_S = 1.0


class Federation:
    def __init__(
        self,
        *,
        config: FederationConfig,
        data_dir: Path,
        key: SigningKey,
        hub: Hub,
        store: Store,
        metrics: FederationMetrics,
        audit: AuditLog,
        region: str,
        urls: list[str],
        health: Callable[[], dict[str, Any]] = dict,
        accounts: Accounts | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.key = key
        self.node_id = node_id_for(key.verify_key)
        self.hub = hub
        self.store = store
        self.metrics = metrics
        self.audit = audit
        self.region = region
        self.urls = urls
        self.health = health
        self.accounts = accounts  # replicated through accounts_sync when in a mesh
        self.natsd: EmbeddedNats | None = None
        self.nc: Any = None
        self.mesh: MeshInfo | None = None
        self.roster: Roster | None = None
        self.replicator: Replicator | None = None
        self.advertiser: Advertiser | None = None  # zeroconf, while config.discovery
        self.accounts_sync: AccountsSync | None = None
        self.local_users: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopting: dict[str, asyncio.Task[None]] = {}
        self._last_roster_push = 0.0
        self._started = time.time()
        self._stopping = False  # stop() drains and closes NATS: that disconnect is expected

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.local_users = {k.decode() for k, _ in self.store.scan("local_users")}
        self.mesh = MeshFiles(self.data_dir).load()
        url = self.config.nats_url or await self._start_embedded()
        self.nc = await nats.connect(
            url,
            name=f"yanzi-{self.node_id[:12]}",
            max_reconnect_attempts=-1,  # nats-py gives up after ~2 min by default
            reconnect_time_wait=0.25 + random.random() * 0.5,  # jitter across nodes
            ping_interval=5,
            max_outstanding_pings=3,
            no_echo=True,
            connect_timeout=5,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self.metrics.nats_connected.set(1)
        if self.config.discovery:
            self._spawn(self._advertise())
        if self.mesh is None:
            log.info("no mesh configured: running standalone (nats at %s)", url)
            return
        self.roster = Roster(self.mesh.mesh_id, self.mesh.operator)
        self._load_roster()
        await self._take_pending()
        self.replicator = Replicator(
            nc=self.nc,
            hub=self.hub,
            key=self.key,
            mesh=self.roster,
            config=self.config,
            metrics=self.metrics,
            audit=self.audit,
            region=self.region,
            urls=self.urls,
            local_users=lambda: self.local_users,
        )
        self.replicator.extra_hello = self._hello_extra
        self.replicator.on_hello.append(self._on_peer_hello)
        subjects = Subjects(self.mesh.mesh_id)
        await self.nc.subscribe(subjects.roster, cb=self._on_roster)
        await self.replicator.start()
        await self._start_accounts_sync(self.replicator)
        await self._push_roster(force=True)
        log.info(
            "federation up: mesh %s, %d roster members, nats %s",
            self.mesh.mesh_id, len(self.roster.members()), url,
        )  # fmt: skip

    async def _start_embedded(self) -> str:
        leaf_remotes: tuple[str, ...] = self.mesh.nats if self.mesh is not None else ()
        self.natsd = EmbeddedNats(
            NatsServerConfig(
                host=self.config.nats_host,
                port=self.config.nats_port,
                server_name=f"yanzi-{self.node_id[:12]}",
                leafnode_remotes=leaf_remotes,
                leafnode_port=self.config.leafnode_port,
            ),
            self.data_dir / "nats",
        )
        await self.natsd.start()
        return self.natsd.url

    async def _start_accounts_sync(self, replicator: Replicator) -> None:
        assert self.roster is not None
        sync = self.accounts_sync = AccountsSync(
            store=self.store, key=self.key, mesh=self.roster, config=self.config,
            metrics=self.metrics, audit=self.audit,
            peers=lambda: [p.node_id for p in replicator.alive_peers()],
        )  # fmt: skip
        await sync.open()
        if self.accounts is not None:
            self.accounts.journal = sync
        replicator.request_handlers.update(sync.request_handlers())
        replicator.on_peer_up.append(sync.peer_up)
        await sync.start(self.nc)

    async def stop(self) -> None:
        self._stopping = True
        if self.accounts_sync is not None:
            await self.accounts_sync.stop()
        if self.replicator is not None:
            await self.replicator.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.advertiser is not None:
            await self.advertiser.stop()  # goodbyes, so LAN browsers drop us now
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.natsd is not None:
            await self.natsd.stop()

    def _spawn(self, coro: Any) -> None:
        """Owned background work: kept in a set, cancelled and awaited by stop()."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- zeroconf ------------------------------------------------------------------------------

    async def _advertise(self) -> None:
        """Keep this node advertised on the LAN while it runs (DESIGN 9: it only helps others
        find us). The HTTP port is known only once the listener is up, after start() (port 0),
        and the URLs may change, so look again with backoff up to hello_interval_s. A failure
        turns advertising off with a warning; the node carries on."""
        delay = 0.05
        try:
            while True:
                await self._advertise_once()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.hello_interval_s)
        except DiscoveryError as exc:
            log.warning("not advertising on the LAN (zeroconf): %s", exc)
        except Exception:
            log.exception("zeroconf advertising failed; not advertising on the LAN")
        if self.advertiser is not None:
            await self.advertiser.stop()
            self.advertiser = None

    async def _advertise_once(self) -> None:
        url = self.urls[0] if self.urls else ""
        port = url_port(url)
        if port is None:
            return  # the HTTP listener is not up yet
        advert = Advert(
            node=self.node_id,
            region=self.region,
            http=url,
            mesh=self.mesh.mesh_id if self.mesh is not None else "",
            nats=self._leaf_url(),
        )
        if self.advertiser is None:
            interfaces = self.config.discovery_interfaces
            self.advertiser = Advertiser(advert, port=port, interfaces=interfaces)
            await self.advertiser.start()
        else:
            await self.advertiser.update(advert, port)

    def _leaf_url(self) -> str:
        """Where a joining node's nats-server can connect as a leaf (what an invite's `nats`
        holds), if this node's embedded server accepts leaf nodes."""
        if self.natsd is None or not self.config.leafnode_port:
            return ""
        host = self.config.nats_host
        if host in ("", "0.0.0.0", "::"):  # listening everywhere: name an advertised address
            interfaces = parse_interfaces(self.config.discovery_interfaces)
            if interfaces == "all":
                return ""
            host = interfaces[0]
        host = f"[{host}]" if ":" in host else host
        return f"nats://{host}:{self.config.leafnode_port}"

    # -- NATS connection events ---------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats: %s", exc)

    async def _on_disconnected(self) -> None:
        self.metrics.nats_connected.set(0)
        if self._stopping:
            log.info("disconnected from NATS (stopping)")
        else:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self.metrics.nats_connected.set(1)
        log.info("reconnected to NATS; running anti-entropy")
        if self.replicator is not None:
            self.replicator.trigger_ae()
        if self.accounts_sync is not None:
            self.accounts_sync.trigger()

    # -- roster -------------------------------------------------------------------------------

    def _load_roster(self) -> None:
        assert self.roster is not None
        for _, raw in self.store.scan("roster"):
            try:
                self.roster.add(strict_loads(raw))
            except RosterError as exc:
                log.error("stored roster record refused: %s", exc)

    async def _take_pending(self) -> None:
        """Records made by `yanzi mesh init/join/revoke` while the node was down."""
        assert self.roster is not None
        files = MeshFiles(self.data_dir)
        pending = files.pending()
        if not pending:
            return
        added = await self.add_roster_records(pending)
        files.discard_pending(record_id(r) for r in pending)
        log.info("took %d pending roster records (%d new)", len(pending), added)

    async def add_roster_records(self, records: list[dict[str, Any]]) -> int:
        """Verify, persist and adopt roster records (from peers, files or the admin API)."""
        assert self.roster is not None
        fresh = []
        for record in records:
            try:
                if self.roster.add(record):
                    fresh.append(record)
            except RosterError as exc:
                self.metrics.dropped.labels("bad_roster_record").inc()
                self.audit.record("roster_refused", error=str(exc), node=self.node_id)
        if fresh:
            await self.store.commit(
                [Put("roster", record_id(r).encode(), encode_record(r)) for r in fresh]
            )
            for record in fresh:
                if record.get("t") == "revoke":
                    self.audit.record("node_revoked", node=record.get("node"))
        return len(fresh)

    async def _on_roster(self, msg: Any) -> None:
        try:
            env = open_envelope(msg.data, max_bytes=1 << 20)
        except EnvelopeError as exc:
            self.metrics.dropped.labels("forged").inc()
            self.audit.record("federation_drop", reason="forged", error=str(exc))
            return
        records = env.body.get("records")
        if env.sender == self.node_id or not isinstance(records, list):
            return
        # Records authenticate themselves; the sender need not be a member (a joining node
        # announces its own enrolment this way).
        await self.add_roster_records([r for r in records if isinstance(r, dict)])

    def _hello_extra(self) -> dict[str, Any]:
        assert self.roster is not None
        extra = {"roster": self.roster.digest(), "uptime_s": int(time.time() - self._started)}
        extra.update(self.health())
        return extra

    def _on_peer_hello(self, env: Envelope) -> None:
        assert self.roster is not None
        if env.body.get("roster") != self.roster.digest():
            self._spawn(self._push_roster())

    async def publish_roster(self) -> None:
        await self._push_roster(force=True)

    async def _push_roster(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_roster_push < ROSTER_PUSH_MIN_INTERVAL_S:
            return
        self._last_roster_push = now
        assert self.roster is not None and self.mesh is not None
        body = {"records": self.roster.records()}
        with contextlib.suppress(Exception):
            await self.nc.publish(
                Subjects(self.mesh.mesh_id).roster, seal("roster", body, self.key)
            )

    # -- users and edges ----------------------------------------------------------------------

    def note_local_user(self, user: str) -> None:
        """A user authenticated here: host their conversations from now on."""
        if user in self.local_users:
            return
        self.local_users.add(user)
        task = asyncio.create_task(self._adopt_user(user), name=f"adopt-{user}")
        self._tasks.add(task)
        self._adopting[user] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._adopting.pop(user, None))

    async def user_settled(self, user: str, timeout_s: float = 5.0) -> None:
        """Before answering a user's sync here: make them local, and give the node a bounded
        moment to fetch from peers the conversations it did not host (a roaming client's first
        sync at a new edge would otherwise come back short; nothing is lost either way, since
        the cursor only advances over what was returned)."""
        self.note_local_user(user)
        task = self._adopting.get(user)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout_s)

    async def _adopt_user(self, user: str) -> None:
        await self.store.commit([Put("local_users", user.encode(), b"")])
        if self.replicator is not None:
            found = await self.replicator.discover_user(user)
            log.info("user %s is local now; %d conversations found on peers", user, found)

    def edges(self) -> list[dict[str, Any]]:
        """Mesh nodes with their region, public URLs and health, this node first."""
        rows = [{"node": self.node_id, "region": self.region, "urls": self.urls,
                 "healthy": True, "self": True}]  # fmt: skip
        if self.replicator is None or self.roster is None:
            return rows
        alive = {p.node_id for p in self.replicator.alive_peers()}
        for node, info in sorted(self.roster.members().items()):
            if node == self.node_id:
                continue
            peer = self.replicator.peers.get(node)
            rows.append(
                {
                    "node": node,
                    "region": info.region,
                    "urls": list(peer.urls if peer and peer.urls else info.urls),
                    "healthy": node in alive,
                    "self": False,
                }
            )
        return rows

    def status(self) -> dict[str, Any]:
        if self.mesh is None or self.roster is None or self.replicator is None:
            return {"mesh": None, "node": self.node_id, "nats_connected": self._connected()}
        now = time.monotonic()
        members = []
        for node, info in sorted(self.roster.members().items()):
            peer = self.replicator.peers.get(node)
            members.append(
                {
                    "node": node,
                    "region": info.region,
                    "urls": info.urls,
                    "self": node == self.node_id,
                    "last_seen_s": None if peer is None else round(now - peer.last_seen, 1),
                    "lag_ms": None
                    if (lag := self.replicator.live_lag_s.get(node)) is None
                    else round(lag * 1000, 1),
                    "up": node == self.node_id
                    or (peer is not None and now - peer.last_seen < self.config.peer_timeout_s),
                }
            )
        return {
            "mesh": self.mesh.mesh_id,
            "node": self.node_id,
            "region": self.region,
            "nats_connected": self._connected(),
            "members": members,
            "revoked": sorted(self.roster.revoked()),
            "hosted_conversations": len(self.replicator.hosted),
        }

    def _connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    async def host(self, conv: ConvId) -> None:
        if self.replicator is not None:
            await self.replicator.host(conv)
