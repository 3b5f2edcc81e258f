"""Wiring: one node = store + identity + accounts + hub + sessions + HTTP/WebSocket endpoints.

Collaborators are built here by hand and passed down; nothing is global. The aiohttp
application's cleanup context owns start-up and shutdown order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from nacl.signing import VerifyKey

from federation.config import FederationConfig
from federation.metrics import FederationMetrics
from federation.service import DBS as FEDERATION_DBS
from federation.service import Federation
from node.accounts import DBS as ACCOUNT_DBS
from node.accounts import Accounts
from node.audit import AuditLog
from node.config import NodeConfig
from node.gc_policy import GcPolicy
from node.http_api import HEALTH, Health, HttpApi, error_middleware
from node.hub import DBS as HUB_DBS
from node.hub import Hub
from node.identity import load_or_create_key
from node.mesh_api import MeshApi
from node.metrics import Metrics
from node.sessions import CLOSE_GOING_AWAY, Sessions
from node.static import StaticSite
from node.store import Store
from node.ws import WsEndpoint

log = logging.getLogger(__name__)
NODE_DBS = (*ACCOUNT_DBS, *HUB_DBS, *FEDERATION_DBS)


class AccountDirectory:
    """Adapts Accounts to the hub's small DeviceDirectory port."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def device_key(self, user: str, device: str) -> VerifyKey | None:
        found = self.accounts.device(user, device)
        return None if found is None else VerifyKey(found.keys.ed25519)

    def user_exists(self, user: str) -> bool:
        return self.accounts.user_exists(user)


def build_app(config: NodeConfig, fed_config: FederationConfig | None = None) -> web.Application:
    fed_config = fed_config or FederationConfig()
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.max_frame_bytes * 2
    )
    health = app[HEALTH] = Health(region=config.region)
    app.router.add_routes(health.routes())
    metrics = Metrics()
    app["metrics"] = metrics
    app["config"] = config
    app.router.add_routes(StaticSite().routes())  # the web chat page at / (node/static.py)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        data_dir = config.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds hashes and ciphertext
        key = load_or_create_key(data_dir)
        store = Store(
            data_dir / "lmdb",
            dbs=NODE_DBS,
            map_size=config.map_size_mb << 20,
            max_batch=config.max_commit_batch,
            sync=config.fsync,
        )
        store.on_batch = metrics.on_batch
        await store.start()
        accounts = Accounts(
            store,
            token_ttl_s=config.token_ttl_s,
            min_password_len=config.min_password_len,
            register_open=config.register_open,
            pwhash_level=config.pwhash_level,
        )
        sessions = Sessions(
            metrics=metrics, rate_per_s=config.rate_per_s, rate_burst=config.rate_burst
        )
        hub = Hub(
            store=store,
            node_key=key,
            devices=AccountDirectory(accounts),
            fanout=sessions,
            recall_window_s=config.recall_window_s,
            require_device_signatures=config.require_device_signatures,
            max_clock_drift_ms=config.max_clock_drift_ms,
            max_group_members=config.max_group_members,
        )
        await asyncio.to_thread(hub.load)
        # Every new op this node accepts from a client, whichever endpoint, once (not retries).
        hub.on_local_op.append(lambda op: metrics.send(op.kind))
        sessions.contacts = hub.contacts
        metrics.lmdb_size.set_function(store.size_bytes)
        metrics.ops_stored.set_function(lambda: sum(len(log) for log in hub.logs.values()))
        metrics.conversations.set_function(lambda: len(hub.logs))
        audit = AuditLog(data_dir / "audit.log")
        federation = Federation(
            config=fed_config,
            data_dir=data_dir,
            key=key,
            hub=hub,
            store=store,
            metrics=FederationMetrics(metrics.registry),
            audit=audit,
            region=config.region,
            urls=[config.url],
            health=lambda: {"sessions": len(sessions), "conversations": len(hub.logs)},
            accounts=accounts,
        )
        await federation.start()
        sessions.on_first_session.append(federation.note_local_user)
        api = HttpApi(config=config, accounts=accounts, hub=hub, sessions=sessions, metrics=metrics)
        api.on_login.append(federation.note_local_user)
        api.before_sync.append(federation.user_settled)
        ws = WsEndpoint(
            config=config, accounts=accounts, hub=hub, sessions=sessions, metrics=metrics
        )
        mesh_api = MeshApi(federation)
        app.router.add_routes([*api.routes(), *mesh_api.routes(), web.get("/v1/ws", ws.handle)])
        app["hub"], app["sessions"], app["store"] = hub, sessions, store
        app["federation"] = federation
        health.node_id = hub.node_id
        health.ready = True
        background = [asyncio.create_task(_housekeeping(accounts), name="housekeeping")]
        if config.gc_freeze_interval_s > 0:
            gc_policy = GcPolicy(config.gc_freeze_interval_s, config.gc_full_interval_s)
            gc_policy.start()  # the loaded logs go to the permanent generation at once
            background.append(asyncio.create_task(gc_policy.run(), name="gc-policy"))
        try:
            yield
        finally:
            health.ready = False
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await federation.stop()
            await store.close()
            audit.close()
        log.info("node %s stopped", hub.node_id)

    async def going_away(app: web.Application) -> None:
        health.ready = False  # first: shutdown has begun
        sessions = app.get("sessions")
        if sessions is not None:
            sessions.close_all(CLOSE_GOING_AWAY)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(going_away)
    return app


async def _housekeeping(accounts: Accounts, every_s: float = 3600.0) -> None:
    """Owned by the app lifecycle (cancelled and awaited at shutdown)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            purged = await accounts.purge_expired()
            log.info("purged %d expired tokens", purged)
        except Exception:
            log.exception("housekeeping failed")


async def serve(
    config: NodeConfig, *, stop: asyncio.Event, fed_config: FederationConfig | None = None
) -> None:
    """Run a node until `stop` is set, then shut down gracefully."""
    app = build_app(config, fed_config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    sockets = getattr(site._server, "sockets", None)  # the real port when config.port is 0
    if sockets:
        port = sockets[0].getsockname()[1]
    url = config.public_url or f"http://{config.host}:{port}"
    if not config.public_url:
        app["federation"].urls[:] = [url]
    # Here, not in start-up: with --port 0 only the listener knows the real port.
    log.info("node %s ready at %s (data in %s)", app[HEALTH].node_id, url, config.data_dir)
    # Tests and scripts read this line to learn the port: keep its shape.
    print(f"yanzi node listening on http://{config.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        app[HEALTH].ready = False  # before the listener closes (runner.cleanup)
        await runner.cleanup()
