"""Replicas that write, gossip, lose messages, split and crash, then heal: they always converge.

Each replica is what a node keeps for this test: a node id, its own HybridClock, one
MessageLog per conversation (memory) and the ops it has committed (`disk`). Writes are
broadcast onto an unreliable network (`in_flight`) that may deliver, duplicate or drop any
message, and a partition blocks traffic between its sides. A replica may crash and restart:
it loses its memory and rebuilds it from its disk the way `node.hub.Hub.load` does.
`teardown` heals, then quiesces with paged `missing_for` exchanges between every pair until
nothing moves, and asserts every replica holds the same views and version vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crdt import (
    ROLES,
    AttrValue,
    Content,
    ConvId,
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
)
from tests.crdt.strategies import REACTION_KEYS, USERS, device_of

GROUP, DIRECT = ConvId("group"), ConvId("direct")
CONVS = (GROUP, DIRECT)
MAX_REPLICAS = 5
PAGE = 3  # quiesce in small pages, as a node answering a client would

replica_ix = st.integers(0, MAX_REPLICAS - 1)
convs = st.sampled_from(CONVS)


class Replica:
    def __init__(self, node: str, skew_ms: int, disk: dict[OpId, Op] | None = None) -> None:
        self.node = NodeId(node)
        self.clock = HybridClock()
        self.logs = {conv: MessageLog(conv) for conv in CONVS}
        self.skew_ms = skew_ms  # this machine's physical clock is off by this much
        # Every op this replica has applied, keyed like the store's "ops" table. A node commits
        # an op before it acks or relays it, so in this model every applied op is durable.
        self.disk: dict[OpId, Op] = {} if disk is None else disk

    def commit(self, op: Op) -> None:
        self.logs[op.conv].apply(op)
        self.disk[op.op_id] = op


class Convergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas: list[Replica] = []
        self.in_flight: list[tuple[int, int, Op]] = []  # (from, to, op)
        self.side: list[int] = []  # partition: replicas talk only within a side
        self.now = 0
        self.last_hlc: list[Timestamp] = []  # each clock, as last seen (reset by a restart)
        self.stamped_or_seen: list[Timestamp] = []  # the highest HLC on an op each one holds
        self.last_vv: list[dict[ConvId, VersionVector]] = []
        self.applied: list[list[tuple[ConvId, OpId]]] = []

    # -- plumbing -------------------------------------------------------------------------------

    def _now(self, r: int) -> int:
        return self.now + self.replicas[r].skew_ms

    def _receive(self, r: int, op: Op) -> None:
        """What a node does with a remote op: observe its HLC first, then apply it."""
        replica = self.replicas[r]
        replica.clock.observe(op.hlc, self._now(r))
        replica.commit(op)
        self.applied[r].append((op.conv, op.op_id))
        self.stamped_or_seen[r] = max(self.stamped_or_seen[r], op.hlc)

    def _stamp(
        self,
        r: int,
        conv: ConvId,
        kind: OpKind,
        author: str,
        *,
        target: str = "",
        attrs: dict[str, AttrValue] | None = None,
        body: bytes = b"",
    ) -> Op:
        replica = self.replicas[r]
        log = replica.logs[conv]
        before = replica.clock.last
        content = Content(
            conv=conv,
            kind=kind,
            author=UserId(author),
            device=device_of(author),
            target=target,
            attrs=attrs or {},
            body=body,
        )
        op = Op(
            content=content,
            hlc=replica.clock.tick(self._now(r)),
            dot=Dot(replica.node, log.next_seq(replica.node)),
        )
        assert op.hlc > before  # after everything this replica has stamped or observed...
        assert op.hlc > self.stamped_or_seen[r]  # ...including before any crash
        replica.commit(op)
        self.applied[r].append((conv, op.op_id))
        self.stamped_or_seen[r] = op.hlc
        self.in_flight.extend((r, j, op) for j in range(len(self.replicas)) if j != r)
        return op

    def _blocked(self, i: int, j: int) -> bool:
        return self.side[i] != self.side[j]

    def _user(self, data: st.DataObject, preferred: Iterable[str]) -> str:
        """Mostly someone sensible; sometimes anyone, so non-members' ops get hidden."""
        candidates = sorted(preferred)
        sensible = data.draw(st.integers(0, 3), label="sensible") > 0
        if candidates and sensible:
            return data.draw(st.sampled_from(candidates), label="user")
        return data.draw(st.sampled_from(USERS), label="anyone")

    # -- setup ----------------------------------------------------------------------------------

    @initialize(
        count=st.integers(2, MAX_REPLICAS),
        skews=st.lists(st.integers(0, 500), min_size=MAX_REPLICAS, max_size=MAX_REPLICAS),
        start=st.integers(0, 10**6),
    )
    def setup(self, count: int, skews: list[int], start: int) -> None:
        self.now = start
        self.replicas = [Replica(f"n{i}", skews[i]) for i in range(count)]
        self.side = [0] * count
        self.last_hlc = [r.clock.last for r in self.replicas]
        self.stamped_or_seen = [r.clock.last for r in self.replicas]
        self.last_vv = [{c: VersionVector() for c in CONVS} for _ in self.replicas]
        self.applied = [[] for _ in self.replicas]
        # Both conversations exist everywhere before the run: created on n0, delivered to all.
        group: dict[str, AttrValue] = {"type": "group", "members": list(USERS[1:3]), "title": "t"}
        direct: dict[str, AttrValue] = {"type": "direct", "members": [USERS[1]]}
        creates = [
            self._stamp(0, GROUP, "create", USERS[0], attrs=group),
            self._stamp(0, DIRECT, "create", USERS[0], attrs=direct),
        ]
        self.in_flight.clear()
        for r in range(1, count):
            for op in creates:
                self._receive(r, op)

    # -- writes ---------------------------------------------------------------------------------

    @rule(r=replica_ix, conv=convs, data=st.data())
    def post(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        r %= len(self.replicas)
        members = self.replicas[r].logs[conv].state.members
        body = data.draw(st.binary(max_size=4), label="body")
        self._stamp(r, conv, "message", self._user(data, members), body=body)

    @rule(r=replica_ix, conv=convs, data=st.data())
    def edit(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        r %= len(self.replicas)
        live = [m for m in self.replicas[r].logs[conv].state if not m.deleted]
        if not live:
            self.post(r, conv, data)
            return
        msg = data.draw(st.sampled_from(live), label="message")
        author = msg.op.author if data.draw(st.integers(0, 3)) else self._user(data, ())
        body = data.draw(st.binary(min_size=1, max_size=4), label="body")
        self._stamp(r, conv, "edit", author, target=msg.op.op_id, body=body)

    @rule(r=replica_ix, conv=convs, data=st.data())
    def delete(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        r %= len(self.replicas)
        state = self.replicas[r].logs[conv].state
        live = [m for m in state if not m.deleted]
        if not live:
            self.post(r, conv, data)
            return
        msg = data.draw(st.sampled_from(live), label="message")
        admins = [u for u, role in state.members.items() if role != "member"]
        author = msg.op.author if data.draw(st.booleans()) else self._user(data, admins)
        self._stamp(r, conv, "delete", author, target=msg.op.op_id)

    @rule(r=replica_ix, conv=convs, key=st.sampled_from(REACTION_KEYS), data=st.data())
    def react(self, r: int, conv: ConvId, key: str, data: st.DataObject) -> None:
        r %= len(self.replicas)
        state = self.replicas[r].logs[conv].state
        live = [m for m in state if not m.deleted]
        if not live:
            self.post(r, conv, data)
            return
        msg = data.draw(st.sampled_from(live), label="message")
        author = self._user(data, state.members)
        self._stamp(r, conv, "react", author, target=msg.op.op_id, attrs={"key": key})

    @rule(r=replica_ix, conv=convs, data=st.data())
    def unreact(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        r %= len(self.replicas)
        reacted = [m for m in self.replicas[r].logs[conv].state if m.reactions]
        if not reacted:
            self.react(r, conv, REACTION_KEYS[0], data)
            return
        msg = data.draw(st.sampled_from(reacted), label="message")
        adds = msg.reactions[data.draw(st.sampled_from(sorted(msg.reactions)), label="key")]
        removes = data.draw(st.lists(st.sampled_from(sorted(adds)), min_size=1, max_size=2))
        author = adds[removes[0]] if data.draw(st.integers(0, 3)) else self._user(data, ())
        attrs: dict[str, AttrValue] = {"removes": list(removes)}
        self._stamp(r, conv, "unreact", author, target=msg.op.op_id, attrs=attrs)

    def _membership(self, r: int, conv: ConvId, kind: OpKind, data: st.DataObject) -> None:
        r %= len(self.replicas)
        members = self.replicas[r].logs[conv].state.members
        admins = [u for u, role in members.items() if role != "member"]
        target = data.draw(st.sampled_from(USERS), label="target")
        role = data.draw(st.sampled_from(ROLES), label="role")
        author = self._user(data, admins)
        self._stamp(r, conv, kind, author, target=target, attrs={"role": role})

    @rule(r=replica_ix, conv=convs, data=st.data())
    def add_member(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        self._membership(r, conv, "member_add", data)

    @rule(r=replica_ix, conv=convs, data=st.data())
    def remove_member(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        self._membership(r, conv, "member_remove", data)

    @rule(r=replica_ix, conv=convs, data=st.data())
    def change_role(self, r: int, conv: ConvId, data: st.DataObject) -> None:
        self._membership(r, conv, "member_role", data)

    # -- time -----------------------------------------------------------------------------------

    @rule(ms=st.integers(0, 40))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @rule(r=replica_ix, ms=st.integers(1, 300))
    def clock_set_back(self, r: int, ms: int) -> None:
        """A machine's physical clock jumps backwards (NTP step): its HLC must not."""
        self.replicas[r % len(self.replicas)].skew_ms -= ms

    # -- crashes --------------------------------------------------------------------------------

    @rule(r=replica_ix, data=st.data())
    def crash_restart(self, r: int, data: st.DataObject) -> None:
        """kill -9, then restart: memory is gone, the disk is not. As `Hub.load` does, a fresh
        MessageLog per conversation is fed the stored ops (in whatever order the store yields
        them: any order must rebuild the same state), and a fresh HybridClock starts at the
        largest stored HLC. Messages on their way to the dead process may be lost with it."""
        r %= len(self.replicas)
        old = self.replicas[r]
        stored = sorted(old.disk.values(), key=lambda op: op.op_id)
        replica = Replica(old.node, old.skew_ms, disk=old.disk)
        for op in data.draw(st.permutations(stored), label="load order"):
            replica.logs[op.conv].apply(op)
        replica.clock = HybridClock(
            max_drift_ms=old.clock.max_drift_ms, last=max(op.hlc for op in stored)
        )
        self.replicas[r] = replica
        # The clock's unstamped in-memory progress (observations past the last stored op,
        # physical time) is legitimately lost; what must hold across the restart is checked
        # against `stamped_or_seen`, which is the test's record, not the replica's.
        self.last_hlc[r] = replica.clock.last
        for conv in CONVS:
            before, after = old.logs[conv], replica.logs[conv]
            assert after.version_vector == before.version_vector
            assert after.view().to_bytes() == before.view().to_bytes()
            assert after.parked == before.parked
        if data.draw(st.booleans(), label="inbox lost"):
            self.in_flight = [msg for msg in self.in_flight if msg[1] != r]

    # -- the network ----------------------------------------------------------------------------

    @rule(k=st.integers(0, 10**6))
    def deliver(self, k: int) -> None:
        if self.in_flight:
            src, dst, op = self.in_flight[k % len(self.in_flight)]
            if not self._blocked(src, dst):
                del self.in_flight[k % len(self.in_flight)]
                self._receive(dst, op)

    @rule(k=st.integers(0, 10**6))
    def duplicate(self, k: int) -> None:
        """Deliver a message and leave it in flight: it will arrive again."""
        if self.in_flight:
            src, dst, op = self.in_flight[k % len(self.in_flight)]
            if not self._blocked(src, dst):
                self._receive(dst, op)

    @rule(k=st.integers(0, 10**6))
    def drop(self, k: int) -> None:
        if self.in_flight:
            del self.in_flight[k % len(self.in_flight)]

    @rule(i=replica_ix, j=replica_ix, conv=convs, k=st.integers(0, 10**6))
    def forward(self, i: int, j: int, conv: ConvId, k: int) -> None:
        """Replica i relays one op it holds (anyone's) that j lacks, e.g. by gossip."""
        i, j = i % len(self.replicas), j % len(self.replicas)
        if i == j or self._blocked(i, j):
            return
        lacking = (
            self.replicas[i].logs[conv].missing_for(self.replicas[j].logs[conv].version_vector)
        )
        if lacking:
            self._receive(j, lacking[k % len(lacking)])

    @rule(i=replica_ix, j=replica_ix, conv=convs, backwards=st.booleans())
    def sync_batch(self, i: int, j: int, conv: ConvId, backwards: bool) -> None:
        """One anti-entropy reply from i to j, applied in total order or backwards (so that
        edits, reactions and unreacts arrive before their targets and park)."""
        i, j = i % len(self.replicas), j % len(self.replicas)
        if i == j or self._blocked(i, j):
            return
        batch = self.replicas[i].logs[conv].missing_for(self.replicas[j].logs[conv].version_vector)
        for op in reversed(batch) if backwards else batch:
            self._receive(j, op)

    @rule(sides=st.lists(st.integers(0, 1), min_size=MAX_REPLICAS, max_size=MAX_REPLICAS))
    def partition(self, sides: list[int]) -> None:
        self.side = sides[: len(self.replicas)]

    @rule()
    def heal(self) -> None:
        self.side = [0] * len(self.replicas)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def hlc_never_goes_backwards(self) -> None:
        for r, replica in enumerate(self.replicas):
            assert replica.clock.last >= self.last_hlc[r]  # between restarts
            assert replica.clock.last >= self.stamped_or_seen[r]  # across restarts too
            self.last_hlc[r] = replica.clock.last

    @invariant()
    def applied_ops_are_never_lost(self) -> None:
        for r, replica in enumerate(self.replicas):
            for conv, log in replica.logs.items():
                vv = log.version_vector
                assert not list(self.last_vv[r][conv].dots_beyond(vv))  # the vv only grows
                self.last_vv[r][conv] = vv
                own = vv.contiguous().get(replica.node, 0)
                assert vv.top(replica.node) == own  # a node's own seqs are dense
            assert all(op_id in replica.logs[conv] for conv, op_id in self.applied[r])

    # -- the end --------------------------------------------------------------------------------

    def teardown(self) -> None:
        if not self.replicas:
            return
        self.heal()
        for rounds in itertools.count(1):
            assert rounds <= 3  # pairwise exact deltas: one round spreads, the next confirms
            moved = False
            for i, j in itertools.permutations(range(len(self.replicas)), 2):
                for conv in CONVS:
                    source, sink = self.replicas[i].logs[conv], self.replicas[j].logs[conv]
                    while page := source.missing_for(sink.version_vector, PAGE):
                        for op in page:
                            self._receive(j, op)
                        moved = True
            if not moved:
                break
        self.hlc_never_goes_backwards()
        self.applied_ops_are_never_lost()

        for conv in CONVS:
            logs = [replica.logs[conv] for replica in self.replicas]
            views = {log.view().to_bytes() for log in logs}
            assert len(views) == 1
            assert all(log.version_vector == logs[0].version_vector for log in logs)
            assert all(not log.parked for log in logs)  # every target was written somewhere
            # And it is the view of the op set itself, however it arrived.
            fresh = MessageLog(conv)
            for op in sorted(logs[0].ops(), key=lambda op: op.op_id):
                fresh.apply(op)
            assert views == {fresh.view().to_bytes()}


Convergence.TestCase.settings = settings(stateful_step_count=30, deadline=None)
TestConvergence = Convergence.TestCase
