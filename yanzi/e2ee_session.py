"""The client's end-to-end encryption layer (docs/e2ee.md): the I/O shell around yanzi.e2ee.

`E2eeSession` owns this device's chains, the inbound chains shared with it, the replay book and
the trust store (yanzi.trust), all persisted in the keystore. It talks to the world only through
an `E2eeHost` (the `Client`): fetch a key directory or a member list, submit a key_share op,
emit an event, persist the keystore.

* **Sending** (`seal`): before a body, rotate the conversation's chain if §3 says so — share the
  new chain with every trusted device of every member (one or more key_share ops, acked before
  the first message that uses it, so the share precedes it in total order) — then encrypt at the
  next index. Indices are reserved in blocks in the keystore, so a crash never reuses one.
* **Receiving** (`receive`, then the `run` worker, one op at a time): check the op's device
  signature against the directory key, decrypt with the inbound chain, record the position in
  the replay book; a body whose chain is not known yet waits for its share, and after
  `key_request_delay_s` past a catch-up a `yz.keyreq.v1` asks the chain's owner for it.
* **Answering key requests**: the owner shares the chain's start key with the requesting device
  if it is trusted and its user was a member when the chain started and still is (a member added
  later must not read what was said before: docs/e2ee.md §6).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import nacl.utils
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from crdt import MessageState, Op, b64decode
from yanzi.e2ee import (
    ALG_CHAIN,
    CHAIN_LENGTH,
    ChainKey,
    E2eeError,
    InboundChain,
    KeyRequest,
    OutboundChain,
    Recipient,
    ReplayBook,
    ShareBody,
    body_alg,
    chain_ref,
    decrypt_body,
    encrypt_body,
    key_request_body,
    open_share,
    parse_body,
    parse_key_share,
    safety_number,
    seal_shares,
)
from yanzi.errors import InvalidRequest, ServerError, YanziError
from yanzi.events import Ack, E2eeStatus, Event, Message, Replay, Undecryptable
from yanzi.keystore import Keystore
from yanzi.trust import TrustStore, verified_devices

log = logging.getLogger(__name__)

STATE_VERSION: Final = 1
RESERVE: Final = 16  # chain indices reserved per keystore write
RETIRED_PER_CONV: Final = 8  # old outbound chains kept to answer key requests
ANSWER_INTERVAL_S: Final = 30.0  # answer one device's request for one chain at most this often
RETRY_S: Final = 2.0  # an op that needed the network and failed is tried again after this,
MAX_RETRIES: Final = 8  # doubling each time, this many times (about 8.5 minutes in all)


class E2eeHost(Protocol):
    """What the session needs from the client around it."""

    async def fetch_devices(self, user: str) -> list[dict[str, Any]]: ...
    async def fetch_members(self, conv: str) -> list[str]: ...
    async def submit_key_share(self, conv: str, body: bytes) -> Ack: ...
    def local_members(self, conv: str) -> list[str]: ...
    def emit(self, event: Event) -> None: ...
    def state_changed(self) -> None: ...
    async def persist(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Opened:
    """What became of one message/edit op's body."""

    status: E2eeStatus
    body: bytes = b""
    author: str = ""
    device: str = ""
    signer: bytes | None = None  # the directory Ed25519 key of (author, device) that signed it
    replay_of: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, op: Op, status: E2eeStatus, body: bytes = b"", **more: Any) -> Opened:
        return cls(status, body, op.author, op.content.device, **more)


@dataclass(frozen=True, slots=True, kw_only=True)
class E2eeTimers:
    key_request_delay_s: float = 3.0
    key_request_retry_s: float = 30.0
    key_request_attempts: int = 3
    directory_ttl_s: float = 60.0
    tick_s: float = 0.25


class E2eeSession:
    def __init__(
        self,
        host: E2eeHost,
        keystore: Keystore,
        *,
        timers: E2eeTimers | None = None,
        random_bytes: Callable[[int], bytes] = nacl.utils.random,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._ks = keystore
        self._timers = timers or E2eeTimers()
        self._random = random_bytes
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._load(keystore.e2ee, keystore.trust)
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._seen: set[str] = set()
        self._opened: dict[str, Opened] = {}
        self._pending: dict[ChainKey, list[Op]] = {}
        self._pending_since: dict[ChainKey, float] = {}
        self._requested: dict[ChainKey, tuple[int, float]] = {}
        self._retry: list[tuple[float, Op]] = []
        self._failures: dict[str, int] = {}  # op id -> failed attempts (network, directory)
        self._fetched: dict[str, float] = {}
        self._answered: dict[tuple[str, str, str], float] = {}
        self._untrusted_requests: dict[tuple[str, str], list[Op]] = {}
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._caught_up = False
        self._handling = asyncio.Lock()  # one op at a time: the worker, or settle()

    # -- persistence --------------------------------------------------------------------------

    def _load(self, state: Mapping[str, Any] | None, trust: Mapping[str, Any] | None) -> None:
        state = state or {}
        try:
            self.trust = TrustStore.from_json(trust or {})
            self._outbound = {
                c: OutboundChain.from_json(v) for c, v in dict(state.get("outbound", {})).items()
            }
            self._retired = [OutboundChain.from_json(v) for v in state.get("retired", [])]
            inbound = [InboundChain.from_json(v) for v in state.get("inbound", [])]
            self._replays = ReplayBook.from_json(state.get("replay", {}))
        except (E2eeError, TypeError, ValueError, AttributeError) as exc:
            # Losing chain state costs readability of old messages, never confidentiality: keep
            # going with fresh state rather than refusing to start.
            log.error("the keystore's E2EE state is damaged (%s); starting afresh", exc)
            self.trust, self._outbound, self._retired, inbound = TrustStore(), {}, [], []
            self._replays = ReplayBook()
        self._inbound = {c.key: c for c in inbound}
        # What was persisted is already past every index a crashed process may have used.
        self._reserved = {conv: chain.index for conv, chain in self._outbound.items()}

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(e2ee state, trust store) as JSON for the keystore."""
        outbound = {
            conv: chain.skip_to(max(self._reserved.get(conv, 0), chain.index)).to_json()
            for conv, chain in sorted(self._outbound.items())
        }
        state = {
            "v": STATE_VERSION,
            "outbound": outbound,
            "retired": [c.to_json() for c in self._retired],
            "inbound": [c.to_json() for _, c in sorted(self._inbound.items())],
            "replay": self._replays.to_json(),
        }
        return state, self.trust.to_json()

    # -- identity -----------------------------------------------------------------------------

    @property
    def _me(self) -> tuple[str, str]:
        user = self._ks.user
        if user is None:
            raise YanziError("E2EE needs a logged-in user")
        return user, self._ks.device

    # -- sending ------------------------------------------------------------------------------

    async def seal(self, conv: str, app: bytes) -> bytes:
        """The encrypted body for `app` in `conv` (rotating and sharing the chain first if due)."""
        async with self._locks[conv]:
            members = self._host.local_members(conv) or await self._host.fetch_members(conv)
            now = self._clock_ms()
            chain = self._outbound.get(conv)
            if chain is None or chain.needs_rotation(now, members):
                chain = await self._rotate(conv, members, now)
            index, key, moved = chain.advance()
            self._outbound[conv] = moved
            if moved.index > self._reserved.get(conv, 0):
                self._reserved[conv] = min(moved.index + RESERVE, CHAIN_LENGTH)
                await self._host.persist()
            try:
                return encrypt_body(conv, chain.chain_id, index, key, app, self._random(24))
            except E2eeError as exc:
                raise InvalidRequest(f"message too large to encrypt: {exc}") from None

    async def _rotate(self, conv: str, members: list[str], now_ms: int) -> OutboundChain:
        me_user, me_device = self._me
        chain = OutboundChain.start(conv, members, now_ms=now_ms, random_bytes=self._random)
        recipients = []
        for user in chain.members:
            await self._refresh(user, max_age_s=1.0)
            for device, known in sorted(self.trust.trusted(user).items()):
                if (user, device) != (me_user, me_device):
                    recipients.append(Recipient(user=user, device=device, x25519=known.x25519))
        bodies = seal_shares(
            conv=conv,
            chain_id=chain.chain_id,
            start_index=0,
            start_key=chain.start_key,
            sender_user=me_user,
            sender_device=me_device,
            sender_box=self._ks.box_key,
            recipients=recipients,
            random_bytes=self._random,
        )
        old = self._outbound.get(conv)
        if old is not None:  # kept a while to answer key requests (§6)
            kept = [c for c in self._retired if c.conv == conv][-(RETIRED_PER_CONV - 1) :]
            self._retired = [c for c in self._retired if c.conv != conv] + kept + [old]
        own = InboundChain(
            sender_user=me_user,
            sender_device=me_device,
            conv=conv,
            chain_id=chain.chain_id,
            start_index=0,
            start_key=chain.start_key,
        )
        self._inbound[own.key] = own
        self._outbound[conv] = chain
        self._reserved[conv] = 0
        await self._host.persist()  # never share a chain the keystore could forget
        log.debug("new chain in %s for %d devices", conv, len(recipients))
        try:
            for body in bodies:
                await self._host.submit_key_share(conv, body)
        except BaseException:
            self._outbound[conv] = replace(chain, stale=True)  # rotate again next time
            raise
        return chain

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, op: Op) -> None:
        """Take in an op that entered the local log (any op; repeats are ignored). What needs
        no network is done at once, so a message whose keys are known reads as decrypted as
        soon as it is in the view; the rest goes to the worker."""
        if op.op_id in self._seen:
            return
        if op.kind in ("message", "edit"):
            self._opened[op.op_id] = Opened.of(op, "pending")
            done = self._open_now(op)
        elif op.kind == "key_share":
            done = self._share_now(op)
        elif op.kind in ("create", "member_add", "member_remove"):
            self._membership_changed(op)
            done = True
        else:
            return
        self._seen.add(op.op_id)
        if not done:
            self._queue.put_nowait(op)

    def caught_up(self) -> None:
        self._caught_up = True

    async def run(self) -> None:
        """The worker: handle queued ops one at a time; send due key requests."""
        while True:
            try:
                async with asyncio.timeout(self._timers.tick_s):
                    op = await self._queue.get()
            except TimeoutError:
                async with self._handling:
                    await self._tick()
                continue
            async with self._handling:
                await self._handle(op)
                if self._queue.empty():
                    await self._tick()

    async def settle(self) -> None:
        """Handle every queued op now (a client without a socket runs no worker)."""
        async with self._handling:
            while not self._queue.empty():
                await self._handle(self._queue.get_nowait())

    def needs_keys(self, messages: Iterable[Message]) -> bool:
        return any(m.e2ee == "pending" for m in messages)

    def idle(self) -> bool:
        """Nothing queued, being handled or waiting for a retry (tests wait for this)."""
        return self._queue.empty() and not self._handling.locked() and not self._retry

    async def _handle(self, op: Op) -> None:
        try:
            if op.kind in ("message", "edit"):
                await self._check_signature(op)  # fetches the directory if needed
                self._open(op)
            elif op.kind == "key_share":
                await self._on_key_share(op)
        except (YanziError, OSError) as exc:  # the network: try again a little later
            log.warning("E2EE handling of op %s in %s failed: %s", op.op_id, op.conv, exc)
            failures = self._failures[op.op_id] = self._failures.get(op.op_id, 0) + 1
            if failures > MAX_RETRIES:
                log.warning(
                    "giving up on op %s in %s after %d attempts", op.op_id, op.conv, failures
                )
                return
            self._retry.append((self._monotonic() + RETRY_S * 2 ** (failures - 1), op))

    async def _tick(self) -> None:
        now = self._monotonic()
        due = [op for at, op in self._retry if at <= now]
        self._retry = [(at, op) for at, op in self._retry if at > now]
        for op in due:
            await self._handle(op)
        if self._caught_up:
            await self._request_missing(now)

    def _membership_changed(self, op: Op) -> None:
        """§3: rotate after a membership change the chain does not reflect yet. A change the
        chain already reflects (an old op seen again by a new process) changes nothing; `seal`
        also compares the member sets."""
        chain = self._outbound.get(op.conv)
        if chain is None or chain.stale:
            return
        members = set(chain.members)
        if op.kind == "member_add":
            news = op.target not in members
        elif op.kind == "member_remove":
            news = op.target in members
        else:
            listed = op.content.attrs.get("members", [])
            news = {op.author, *(listed if isinstance(listed, list) else [])} != members
        if news:
            self._outbound[op.conv] = replace(chain, stale=True)
            self._host.state_changed()

    # -- messages -----------------------------------------------------------------------------

    def _open_now(self, op: Op) -> bool:
        """Open `op` if its signer is known without asking the directory; False otherwise."""
        if op.dsig:
            known = self.trust.get(op.author, op.content.device)
            if known is None or not _verifies(known.ed25519, op):
                return False
        self._open(op)
        return True

    def _open(self, op: Op) -> None:
        """Check the signature against the trust store as it is now, then decrypt (§4), or
        file the op under its chain until the share arrives."""
        author, device, conv, body = op.author, op.content.device, op.conv, op.content.body
        known = self.trust.get(author, device)
        signer = known.ed25519 if known and op.dsig and _verifies(known.ed25519, op) else None
        if body_alg(body) is None:
            self._opened[op.op_id] = Opened.of(op, "plain", body, signer=signer)
            return
        if op.dsig and signer is None and known is not None:
            self._fail(op, "bad_signature")  # signed, but not by the directory's key
            return
        try:
            sealed = parse_body(body)
        except E2eeError as exc:
            self._fail(op, exc.reason)
            return
        ref = chain_ref(author, device, conv, sealed.chain_id)
        inbound = self._inbound.get(ref)
        if inbound is None:
            self._opened[op.op_id] = Opened.of(op, "pending", signer=signer, reason="missing_key")
            self._pending.setdefault(ref, []).append(op)
            self._pending_since.setdefault(ref, self._monotonic())
            return
        try:
            plain = decrypt_body(conv, sealed, inbound.message_key(sealed.index))
        except E2eeError as exc:
            self._fail(op, exc.reason)
            return
        first = self._replays.record(author, device, sealed.chain_id, sealed.index, op.op_id)
        self._host.state_changed()
        if first is not None:
            self._opened[op.op_id] = Opened.of(op, "failed", replay_of=first, reason="replay")
            log.warning("replay in %s: op %s repeats %s", conv, op.op_id, first)
            self._host.emit(Replay(conv, op.op_id, first, author, device))
            return
        self._opened[op.op_id] = Opened.of(op, "decrypted", plain, signer=signer)

    def _fail(self, op: Op, reason: str) -> None:
        self._opened[op.op_id] = Opened.of(op, "failed", reason=reason)
        log.info("cannot decrypt op %s in %s: %s", op.op_id, op.conv, reason)
        self._host.emit(Undecryptable(op.conv, op.op_id, reason))

    async def _check_signature(self, op: Op) -> None:
        """Make sure the trust store has the directory's current key of the op's device:
        refresh the directory once if the device is unknown or its key did not sign the op."""
        if not op.dsig:
            return
        known = self.trust.get(op.author, op.content.device)
        if known is None or not _verifies(known.ed25519, op):
            await self._refresh_for(op.author, op.content.device, failed=known is not None)

    # -- key shares ---------------------------------------------------------------------------

    def _share_now(self, op: Op) -> bool:
        """Store our share from a key_share op now if the sender's keys are known; False if
        the worker must do it (a request to answer, or the directory to ask first)."""
        me_user, me_device = self._me
        if (op.author, op.content.device) == (me_user, me_device):
            return True
        try:
            parsed = parse_key_share(op.content.body)
        except E2eeError as exc:
            log.info("ignoring key_share op %s: %s", op.op_id, exc)
            return True
        if isinstance(parsed, KeyRequest):
            return (parsed.sender_user, parsed.sender_device) != (me_user, me_device)
        if not any((s.user, s.device) == (me_user, me_device) for s in parsed.shares):
            return True
        known = self.trust.get(op.author, op.content.device)
        # Not opened with the key we hold: the sender may have new keys; the worker asks.
        return known is not None and self._store_share(op, parsed, known.x25519, quiet=True)

    async def _on_key_share(self, op: Op) -> None:
        parsed = parse_key_share(op.content.body)  # _share_now parsed it once already
        if isinstance(parsed, KeyRequest):
            await self._answer(op, parsed)
            return
        # Here because the key we hold (if any) did not open the share: it may have changed.
        await self._refresh_for(op.author, op.content.device, failed=True)
        known = self.trust.get(op.author, op.content.device)
        if known is None:
            raise YanziError(f"no directory key for {op.author}/{op.content.device} yet")
        self._store_share(op, parsed, known.x25519)

    def _store_share(
        self, op: Op, share: ShareBody, sender_x25519: bytes, *, quiet: bool = False
    ) -> bool:
        """Open our entry (§5), keep the chain, and open the messages that waited for it."""
        me_user, me_device = self._me
        try:
            inbound = open_share(
                share,
                conv=op.conv,
                author=op.author,
                author_device=op.content.device,
                me_user=me_user,
                me_device=me_device,
                my_box=self._ks.box_key,
                sender_x25519=sender_x25519,
            )
        except E2eeError as exc:
            if not quiet:
                log.warning(
                    "bad key share %s from %s/%s: %s", op.op_id, op.author, op.content.device, exc
                )
            return False
        held = self._inbound.get(inbound.key)
        if held is None or inbound.start_index < held.start_index:
            self._inbound[inbound.key] = inbound
            self._host.state_changed()
        waiting = self._pending.pop(inbound.key, [])
        self._pending_since.pop(inbound.key, None)
        self._requested.pop(inbound.key, None)
        for message in waiting:
            if not self._open_now(message):
                self._queue.put_nowait(message)
        return True

    async def _answer(self, op: Op, request: KeyRequest) -> None:
        chain = next(
            (
                c
                for c in [*self._outbound.values(), *self._retired]
                if c.chain_id == request.chain_id and c.conv == op.conv
            ),
            None,
        )
        requester, device = op.author, op.content.device
        if chain is None:
            return
        current = self._host.local_members(op.conv)
        if requester not in chain.members or (current and requester not in current):
            log.info(
                "not sharing a chain of %s with %s: not a member when it started",
                op.conv,
                requester,
            )
            return
        slot = (chain.conv + " " + request.chain_id.hex(), requester, device)
        now = self._monotonic()
        if now - self._answered.get(slot, -ANSWER_INTERVAL_S) < ANSWER_INTERVAL_S:
            return
        known = self.trust.get(requester, device)
        if known is None or not known.trusted:
            await self._refresh_for(requester, device)
            known = self.trust.get(requester, device)
        if known is None or not known.trusted:
            log.info("not sharing with untrusted device %s/%s (yet)", requester, device)
            self._untrusted_requests.setdefault((requester, device), []).append(op)
            return
        me_user, me_device = self._me
        bodies = seal_shares(
            conv=op.conv,
            chain_id=chain.chain_id,
            start_index=0,
            start_key=chain.start_key,
            sender_user=me_user,
            sender_device=me_device,
            sender_box=self._ks.box_key,
            recipients=[Recipient(user=requester, device=device, x25519=known.x25519)],
            random_bytes=self._random,
        )
        self._answered[slot] = now
        for body in bodies:
            await self._host.submit_key_share(op.conv, body)

    async def _request_missing(self, now: float) -> None:
        timers = self._timers
        for ref, since in list(self._pending_since.items()):
            if now - since < timers.key_request_delay_s:
                continue
            count, last = self._requested.get(ref, (0, 0.0))
            if count >= timers.key_request_attempts or (
                count and now - last < timers.key_request_retry_s
            ):
                continue
            self._requested[ref] = (count + 1, now)
            user, device, conv, chain_b64 = ref
            if count == 0:
                for op in self._pending.get(ref, []):
                    self._host.emit(Undecryptable(conv, op.op_id, "missing_key"))
            waiting = self._pending.get(ref)
            if not waiting:
                continue
            chain_id = b64decode(chain_b64)
            try:
                await self._host.submit_key_share(conv, key_request_body(chain_id, user, device))
            except YanziError as exc:
                log.warning(
                    "key request for a chain of %s/%s in %s failed: %s", user, device, conv, exc
                )

    # -- the directory and trust --------------------------------------------------------------

    async def _refresh(self, user: str, *, max_age_s: float | None = None) -> None:
        """Fetch `user`'s key directory (unless fetched within `max_age_s`) and fold it in."""
        age = self._timers.directory_ttl_s if max_age_s is None else max_age_s
        now = self._monotonic()
        if now - self._fetched.get(user, -1e9) < age:
            return
        try:
            rows = await self._host.fetch_devices(user)
        except ServerError as err:
            if err.code != "not_found":
                raise
            rows = []
        self._fetched[user] = now
        events = self.trust.observe(user, verified_devices(user, rows), now_ms=self._clock_ms())
        self._host.state_changed()
        for event in events:
            log.warning("directory of %s: %s", user, event)
            self._host.emit(event)

    async def _refresh_for(self, user: str, device: str, *, failed: bool = False) -> None:
        """Refresh the directory because of one device: always when its key just failed (it
        may have changed a moment ago), soon if the device is new to us, else at most once a
        second. Ops are rate-limited by the node, so a flood of bad ones is bounded too."""
        age = 0.0 if failed else 0.2 if self.trust.get(user, device) is None else 1.0
        await self._refresh(user, max_age_s=age)

    def trust_device(self, user: str, device: str) -> bool:
        """Trust the device's current keys; key requests it made meanwhile are answered now."""
        trusted = self.trust.trust(user, device)
        if trusted:
            self._host.state_changed()
            for request in self._untrusted_requests.pop((user, device), []):
                self._queue.put_nowait(request)
        return trusted

    async def safety_number(self, user: str) -> str:
        me_user, _ = self._me
        await self._refresh(me_user, max_age_s=0.0)
        await self._refresh(user, max_age_s=0.0)
        # Every current directory key, trusted or awaiting trust() after a KeyChanged: comparing
        # the number is how a user checks a changed key before trusting it (docs/e2ee.md §2).
        mine = [k.ed25519 for k in self.trust.devices(me_user).values()]
        theirs = [k.ed25519 for k in self.trust.devices(user).values()]
        return safety_number(me_user, mine, user, theirs)

    # -- reading ------------------------------------------------------------------------------

    def present(self, state: MessageState, message: Message) -> Message | None:
        """`message` with its plaintext and flags, or None for a replay (not shown)."""
        opened = self._opened.get(state.op.op_id)
        if opened is not None and opened.replay_of is not None:
            return None
        if state.edited_by is not None:  # the current body is the winning edit's
            opened = self._opened.get(state.edited_by)
        if opened is None:  # an op the session has not seen (yet)
            status: E2eeStatus = "pending" if body_alg(state.body) == ALG_CHAIN else "plain"
            return _with(
                message,
                body=b"" if status == "pending" else message.body,
                status=status,
                verified=False,
            )
        verified = (
            opened.status in ("decrypted", "plain")
            and opened.signer is not None
            and self.trust.is_trusted_key(opened.author, opened.device, opened.signer)
        )
        body = b"" if state.deleted else opened.body
        return _with(message, body=body, status=opened.status, verified=verified)

    def open_row(self, message: Message) -> Message:
        """A message from the HTTP history (no signature there): decrypt with known chains."""
        if body_alg(message.body) is None:
            return _with(message, body=message.body, status="plain", verified=False)
        try:
            sealed = parse_body(message.body)
            ref = chain_ref(message.author, message.device, message.conv, sealed.chain_id)
            inbound = self._inbound.get(ref)
            if inbound is None:
                return _with(message, body=b"", status="pending", verified=False)
            plain = decrypt_body(message.conv, sealed, inbound.message_key(sealed.index))
        except E2eeError:
            return _with(message, body=b"", status="failed", verified=False)
        return _with(message, body=plain, status="decrypted", verified=False)

    def opened(self, op_id: str) -> Opened | None:
        return self._opened.get(op_id)


def _verifies(key: bytes, op: Op) -> bool:
    with contextlib.suppress(BadSignatureError, ValueError):
        VerifyKey(key).verify(op.content.signing_bytes(), op.dsig)
        return True
    return False


def _with(message: Message, *, body: bytes, status: E2eeStatus, verified: bool) -> Message:
    return replace(message, body=body, e2ee=status, verified=verified)
