"""Keep the node's long-lived objects out of CPython's full garbage collections.

A node holds every op of every conversation in memory (docs/operations.md §11). A full
(generation 2) collection walks every tracked object, so with ~10^5 ops in memory one stalls the
event loop for ~100 ms — it was the whole p99 of the 1:1 relay at 2 000 msgs/s
(docs/benchmarks.md). Op logs, sessions and indexes live until the node stops and are not
cyclic garbage, so every `freeze_every_s` (1 s by default) the policy runs a young collection
(generations 0 and 1: cheap, it frees recent cycles) and then `gc.freeze()`: the survivors move
to the permanent generation, which collections skip. Automatic full collections then walk only
what was allocated since the last freeze.

The price: a cycle that became garbage after reaching generation 2 and before a freeze is kept.
Every `full_every_s` the policy unfreezes everything and runs one full collection, which frees
those cycles — one long pause per interval instead of one every few seconds under load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

__all__ = ["GcPolicy"]

log = logging.getLogger(__name__)


class GcPolicy:
    """Freeze survivors periodically; a full collection over everything now and then.

    `step` does one round and is synchronous (tests call it); `run` repeats it on the event
    loop — gc works on the calling thread while holding the GIL, so rounds run between
    callbacks, never in the middle of one.
    """

    def __init__(
        self,
        freeze_every_s: float,
        full_every_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not freeze_every_s > 0 or not full_every_s > 0:
            raise ValueError("GcPolicy intervals must be > 0")
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self._clock = clock
        self._last_full = clock()
        self.full_collections = 0
        self.last_full_pause_s = 0.0

    def start(self) -> None:
        """Once, after the data is loaded: collect everything, then freeze what survived."""
        self._full()

    def step(self) -> None:
        if self._clock() - self._last_full >= self.full_every_s:
            self._full()
            return
        gc.collect(1)  # generations 0 and 1; the oldest generation is left to freeze
        gc.freeze()

    def _full(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.last_full_pause_s = time.perf_counter() - started
        self._last_full = self._clock()
        self.full_collections += 1
        log.info(
            "full garbage collection: %d unreachable objects, %.0f ms, %d objects frozen",
            freed,
            self.last_full_pause_s * 1000,
            gc.get_freeze_count(),
        )

    async def run(self) -> None:
        """Until cancelled; then everything is unfrozen again (a process that runs several
        nodes, such as a test suite, gets its collector back as it was)."""
        try:
            while True:
                await asyncio.sleep(self.freeze_every_s)
                try:
                    self.step()
                except Exception:  # never fatal: the node only loses the optimisation
                    log.exception("gc policy step failed")
        finally:
            gc.unfreeze()
