"""node.gc_policy with CPython's real collector: survivors are frozen, cycles still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from node.gc_policy import GcPolicy


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A two-object reference cycle nobody else holds; the ref dies when gc frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite keeps CPython's collector as it was


def test_step_frees_young_cycles_and_freezes_survivors() -> None:
    now = [0.0]
    policy = GcPolicy(5.0, 3600.0, clock=lambda: now[0])
    policy.start()
    assert policy.full_collections == 1
    frozen = gc.get_freeze_count()
    assert frozen > 0  # everything alive at start is in the permanent generation

    kept = [_Node() for _ in range(1000)]  # long-lived: must be frozen by the next step
    young = _cycle()
    now[0] = 5.0
    policy.step()
    assert young() is None  # a cycle that was still young is freed by the young collection
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert policy.full_collections == 1  # no full collection before full_every_s
    tracked = {id(o) for o in gc.get_objects()}  # every generation, the permanent one excepted
    assert not any(id(k) in tracked for k in kept)  # the survivors are frozen


def test_a_full_collection_frees_frozen_cycles_every_interval() -> None:
    now = [0.0]
    policy = GcPolicy(5.0, 60.0, clock=lambda: now[0])
    policy.start()
    stuck = _cycle()
    gc.freeze()  # as if it had reached the permanent generation before dying
    now[0] = 30.0
    policy.step()
    assert stuck() is not None  # a young step never looks at frozen objects
    now[0] = 60.0
    policy.step()
    assert stuck() is None  # the interval's full collection thawed and freed it
    assert policy.full_collections == 2 and policy.last_full_pause_s >= 0
    assert gc.get_freeze_count() > 0  # and refroze the survivors


async def test_run_steps_until_cancelled_then_unfreezes() -> None:
    policy = GcPolicy(0.01, 3600.0)
    policy.start()
    task = asyncio.create_task(policy.run())
    before = gc.get_freeze_count()
    kept = [_Node() for _ in range(500)]
    for _ in range(500):  # a condition, polled: a step has frozen the new objects
        if gc.get_freeze_count() >= before + len(kept):
            break
        await asyncio.sleep(0.01)
    assert gc.get_freeze_count() >= before + len(kept)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0


def test_intervals_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GcPolicy(0, 60)
    with pytest.raises(ValueError):
        GcPolicy(5, float("nan"))
