"""LMDB storage layer of an edge node: named databases, one writer thread, group commit.

DESIGN.md decision 7 — *acknowledged means durable*: `Store.commit` resolves only after the
write transaction holding its writes has been committed and, with ``sync=True``, fsynced
(LMDB's ``mdb_txn_commit`` flushes data pages and then the meta page). To make that cheap, a
single writer thread drains every batch queued while the previous fsync was running (up to
``max_batch`` of them) into ONE write transaction and one commit ("group commit").

Threads and the memory map:

* Writes happen only on the writer thread (or on the caller's thread in `Store.commit_sync`),
  serialised by ``_write_lock``.
* Reads (`get`, `scan`, `count`, `backup`) run on the caller's thread in short read-only
  transactions; LMDB readers never block the writer.
* When a transaction hits ``MDB_MAP_FULL`` the map is doubled with ``env.set_mapsize`` and
  the transaction retried from scratch (the failed one was aborted, so nothing is written
  twice). ``mdb_env_set_mapsize`` may only be called with no transaction active in the
  process, and py-lmdb invalidates any open read transaction when it remaps, so a small
  reader/remap gate (`_RemapGate`) keeps readers out for the instant of the remap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias, TypeVar

import lmdb

from node.errors import NodeError

__all__ = ["Delete", "Put", "PutMade", "Store", "StoreError", "Write"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The map is doubled on MDB_MAP_FULL up to this size (a virtual-address reservation, not disk).
_MAX_MAP_SIZE: Final = 1 << 40
_DATA_FILE: Final = "data.mdb"


class StoreError(NodeError):
    """Any failure of the storage layer (bad db name, bad key, LMDB error, closed store)."""


@dataclass(frozen=True, slots=True)
class Put:
    db: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    db: str
    key: bytes


@dataclass(frozen=True, slots=True)
class PutMade:
    """A Put whose value `make()` produces on the writer thread, once, before the transaction.

    For values whose making releases the GIL: the hub signs each new op here (Ed25519 in
    libsodium runs without the GIL), so the signature is computed beside the event loop
    instead of on it. If `make` raises, that request fails and the rest of the group commits.
    """

    db: str
    key: bytes
    make: Callable[[], bytes]


Write: TypeAlias = Put | Delete | PutMade

#: How a request is settled: a callback (commit_sync) called with the exception or None, or
#: the future an awaiting commit() holds, resolved on its loop together with the rest of its
#: group in one thread-safe hop.
_Done: TypeAlias = Callable[[BaseException | None], None] | asyncio.Future[None]
_Settled: TypeAlias = tuple[asyncio.Future[None], BaseException | None]


@dataclass(frozen=True, slots=True)
class _Request:
    writes: tuple[Write, ...]
    done: _Done


_STOP: Final = object()


def _made_value(w: PutMade) -> bytes:
    value = w.make()
    if not isinstance(value, bytes):
        raise StoreError(f"PutMade in db {w.db!r} made {type(value).__name__}, not bytes")
    return value


class _RemapGate:
    """Many readers or one remapper: LMDB forbids set_mapsize while transactions are open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._remapping = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._remapping:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._remapping:
                self._cond.wait()
            self._remapping = True  # new readers wait from here on, so the remap cannot starve
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._remapping = False
                self._cond.notify_all()


def _prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with `prefix` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _resolve(settled: list[_Settled]) -> None:
    for fut, exc in settled:
        if fut.done():  # the caller was cancelled; the write itself is not undone
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


class Store:
    """An LMDB environment with fixed named databases and a group-committing writer thread.

    Lifecycle: construct (opens the environment; reads and `commit_sync` work at once),
    ``await start()`` (starts the writer thread needed by `commit`), ``await close()``.
    Also usable as ``async with Store(...) as store``.

    `on_batch`, if set, is called on the writer thread after every committed transaction with
    (number of commit requests in it, seconds from txn begin to durable commit); it must be
    quick and thread-safe (prometheus-client metrics are). Its exceptions are logged.
    """

    DBS: tuple[str, ...]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dbs: Sequence[str],
        map_size: int = 64 << 20,
        max_batch: int = 1024,
        sync: bool = True,
        max_readers: int = 126,
    ) -> None:
        names = tuple(dbs)
        if not names or any(not isinstance(n, str) or not n for n in names):
            raise StoreError(f"dbs must be non-empty names, got {names!r}")
        if len(set(names)) != len(names):
            raise StoreError(f"duplicate db names in {names!r}")
        if max_batch < 1:
            raise StoreError(f"max_batch must be >= 1, got {max_batch}")
        self.DBS = names
        self.path = Path(path)
        self.on_batch: Callable[[int, float], None] | None = None
        self._max_batch = max_batch
        self._sync = sync
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(self.path),
                max_dbs=len(names),
                map_size=map_size,
                subdir=True,
                sync=sync,
                metasync=sync,
                writemap=False,
                readahead=False,
                lock=True,
                max_readers=max_readers,
            )
            self._dbs = {n: self._env.open_db(n.encode()) for n in names}
        except lmdb.Error as exc:
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
        self._max_key_size = self._env.max_key_size()
        self._map_size = int(self._env.info()["map_size"])
        self._gate = _RemapGate()
        self._write_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._settled: list[_Settled] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._env_open = True
        self._stats_lock = threading.Lock()
        self._commits = 0
        self._batches = 0
        self._ops = 0
        self._failed = 0
        self._last_batch_size = 0
        self._map_grows = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer thread. Idempotent; a closed store cannot be restarted."""
        with self._submit_lock:
            if self._closing:
                raise StoreError("store is closed")
            if self._thread is not None:
                return
            # daemon: a Store someone forgot to close must not hang interpreter exit. Acked
            # writes are durable either way; close() is what flushes the queue.
            self._thread = threading.Thread(
                target=self._writer_loop, name=f"store-writer:{self.path.name}", daemon=True
            )
            self._thread.start()

    async def close(self) -> None:
        """Commit everything already queued, stop the writer thread, close the environment.

        Idempotent and safe to call concurrently; every call returns after the env is closed.
        """
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Blocking `close`, for code without an event loop."""
        with self._submit_lock:
            if not self._closing:
                self._closing = True
                if self._thread is not None:
                    self._queue.put(_STOP)  # FIFO: every request accepted before it is written
        if self._thread is not None:
            self._thread.join()
        with self._write_lock, self._gate.exclusive():
            if self._env_open:
                self._env_open = False
                if not self._sync:
                    self._env.sync(True)
                self._env.close()

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes ------------------------------------------------------------------------------

    async def commit(self, writes: Sequence[Write]) -> None:
        """Apply `writes` atomically; return once they are committed and fsynced.

        Raises StoreError for a bad write (unknown db, bad key) — other callers are unaffected.
        Cancelling the await does not undo the write; it only drops the acknowledgement.
        """
        batch = self._validated(writes)
        if not batch:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._submit_lock:
            if self._closing:
                raise StoreError("store is closed")
            if self._thread is None:
                raise StoreError("store not started: await Store.start() before commit()")
            self._queue.put(_Request(batch, fut))
        await fut

    def commit_sync(self, writes: Sequence[Write]) -> None:
        """Blocking `commit` on the caller's thread (CLI tools, tests); no loop needed.

        Bypasses the writer thread: it takes the same write lock, so it is one more
        transaction in the same serial order, without group commit.
        """
        batch = self._validated(writes)
        if not batch:
            return
        result: concurrent.futures.Future[None] = concurrent.futures.Future()

        def done(exc: BaseException | None) -> None:
            if exc is None:
                result.set_result(None)
            else:
                result.set_exception(exc)

        with self._submit_lock:
            if self._closing:
                raise StoreError("store is closed")
        group = self._made([_Request(batch, done)])
        with self._write_lock:
            if not self._env_open:
                raise StoreError("store is closed")
            if group:
                self._write_group(group)
        result.result()

    def _validated(self, writes: Sequence[Write]) -> tuple[Write, ...]:
        batch = tuple(writes)
        for w in batch:
            if not isinstance(w, Put | Delete | PutMade):
                raise StoreError(f"not a Put, PutMade or Delete: {type(w).__name__}")
            if w.db not in self._dbs:
                raise StoreError(f"unknown db {w.db!r}; this store has {self.DBS}")
            if not isinstance(w.key, bytes) or not 0 < len(w.key) <= self._max_key_size:
                raise StoreError(
                    f"key in db {w.db!r} must be 1..{self._max_key_size} bytes, got {w.key!r:.60}"
                )
            if isinstance(w, Put) and not isinstance(w.value, bytes):
                raise StoreError(f"value in db {w.db!r} must be bytes, not {type(w.value)}")
            if isinstance(w, PutMade) and not callable(w.make):
                raise StoreError(f"PutMade in db {w.db!r} needs a callable, not {type(w.make)}")
        return batch

    def _made(self, group: list[_Request]) -> list[_Request]:
        """`group` with every PutMade's value made; a request whose `make` raised is settled
        with that error and left out. Runs outside the transaction, so a retried transaction
        (map growth, group failure) writes the same bytes without making them again."""
        out: list[_Request] = []
        for req in group:
            if not any(isinstance(w, PutMade) for w in req.writes):
                out.append(req)
                continue
            try:
                writes = tuple(
                    Put(w.db, w.key, _made_value(w)) if isinstance(w, PutMade) else w
                    for w in req.writes
                )
            except Exception as exc:
                self._settle(req, exc)
            else:
                out.append(_Request(writes, req.done))
        return out

    # -- writer thread -----------------------------------------------------------------------

    def _writer_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Request)
            group = [first]
            while len(group) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                assert isinstance(nxt, _Request)
                group.append(nxt)
            group = self._made(group)
            if group:
                with self._write_lock:
                    self._write_group(group)
            self._resolve_settled()

    def _resolve_settled(self) -> None:
        """Hand the futures settled since the last call back to their loops: one wake-up per
        loop per group, not one per request (each is a write to the loop's self-pipe)."""
        settled, self._settled = self._settled, []
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for fut, exc in settled:
            by_loop.setdefault(fut.get_loop(), []).append((fut, exc))
        for loop, pairs in by_loop.items():
            # RuntimeError: the caller's loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, pairs)

    def _write_group(self, group: list[_Request]) -> None:
        """Commit `group` in one txn; if that fails, each request alone. Settles every request."""
        try:
            self._run_txn(group)
        except Exception as exc:
            if len(group) == 1:
                self._settle(group[0], exc)
                return
            log.warning(
                "group commit of %d requests failed (%s); retrying one by one", len(group), exc
            )
            for req in group:
                try:
                    self._run_txn([req])
                except Exception as one_exc:
                    self._settle(req, one_exc)
                else:
                    self._settle(req, None)
        else:
            for req in group:
                self._settle(req, None)

    def _settle(self, req: _Request, exc: BaseException | None) -> None:
        if exc is not None:
            with self._stats_lock:
                self._failed += 1
            if not isinstance(exc, StoreError):
                wrapped = StoreError(f"write failed: {exc}")
                wrapped.__cause__ = exc
                exc = wrapped
        if isinstance(req.done, asyncio.Future):
            self._settled.append((req.done, exc))  # writer thread only; see _resolve_settled
            return
        try:
            req.done(exc)
        except Exception:  # a broken callback must not kill the writer
            log.exception("store completion callback failed")

    def _run_txn(self, group: list[_Request]) -> None:
        """One write transaction for all of `group`, regrowing the map on MDB_MAP_FULL."""
        while True:
            started = time.perf_counter()
            try:
                txn = self._begin_write()
                try:
                    for req in group:
                        for w in req.writes:
                            if isinstance(w, Put):
                                txn.put(w.key, w.value, db=self._dbs[w.db])
                            elif isinstance(w, Delete):
                                txn.delete(w.key, db=self._dbs[w.db])
                            else:  # _made() replaced every PutMade before the transaction
                                raise StoreError("a PutMade reached the transaction unmade")
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()  # fsync happens here; a failed commit frees the txn itself
            except lmdb.MapFullError:
                self._grow_map()
                continue
            break
        seconds = time.perf_counter() - started
        with self._stats_lock:
            self._commits += 1
            self._batches += len(group)
            self._ops += sum(len(r.writes) for r in group)
            self._last_batch_size = len(group)
        if self.on_batch is not None:
            try:
                self.on_batch(len(group), seconds)
            except Exception:
                log.exception("Store.on_batch callback failed")

    def _begin_write(self) -> lmdb.Transaction[bytes]:
        try:
            return self._env.begin(write=True)
        except lmdb.MapResizedError:
            self._adopt_map_size()  # another process grew the map (LMDB: mdb_txn_begin)
            return self._env.begin(write=True)

    def _grow_map(self) -> None:
        new_size = self._map_size * 2
        if new_size > _MAX_MAP_SIZE:
            raise StoreError(f"map full at {self._map_size} bytes (limit {_MAX_MAP_SIZE})")
        with self._gate.exclusive():
            self._env.set_mapsize(new_size)
            self._map_size = int(self._env.info()["map_size"])
        with self._stats_lock:
            self._map_grows += 1
        log.info("store %s: map size grown to %d bytes", self.path, self._map_size)

    def _adopt_map_size(self) -> None:
        with self._gate.exclusive():
            self._env.set_mapsize(0)  # 0 = adopt the size recorded by the other process
            self._map_size = int(self._env.info()["map_size"])

    # -- reads -------------------------------------------------------------------------------

    def _read(self, fn: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
        for _ in range(3):
            with self._gate.shared():
                if not self._env_open:
                    raise StoreError("store is closed")
                try:
                    with self._env.begin() as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    pass
                except lmdb.Error as exc:
                    raise StoreError(f"read failed: {exc}") from exc
            self._adopt_map_size()
        raise StoreError("map keeps being resized by another process")

    def _db(self, db: str) -> lmdb._Database:
        try:
            return self._dbs[db]
        except KeyError:
            raise StoreError(f"unknown db {db!r}; this store has {self.DBS}") from None

    def get(self, db: str, key: bytes) -> bytes | None:
        handle = self._db(db)
        return self._read(lambda txn: txn.get(key, db=handle))

    def scan(
        self,
        db: str,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Items whose key starts with `prefix`, in key order (descending if `reverse`).

        `start` is an inclusive bound where the scan begins: keys >= start going forward,
        keys <= start going in reverse.
        """
        handle = self._db(db)
        if limit is not None and limit <= 0:
            return []
        return self._read(lambda txn: _scan(txn, handle, prefix, start, reverse, limit))

    def count(self, db: str) -> int:
        handle = self._db(db)
        return self._read(lambda txn: int(txn.stat(handle)["entries"]))

    def size_bytes(self) -> int:
        """Size of the data file: LMDB only extends it as pages are used (no writemap)."""
        return (self.path / _DATA_FILE).stat().st_size

    def backup(self, dest_dir: str | os.PathLike[str]) -> Path:
        """Consistent hot copy (one read txn, compacted) into `dest_dir`, new or empty."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise StoreError(f"backup destination {dest} is not empty")
        with self._gate.shared():
            if not self._env_open:
                raise StoreError("store is closed")
            try:
                self._env.copy(str(dest), compact=True)
            except lmdb.Error as exc:
                raise StoreError(f"backup to {dest} failed: {exc}") from exc
        # mdb_env_copy does not promise the copy reached the disk; make it so.
        fd = os.open(dest / _DATA_FILE, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest

    @property
    def stats(self) -> dict[str, int]:
        """Counters for metrics.

        commits: write txns committed (fsyncs); batches: commit requests written; ops: single
        Put/Delete applied; last_batch_size: requests in the last txn; failed: requests that
        got an error from the writer; map_grows: map doublings; map_size: current map bytes.
        """
        with self._stats_lock:
            return {
                "commits": self._commits,
                "batches": self._batches,
                "ops": self._ops,
                "last_batch_size": self._last_batch_size,
                "failed": self._failed,
                "map_grows": self._map_grows,
                "map_size": self._map_size,
            }


def _scan(
    txn: lmdb.Transaction[bytes],
    db: lmdb._Database,
    prefix: bytes,
    start: bytes | None,
    reverse: bool,
    limit: int | None,
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    cur = txn.cursor(db)
    if reverse:
        positioned = _seek_last_at_or_below(cur, prefix, start)
        step = cur.prev
    else:
        lower = prefix if start is None or start < prefix else start
        positioned = cur.set_range(lower)
        step = cur.next
    while positioned:
        key = cur.key()
        if not key.startswith(prefix):
            break
        out.append((key, cur.value()))
        if limit is not None and len(out) >= limit:
            break
        positioned = step()
    return out


def _seek_last_at_or_below(cur: lmdb.Cursor[bytes], prefix: bytes, start: bytes | None) -> bool:
    """Put `cur` on the greatest key that may begin a reverse scan; False if there is none."""
    if start is not None and start.startswith(prefix):
        # inclusive upper bound `start`
        if cur.set_range(start):
            return cur.key() == start or cur.prev()
        return cur.last()
    if start is not None and start < prefix:
        return False  # every key with this prefix is above `start`
    end = _prefix_end(prefix)  # exclusive upper bound: just past the prefix range
    if end is not None and cur.set_range(end):
        return cur.prev()
    return cur.last()
