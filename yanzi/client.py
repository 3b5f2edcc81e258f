"""`Client`: the async façade of the SDK — accounts, ops, the live socket and exact catch-up.

Connection model (docs/protocol.md, "Reconnect and catch-up"): the WebSocket carries live
traffic; after every (re)connect the client pulls the gap over HTTP (`GET /v1/sync` from the
persisted cursor, paging until `more` is false). The socket is authenticated *before* the
catch-up starts, so an op is either already stored when the catch-up reads, or delivered live:
nothing falls between the two, and the overlap is de-duplicated by op id (`SyncState`).

Edges (`edges="auto"` or a list of base URLs; yanzi.edges): on connect the client measures the
round trip to each edge of the mesh and connects to the nearest; when the socket drops it
reconnects to the next edge in that order; every `edge_refresh_s` it measures again and moves
to a clearly nearer edge. The token and the cursor are the same at every edge, so a move is just
a reconnect: HTTP catch-up from the cursor, then live.

End-to-end encryption (docs/e2ee.md; `ClientConfig(e2ee=True)`, the default): `send` and `edit`
encrypt bodies with this device's sender chain, received messages are decrypted, and
`messages()` shows plaintext with a `verified` flag; yanzi.e2ee_session does the work, this
class only routes ops and bodies through it.

Tasks: every background task has an owner that cancels and awaits it in `close()`: the client
owns the catch-up worker, the cursor writer and the edge re-measurer, and its `Link`
(yanzi.link) owns the socket's supervisor (reads frames, reconnects with backoff). Nothing is
fire-and-forget.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import secrets
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from crdt import (
    AttrValue,
    ConversationState,
    ConversationView,
    ConvId,
    DecodeError,
    Op,
    OpKind,
    b64encode,
)
from yanzi.config import Backoff, ClientConfig
from yanzi.cursor import SyncState
from yanzi.e2ee import sign_device
from yanzi.e2ee_session import E2eeSession, E2eeTimers
from yanzi.edges import (
    Clock,
    Edge,
    EdgeRouter,
    EdgesOption,
    HttpEdgeSource,
    check_edges_option,
    normalize_url,
    should_move,
)
from yanzi.errors import (
    AckTimeout,
    ConnectionLost,
    InvalidRequest,
    KeystoreError,
    NotLoggedIn,
    ProtocolError,
    ServerError,
    YanziError,
    YanziTimeout,
)
from yanzi.events import (
    Ack,
    CaughtUp,
    Connected,
    Conversation,
    Disconnected,
    EdgeChanged,
    Event,
    HistoryPage,
    Message,
    OpReceived,
    Presence,
    Read,
    ServerNotice,
    Typing,
)
from yanzi.keystore import Keystore, write_atomic
from yanzi.link import Link, log_crash
from yanzi.protocol import (
    Draft,
    ErrorFrame,
    OpFrame,
    Ready,
    ServerFrame,
    direct_conv_id,
    read_frame,
    send_frame,
    typing_frame,
)
from yanzi.stream import EventStream
from yanzi.transport import HttpApi, ws_url

log = logging.getLogger(__name__)


def new_cmid() -> str:
    """A client message id: 128 random bits (a retry must reuse it; a new message must not)."""
    return "c-" + secrets.token_urlsafe(16)


def new_group_id() -> str:
    return "g_" + secrets.token_urlsafe(12)  # 16 url-safe characters


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


class Client:
    """An async Yanzi client for one device (one keystore). Use as `async with Client(...)`.

    `edges`: None talks to `base_url` only; "auto" learns the mesh's edges from `GET /v1/edges`
    (of `base_url`, or of any edge known from before) and connects to the nearest, failing over
    to the next; a list of base URLs does the same among exactly those. `clock` (seconds,
    monotonic) times the round trips."""

    def __init__(
        self,
        base_url: str,
        *,
        keystore_path: str | os.PathLike[str],
        config: ClientConfig | None = None,
        rng: random.Random | None = None,
        edges: EdgesOption = None,
        clock: Clock = time.monotonic,
    ) -> None:
        ws_url(base_url)  # validates the scheme early
        self.base_url = base_url.rstrip("/")
        self.config = config or ClientConfig()
        self._rng = rng or random.Random()
        self._backoff = Backoff(self.config.backoff_base_s, self.config.backoff_max_s)
        mode = check_edges_option(edges)
        self.keystore = Keystore.open(keystore_path)
        self._sync = SyncState(self.keystore.cursor)
        self._http: aiohttp.ClientSession | None = None
        self._apis: dict[str, HttpApi] = {}
        self._edge = self.base_url  # where HTTP requests and the next connect go
        self._router: EdgeRouter | None = None
        if mode is not None:
            self._router = EdgeRouter(
                mode=mode,
                seed=self.base_url,
                source=HttpEdgeSource(self._api_at),
                clock=clock,
                samples=self.config.edge_probe_samples,
                timeout_s=self.config.edge_probe_timeout_s,
                max_age_s=self.config.edge_refresh_s,
            )
        # The edge of the last connection; EdgeChanged fires when a connection lands elsewhere.
        # With edges on, the first pick is reported too (old=None).
        self._connected_edge: str | None = None if self._router else self.base_url
        self._edge_lock = asyncio.Lock()  # one connect / move / re-measure at a time
        self._link = Link(
            api=self._http_api,
            token=self._token,
            config=self.config,
            uniform=self._rng.uniform,
            handler=self,
        )
        self._sync_lock = asyncio.Lock()
        self._persist_lock = asyncio.Lock()
        self._sync_wanted = asyncio.Event()
        self._cursor_dirty = asyncio.Event()
        self._streams: list[EventStream] = []
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._e2ee = self._new_e2ee()

    # -- introspection ------------------------------------------------------------------------

    @property
    def user(self) -> str | None:
        return self.keystore.user

    @property
    def device(self) -> str:
        return self.keystore.device

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def edge(self) -> str:
        """The base URL this client talks to now (or is reconnecting to)."""
        return self._edge

    @property
    def edges(self) -> tuple[Edge, ...]:
        """The edges measured last, nearest first (empty without `edges=` or before connect)."""
        return () if self._router is None else self._router.order

    @property
    def cursor(self) -> dict[str, dict[str, int]]:
        """A copy of the sync cursor: {conv: {origin node: highest contiguous seq}}."""
        return {c: {o: n for o, n in vv.items()} for c, vv in self._sync.cursor.items()}

    def view(self, conv: str) -> ConversationView:
        """An immutable snapshot of the local view of `conv` (empty if nothing is known)."""
        return self._sync.view(conv)

    def state(self, conv: str) -> ConversationState:
        """The live materialised state of `conv`: read it, never mutate it."""
        return self._sync.state(conv)

    def messages(self, conv: str) -> list[Message]:
        """The visible messages of `conv` in the local view, oldest first. With E2EE, bodies
        are plaintext (`e2ee` says whether decrypted, pending or failed; `verified` whether a
        trusted device key signed it) and replayed messages are left out."""
        state = self._sync.state(conv)
        rows = state.messages_before(None, len(state.messages))
        if self._e2ee is None:
            return [Message.from_state(conv, m) for m in rows]
        shown = (self._e2ee.present(m, Message.from_state(conv, m)) for m in rows)
        return [m for m in shown if m is not None]

    def ops(self, conv: str) -> list[Op]:
        """Every op of `conv` this client holds (parked and hidden ones too), in total order:
        what a caller needs to verify device signatures or read key shares."""
        mlog = self._sync.logs.get(ConvId(conv))
        return [] if mlog is None else mlog.ops()

    def events(self) -> EventStream:
        """Subscribe to events (from now on). Subscribe before `connect()` to miss nothing."""
        stream = EventStream(self._detach)
        self._streams.append(stream)
        if self._closed:
            stream._end()
        return stream

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket, authenticate, catch up over HTTP from the cursor, then stay live
        (reconnecting by itself) until `disconnect()` or `close()`.

        With `edges=`, first pick the edge: the nearest by a fresh measurement, or the edge of
        the last connection while the measurement is younger than `edge_refresh_s`; an edge
        that cannot be reached is skipped for the next one."""
        if self._closed:
            raise YanziError("this client is closed")
        self._start_workers()
        async with self._edge_lock:
            if self._link.running:
                return  # already connected (or reconnecting)
            await self._open_first(await self._connect_order())
        await self._catch_up_or_disconnect()

    async def disconnect(self) -> None:
        """Close the socket and stop reconnecting; local state and the cursor are kept, so a
        later `connect()` resumes exactly (a mini-program's onHide/onShow)."""
        async with self._edge_lock:
            await self._link.close()

    async def move_to(self, url: str) -> None:
        """Move to the edge at base URL `url` now: close the socket here, connect there and
        catch up from the cursor (exactly the gap). If `url` cannot be reached, the client goes
        back to the edge it was on (when it was connected) and the error is raised."""
        url = normalize_url(url)
        if self._closed:
            raise YanziError("this client is closed")
        self._start_workers()
        async with self._edge_lock:
            moved = await self._move(url)
        if moved:
            await self._catch_up_or_disconnect()

    async def refresh_edges(self) -> tuple[Edge, ...]:
        """Measure the edges again now (e.g. after the device changed networks) and return
        them nearest first; the connection moves only on the next re-measure or failover."""
        if self._router is None:
            raise InvalidRequest("this client was made without edges=")
        return await self._router.refresh(prefer=(self._edge,))

    async def close(self) -> None:
        """Stop every background task, disconnect, write the cursor and end event streams."""
        if self._closed:
            return
        self._closed = True
        try:
            # Workers first: the edge re-measurer could otherwise reopen a socket behind us.
            workers, self._workers = self._workers, []
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.disconnect()
            await self._persist()
        finally:
            if self._http is not None:
                await self._http.close()
                self._http = None
                self._apis.clear()
            for stream in self._streams:
                stream._end()
            self._streams.clear()

    # -- accounts -----------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        await self._http_api().register(username, password)

    async def login(self, username: str, password: str, *, device_name: str | None = None) -> None:
        """Log this keystore's device in, registering its public keys; the token is kept in the
        keystore, so later processes can `connect()` without logging in again."""
        if self._link.running:
            raise InvalidRequest("disconnect() before logging in again")
        ks = self.keystore
        data = await self._http_api().login(
            username,
            password,
            device=ks.device,
            device_name=device_name or self.config.device_name,
            keys=ks.public_keys_json(),
            keys_sig=self._keys_sig(username),
        )
        user = str(data["user"])
        if ks.user is not None and ks.user != user:
            ks.forget_account()  # another account: its cursor means nothing for this one
            self._sync = SyncState()
            self._e2ee = self._new_e2ee()
        ks.user = user
        ks.token = str(data["token"])
        expires = data.get("expires_ms")
        ks.token_expires_ms = expires if isinstance(expires, int) else None
        node = data.get("node")
        ks.node = node if isinstance(node, str) else None
        await self._persist()

    async def logout(self, *, all_devices: bool = False) -> None:
        """Revoke this device's token (or every token of the user) and forget it locally.
        Other devices' sockets close with 4011 and stop reconnecting."""
        token = self._token()
        await self.disconnect()
        await self._http_api().logout(token, all_devices=all_devices)
        self.keystore.token = None
        await self._persist()

    async def devices(self, user: str) -> list[dict[str, Any]]:
        """A user's devices and their public keys (for E2EE and safety numbers)."""
        return await self._http_api().devices(self._token(), user)

    # -- end-to-end encryption (docs/e2ee.md) -------------------------------------------------

    async def safety_number(self, user: str) -> str:
        """The 30-digit safety number of this user and `user` over both users' trusted device
        keys (fetched afresh). Equal on both sides unless a device was added or swapped."""
        return await self._need_e2ee().safety_number(user)

    def trust(self, user: str, device: str) -> bool:
        """Trust `device`'s current keys after a KeyChanged (compare safety numbers first);
        False if the device is unknown."""
        return self._need_e2ee().trust_device(user, device)

    def _keys_sig(self, username: str) -> str:
        ks = self.keystore
        x25519 = bytes(ks.box_key.public_key)
        return b64encode(sign_device(username, ks.device, ks.signing_key, x25519))

    def _new_e2ee(self) -> E2eeSession | None:
        if not self.config.e2ee:
            return None
        timers = E2eeTimers(key_request_delay_s=self.config.key_request_delay_s)
        return E2eeSession(_E2eeHost(self), self.keystore, timers=timers)

    def _need_e2ee(self) -> E2eeSession:
        if self._e2ee is None:
            raise InvalidRequest("end-to-end encryption is off (ClientConfig(e2ee=False))")
        return self._e2ee

    # -- conversations ------------------------------------------------------------------------

    async def direct(self, user: str) -> str:
        """The direct conversation with `user` (created on first use; the same id for both)."""
        try:
            return await self._http_api().direct(self._token(), user)
        except ServerError as err:
            if err.code != "bad_signature":
                raise
        # The node builds that create op itself, unsigned, and a node that requires device
        # signatures refuses it; create the conversation with a signed op of our own instead.
        conv = direct_conv_id(self._user(), user)
        draft = Draft(
            cmid=f"direct:{user}",
            conv=conv,
            kind="create",
            attrs={"type": "direct", "members": [user]},
        )
        try:
            await self._submit(draft)
        except ServerError as err:
            if err.code != "conflict":  # the peer created it at the same moment
                raise
        return conv

    async def create_group(
        self, title: str | None, members: Iterable[str], *, conv: str | None = None
    ) -> str:
        """Create a group owned by this user with `members`; returns its conversation id."""
        conv = conv or new_group_id()
        others = sorted(set(members) - {self._user()})
        attrs: dict[str, AttrValue] = {"type": "group", "members": others}
        if title is not None:
            attrs["title"] = title
        await self._submit(Draft(cmid=f"create:{conv}", conv=conv, kind="create", attrs=attrs))
        return conv

    async def add_member(self, conv: str, user: str, *, role: str = "member") -> Ack:
        return await self._op(conv, "member_add", target=user, attrs={"role": role})

    async def remove_member(self, conv: str, user: str) -> Ack:
        return await self._op(conv, "member_remove", target=user)

    async def set_role(self, conv: str, user: str, role: str) -> Ack:
        return await self._op(conv, "member_role", target=user, attrs={"role": role})

    async def update_settings(self, conv: str, settings: Mapping[str, AttrValue]) -> Ack:
        """Set conversation settings such as {"title": ...} (group admins, direct members)."""
        return await self._op(conv, "settings", attrs=dict(settings))

    async def conversations(self) -> list[Conversation]:
        """The conversation list with last message and unread count, newest first."""
        rows = await self._http_api().conversations(self._token())
        found = [Conversation.from_json(row) for row in rows]
        if self._e2ee is None:
            return found
        opened = [c.last_message and self._e2ee.open_row(c.last_message) for c in found]
        if self._e2ee.needs_keys(m for m in opened if m is not None):
            await self._fetch_keys()
            opened = [c.last_message and self._e2ee.open_row(c.last_message) for c in found]
        return [replace(c, last_message=m) for c, m in zip(found, opened, strict=True)]

    async def history(self, conv: str, before: str | None = None, limit: int = 50) -> HistoryPage:
        """Visible messages before `before` (op id; None: the newest), oldest first. With E2EE
        they are decrypted, but the node's rows carry no signatures: `verified` is False."""
        data = await self._http_api().messages(self._token(), conv, before=before, limit=limit)
        rows = tuple(Message.from_json(conv, m) for m in data.get("messages", []))
        messages = rows
        if self._e2ee is not None:
            messages = tuple(self._e2ee.open_row(m) for m in rows)
            if self._e2ee.needs_keys(messages):
                await self._fetch_keys()
                messages = tuple(self._e2ee.open_row(m) for m in rows)
        return HistoryPage(messages=messages, more=bool(data.get("more")))

    async def _fetch_keys(self) -> None:
        """Pull the key shares a history row needs: a catch-up (a client without a socket has
        none running), then handle what it brought."""
        assert self._e2ee is not None
        if not self._link.connected:
            await self._catch_up()
        await self._e2ee.settle()

    # -- ops ----------------------------------------------------------------------------------

    async def send(
        self,
        conv: str,
        body: bytes | str,
        *,
        cmid: str | None = None,
        attrs: Mapping[str, AttrValue] | None = None,
    ) -> Ack:
        """Send a message; returns the node's ack (durable). Safe to retry with the same cmid:
        the node answers every retry with the same op. With E2EE the body is encrypted (and
        the chain rotated and shared first when due); `attrs` stay visible to nodes."""
        sealed = await self._seal(conv, _as_bytes(body))
        return await self._op(conv, "message", body=sealed, attrs=attrs, cmid=cmid)

    async def edit(
        self, conv: str, op_id: str, body: bytes | str, *, cmid: str | None = None
    ) -> Ack:
        sealed = await self._seal(conv, _as_bytes(body))
        return await self._op(conv, "edit", target=op_id, body=sealed, cmid=cmid)

    async def _seal(self, conv: str, body: bytes) -> bytes:
        """Encrypt a body for `conv`; like a send, retried across drops (a new chain needs the
        key directory and its key_share ops) for up to `send_timeout_s`."""
        if self._e2ee is None:
            return body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.send_timeout_s
        attempt = 0
        while True:
            failure: YanziError
            try:
                return await self._e2ee.seal(conv, body)
            except ServerError as err:
                if not err.retryable:
                    raise
                failure = err
            except (ConnectionLost, YanziTimeout) as err:
                failure = err
            wait = min(self._backoff.delay(attempt, self._rng.uniform), deadline - loop.time())
            attempt += 1
            if wait <= 0:
                raise AckTimeout(f"could not encrypt for {conv}: {failure}") from failure
            await self._link.wait_online(wait)

    async def delete(self, conv: str, op_id: str, *, cmid: str | None = None) -> Ack:
        return await self._op(conv, "delete", target=op_id, cmid=cmid)

    async def react(self, conv: str, op_id: str, key: str, *, cmid: str | None = None) -> Ack:
        return await self._op(conv, "react", target=op_id, attrs={"key": key}, cmid=cmid)

    async def unreact(self, conv: str, op_id: str, key: str, *, cmid: str | None = None) -> Ack:
        """Remove this user's `key` reactions on a message: exactly the react ops the local view
        holds (an observed-remove set), so the message must be in the local view."""
        message = self._sync.state(conv).message(op_id)
        if message is None:
            raise InvalidRequest(f"message {op_id} is not in the local view of {conv}")
        me = self._user()
        mine: list[str] = sorted(
            rid for rid, user in message.reactions.get(key, {}).items() if user == me
        )
        if not mine:
            raise InvalidRequest(f"you have no {key!r} reaction on {op_id}")
        return await self._op(conv, "unreact", target=op_id, attrs={"removes": mine}, cmid=cmid)

    async def mark_read(self, conv: str, op_id: str) -> None:
        """Move this user's read marker in `conv` up to `op_id` (never backwards)."""
        if self._link.connected:
            try:
                await self._link.request(
                    lambda rid: read_frame(rid, conv, op_id), self.config.ack_timeout_s
                )
                return
            except (ConnectionLost, AckTimeout):
                pass  # the HTTP form below is idempotent
        await self._http_api().mark_read(self._token(), conv, op_id)

    async def typing(self, conv: str, active: bool) -> bool:
        """Tell the other members this user is (not) typing. Ephemeral: returns False when not
        connected (nothing is queued); a refusal arrives as a ServerNotice event."""
        return await self._link.send(typing_frame(conv, active))

    async def backfill(self, conv: str) -> int:
        """Load the whole op log of `conv` into the local view (a new process starts from its
        persisted cursor with empty views). Ops the cursor already covers raise no events.
        With E2EE, what can be decrypted is by the time this returns. Returns how many ops the
        local log of `conv` holds."""
        token = self._token()
        async with self._sync_lock:
            cursor = self._sync.encoded_cursor(without=ConvId(conv))
            while True:
                page = await self._http_api().sync(token, cursor, limit=self.config.sync_page)
                self._ingest_page(page)
                next_cursor = page.get("cursor")
                if not page.get("more") or not isinstance(next_cursor, str):
                    break
                if next_cursor == cursor:
                    break
                cursor = next_cursor
        if self._e2ee is not None:
            await self._e2ee.settle()  # decrypt what can be now, even without a socket
        mlog = self._sync.logs.get(ConvId(conv))
        return 0 if mlog is None else len(mlog)

    # -- sending ------------------------------------------------------------------------------

    async def _op(
        self,
        conv: str,
        kind: OpKind,
        *,
        target: str = "",
        attrs: Mapping[str, AttrValue] | None = None,
        body: bytes = b"",
        cmid: str | None = None,
    ) -> Ack:
        draft = Draft(
            cmid=cmid or new_cmid(),
            conv=conv,
            kind=kind,
            target=target,
            attrs=dict(attrs or {}),
            body=body,
        )
        return await self._submit(draft)

    async def _submit(self, draft: Draft) -> Ack:
        """Sign and send one op until acked: over the socket when connected, else POST /v1/ops;
        across drops and reconnects with the same cmid, so the node applies it exactly once."""
        cfg = self.config
        token = self._token()
        signed = draft.sign(self._user(), self.keystore.device, self.keystore.signing_key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.send_timeout_s
        attempt = 0
        while True:
            remaining = max(deadline - loop.time(), 0.001)
            failure: YanziError
            try:
                if self._link.connected:
                    reply = await self._link.request(
                        lambda rid: send_frame(rid, signed), min(cfg.ack_timeout_s, remaining)
                    )
                    return Ack.from_json(reply.frame, signed.cmid)
                async with asyncio.timeout(remaining):
                    frame = await self._http_api().post_op(token, signed.to_json())
                return Ack.from_json(frame, signed.cmid)
            except ServerError as err:
                if not err.retryable:
                    raise
                failure = err
            except (ConnectionLost, YanziTimeout) as err:
                failure = err
            except TimeoutError:
                failure = AckTimeout(f"POST /v1/ops for cmid {signed.cmid} timed out")
            wait = min(self._backoff.delay(attempt, self._rng.uniform), deadline - loop.time())
            attempt += 1
            if wait <= 0:
                raise AckTimeout(
                    f"op {signed.cmid} not acknowledged within {cfg.send_timeout_s} s "
                    f"({failure}); retrying with the same cmid is safe"
                ) from failure
            log.debug("retrying cmid %s in %.2f s after: %s", signed.cmid, wait, failure)
            await self._link.wait_online(wait)

    # -- LinkHandler: what the socket reports --------------------------------------------------

    def link_up(self, ready: Ready, *, reconnected: bool) -> None:
        if self._edge != self._connected_edge:
            old, self._connected_edge = self._connected_edge, self._edge
            log.info("now on edge %s (node %s), was %s", self._edge, ready.node, old)
            self._emit(EdgeChanged(old, self._edge))
        self._emit(Connected(ready.user, ready.device, ready.node, ready.session))
        if reconnected:
            self._request_sync()  # the gap since the drop comes over HTTP

    def link_down(self, event: Disconnected) -> None:
        self._emit(event)

    def link_reconnecting(self, attempt: int) -> None:
        """Failover: every reconnect attempt goes to the next edge in RTT order, round and
        round, so a dead node costs one attempt and a dead mesh is retried with backoff."""
        if self._router is not None:
            self._edge = self._router.next_after(self._edge) or self._edge

    def link_frame(self, frame: ServerFrame) -> None:
        if isinstance(frame, OpFrame):
            self._ingest(frame.op, live=True)
        elif isinstance(frame, ErrorFrame):
            self._emit(ServerNotice(frame.code, frame.message))
        elif isinstance(frame, Read | Typing | Presence):
            self._emit(frame)
        # ready, unknown frame types and stray replies carry nothing for the application

    # -- catch-up and the cursor --------------------------------------------------------------

    def _ingest(self, op: Op, *, live: bool) -> bool:
        result = self._sync.ingest(op)
        if self._e2ee is not None:
            self._e2ee.receive(op)  # every op (a backfill's too); it ignores repeats
        if result.cursor_moved:
            self._cursor_dirty.set()
        if result.new:
            self._emit(OpReceived(op.conv, op, live))
        if live and result.gap:
            self._request_sync()  # a live op beyond a hole: fetch the hole over HTTP
        return result.new

    def _ingest_page(self, page: Mapping[str, Any]) -> int:
        ops = page.get("ops")
        if not isinstance(ops, list):
            raise ProtocolError("a sync page needs an ops list")
        try:
            decoded = [Op.from_json(raw) for raw in ops]
        except DecodeError as exc:
            raise ProtocolError(f"malformed op in a sync page: {exc}") from None
        return sum(self._ingest(op, live=False) for op in decoded)

    async def _catch_up(self) -> int:
        """Pull every op the cursor lacks, page by page, until the node says there is no more."""
        token = self._token()
        new = 0
        async with self._sync_lock:
            cursor = self._sync.encoded_cursor()
            while True:
                page = await self._http_api().sync(token, cursor, limit=self.config.sync_page)
                new += self._ingest_page(page)
                if not page.get("more"):
                    break
                next_cursor = self._sync.encoded_cursor()
                if next_cursor == cursor:
                    # The node holds dots beyond a hole it cannot fill either (federation):
                    # asking again would return the same page forever.
                    log.warning("catch-up made no progress; the rest comes live or later")
                    break
                cursor = next_cursor
            self._sync.note_caught_up()
        if self._e2ee is not None:
            self._e2ee.caught_up()  # key requests may go out from now on
        self._emit(CaughtUp(new))
        return new

    def _request_sync(self) -> None:
        self._sync_wanted.set()

    async def _sync_worker(self) -> None:
        attempt = 0
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            try:
                await self._catch_up()
                attempt = 0
            except (ConnectionLost, YanziTimeout, ServerError, ProtocolError, NotLoggedIn) as exc:
                log.warning("catch-up failed: %s", exc)
                if self._link.connected and not getattr(exc, "needs_login", False):
                    await asyncio.sleep(self._backoff.delay(attempt, self._rng.uniform))
                    attempt += 1
                    self._request_sync()

    async def _persist_worker(self) -> None:
        while True:
            await self._cursor_dirty.wait()
            await asyncio.sleep(self.config.persist_delay_s)  # one write per burst
            self._cursor_dirty.clear()
            try:
                await self._persist()
            except KeystoreError as exc:
                log.error("could not save the cursor: %s", exc)

    async def _persist(self) -> None:
        async with self._persist_lock:
            self.keystore.cursor = copy.deepcopy(self._sync.cursor)
            if self._e2ee is not None:
                self.keystore.e2ee, self.keystore.trust = self._e2ee.snapshot()
            data = self.keystore.dumps()
            write = asyncio.get_running_loop().run_in_executor(
                None, write_atomic, self.keystore.path, data
            )
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # A thread cannot be cancelled: hold the lock until it is done, or an older
                # snapshot could land after (and over) a newer one.
                await asyncio.wait({write})
                raise

    # -- edges --------------------------------------------------------------------------------

    async def _connect_order(self) -> list[str]:
        """Where connect() tries, in turn: the nearest edges by a fresh measurement, or (while
        the last one is fresh) the edge of the last connection first."""
        router = self._router
        if router is None:
            return [self._edge]
        if not router.fresh():
            order = await router.refresh(prefer=(self._edge,))
            return [edge.url for edge in order]
        return [self._edge, *router.urls]

    async def _open_first(self, urls: Sequence[str]) -> None:
        """Open the link at the first of `urls` that takes us. An edge that refuses the token is
        skipped too (a token issued a moment ago may not have reached it yet); if all fail,
        raise the first refusal, or else the last network error."""
        refusal: ServerError | None = None
        failure: YanziError | None = None
        candidates = list(dict.fromkeys(urls))
        for url in candidates:
            self._edge = url
            try:
                await self._link.open()
                return
            except ServerError as err:
                refusal = refusal or err
                failure = err
            except (ConnectionLost, YanziTimeout, ProtocolError) as err:
                failure = err
            if len(candidates) > 1:
                log.info("cannot connect to edge %s: %s", url, failure)
        self._edge = candidates[0]
        raise refusal or failure or ConnectionLost("no edge to connect to")

    async def _move(self, url: str) -> bool:
        """Reconnect at `url` (hold `_edge_lock`). On failure, go back to where we were (or to
        any edge that works) if we were connected, and raise. False if already there."""
        old = self._edge
        was_running = self._link.running
        if url == old and was_running:
            return False
        await self._link.close(f"moving to edge {url}", will_retry=True)
        try:
            await self._open_first([url])
        except YanziError:
            self._edge = old
            if was_running:
                with contextlib.suppress(YanziError):
                    await self._open_first([old, *(self._router.urls if self._router else ())])
                    self._request_sync()
            raise
        return True

    async def _edge_worker(self, router: EdgeRouter) -> None:
        """Every `edge_refresh_s`: measure again; move if another edge is clearly nearer."""
        while True:
            await asyncio.sleep(self.config.edge_refresh_s)
            if not self._link.connected:
                continue  # disconnected, or failing over: connect() measures when stale
            try:
                # Measured outside the lock: disconnect() (onHide) must not wait for probes.
                order = await router.refresh(prefer=(self._edge,))
            except YanziError as exc:
                log.warning("re-measuring the edges failed: %s", exc)
                continue
            if not order:
                continue
            best = order[0]
            if not should_move(router.get(self._edge), best, self.config.edge_move_margin_s):
                continue
            async with self._edge_lock:
                if not self._link.connected or self._edge == best.url:
                    continue
                log.info("moving to the nearer edge %s from %s", best.url, self._edge)
                try:
                    await self._move(best.url)
                except YanziError as exc:
                    log.warning("could not move to edge %s: %s", best.url, exc)
                    continue
                self._request_sync()  # the gap, from the cursor, at the new edge

    async def _catch_up_or_disconnect(self) -> None:
        try:
            await self._catch_up()
        except BaseException:
            await self.disconnect()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                self._own(self._sync_worker(), "yanzi-catch-up"),
                self._own(self._persist_worker(), "yanzi-cursor-writer"),
            ]
            if self._e2ee is not None:
                self._workers.append(self._own(self._e2ee.run(), "yanzi-e2ee"))
            if self._router is not None and self.config.edge_refresh_s > 0:
                self._workers.append(
                    self._own(self._edge_worker(self._router), "yanzi-edge-measure")
                )

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a task the client owns (close() cancels and awaits it); log if it crashes."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(log_crash)
        return task

    def _emit(self, event: Event) -> None:
        for stream in self._streams:
            stream._put(event)

    def _detach(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def _http_api(self) -> HttpApi:
        """The HTTP API of the current edge."""
        return self._api_at(self._edge)

    def _api_at(self, url: str) -> HttpApi:
        if self._closed:
            raise YanziError("this client is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.connect_timeout_s
                )
            )
        api = self._apis.get(url)
        if api is None:
            api = self._apis[url] = HttpApi(
                self._http, url, timeout_s=self.config.request_timeout_s
            )
        return api

    def _token(self) -> str:
        if not self.keystore.token:
            raise NotLoggedIn("no token in the keystore: call login() first")
        return self.keystore.token

    def _user(self) -> str:
        if not self.keystore.user:
            raise NotLoggedIn("no user in the keystore: call login() first")
        return self.keystore.user


class _E2eeHost:
    """The client as its E2EE session sees it (yanzi.e2ee_session.E2eeHost)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def fetch_devices(self, user: str) -> list[dict[str, Any]]:
        return await self._client.devices(user)

    async def fetch_members(self, conv: str) -> list[str]:
        client = self._client
        path = f"/v1/conversations/{quote(conv, safe='')}"
        data = await client._http_api().call("GET", path, token=client._token())
        return sorted(str(u) for u in dict(data.get("members") or {}))

    async def submit_key_share(self, conv: str, body: bytes) -> Ack:
        return await self._client._op(conv, "key_share", body=body)

    def local_members(self, conv: str) -> list[str]:
        return sorted(self._client._sync.state(conv).members)

    def emit(self, event: Event) -> None:
        self._client._emit(event)

    def state_changed(self) -> None:
        self._client._cursor_dirty.set()  # the cursor writer saves the whole keystore

    async def persist(self) -> None:
        await self._client._persist()
