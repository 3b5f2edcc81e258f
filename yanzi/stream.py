"""`EventStream`: one subscriber's view of a client's events, as an async iterator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from yanzi.events import Event


class EventStream:
    """Events in arrival order. Subscribe *before* `connect()` to see everything; a stream
    buffers without bound until read, so read it (or `close()` it) promptly. Iteration ends
    when the client closes."""

    def __init__(self, detach: Callable[[EventStream], None]) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._detach = detach
        self._ended = False

    # called by the client
    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def _end(self) -> None:
        self._queue.put_nowait(None)

    # the subscriber's side
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._ended = True
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> Event:
        """The next event; raises TimeoutError after `timeout` s, StopAsyncIteration at the end."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def drain(self) -> list[Event]:
        """Every event already queued, without waiting."""
        out: list[Event] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                self._ended = True
                break
            out.append(event)
        return out

    def close(self) -> None:
        """Unsubscribe; iteration ends after the events already queued."""
        self._detach(self)
        if not self._ended:
            self._end()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
