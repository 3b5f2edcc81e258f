"""Hub.accept_remote: ops from peers, in any order, reach the right local sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.node.test_hub import World


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[World, World]]:
    origin, here = World(tmp_path / "origin"), World(tmp_path / "here")
    await origin.open()
    await here.open()
    yield origin, here
    await origin.store.close()
    await here.store.close()


async def test_a_message_arriving_before_its_create_still_reaches_the_new_member(
    pair: tuple[World, World],
) -> None:
    origin, here = pair
    create = await origin.group("alice", "g1", "bob")
    hello = await origin.message("alice", "g1", "hello bob")
    # The peer's envelopes arrive out of order: the message first, with no members known yet.
    await here.hub.accept_remote([hello])
    assert all(not users for users, _ in here.fanout.of_type("op"))  # nobody to give it to
    await here.hub.accept_remote([create])
    to_bob = [frame["op"] for users, frame in here.fanout.of_type("op") if "bob" in users]
    delivered = {op["dot"][1] for op in to_bob}
    assert delivered == {create.dot.seq, hello.dot.seq}


async def test_remote_duplicates_and_drift_are_reported_not_applied(
    pair: tuple[World, World],
) -> None:
    origin, here = pair
    create = await origin.group("alice", "g1", "bob")
    first = await here.hub.accept_remote([create, create])
    assert first.accepted == [create] and first.duplicates == 1
    again = await here.hub.accept_remote([create])
    assert again.accepted == [] and again.duplicates == 1
    origin.clock.now += 3_600_000  # an hour ahead of `here`
    future = await origin.message("alice", "g1", "from the future")
    result = await here.hub.accept_remote([future])
    assert result.accepted == [] and "ahead" in result.refused[0][1]
    assert future.op_id not in here.hub.logs["g1"]  # type: ignore[index]


async def test_a_member_removed_while_offline_is_told_once_and_sees_nothing_after(
    pair: tuple[World, World],
) -> None:
    world, _ = pair
    await world.group("alice", "g1", "bob")
    await world.message("alice", "g1", "before")
    ops, cursor, more = world.hub.sync("bob", {}, 100)
    assert len(ops) == 2 and not more
    removal = await world.send("alice", "g1", "member_remove", target="bob")
    await world.message("alice", "g1", "after bob left")
    for _ in range(2):  # and again after a restart, from what LMDB holds
        ops, later, more = world.hub.sync("bob", cursor, 100)
        assert [op.op_id for op in ops] == [removal.op_id] and not more
        assert world.hub.sync("bob", later, 100)[0] == []
        await world.reopen()


async def test_a_retry_after_failover_returns_the_remote_op(pair: tuple[World, World]) -> None:
    origin, here = pair
    create = await origin.group("alice", "g1", "bob")
    sent = await origin.message("alice", "g1", "once", cmid="m-1", attrs={"cmid": "m-1"})
    await here.hub.accept_remote([create, sent])
    # alice fails over to `here` and retries with the same cmid (same user and device).
    again = await here.message("alice", "g1", "once", cmid="m-1", attrs={"cmid": "m-1"})
    assert again.op_id == sent.op_id
    assert len(here.hub.logs["g1"]) == 2  # type: ignore[index]
    assert await here.refused("alice", "g1", body=b"x", cmid="m-2", attrs={"cmid": "m-3"}) == (
        "bad_frame"
    )
