"""node.store against real LMDB files: reads, group commit, map growth, failures, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.store import Delete, Put, PutMade, Store, StoreError

DBS = ("ops", "meta")
WRITER = Path(__file__).with_name("_store_writer.py")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "db", dbs=DBS)
    await s.start()
    yield s
    await s.close()


async def test_put_get_delete_and_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", dbs=DBS)
    await s.start()
    await s.commit([Put("ops", b"a", b"1"), Put("meta", b"a", b"m"), Put("ops", b"b", b"2")])
    assert s.get("ops", b"a") == b"1"
    assert s.get("meta", b"a") == b"m"  # databases are separate key spaces
    assert s.get("ops", b"zz") is None
    await s.commit([Delete("ops", b"b"), Put("ops", b"a", b"1bis"), Delete("ops", b"nope")])
    assert s.get("ops", b"b") is None
    assert s.count("ops") == 1
    assert s.size_bytes() > 0
    await s.close()

    s2 = Store(tmp_path / "db", dbs=DBS)
    try:
        assert s2.scan("ops") == [(b"a", b"1bis")]
        assert s2.get("meta", b"a") == b"m"
    finally:
        await s2.close()


SCAN_KEYS = [b"a", b"ab", b"abc", b"ac", b"b", b"b\xff", b"b\xff\xff", b"c"]


async def test_scan_prefix_start_reverse_limit(store: Store) -> None:
    await store.commit([Put("ops", k, k.upper()) for k in SCAN_KEYS])

    def keys(**kw: object) -> list[bytes]:
        return [k for k, _ in store.scan("ops", **kw)]  # type: ignore[arg-type]

    assert store.scan("ops", limit=1) == [(b"a", b"A")]
    assert keys() == SCAN_KEYS
    assert keys(reverse=True) == SCAN_KEYS[::-1]
    assert keys(prefix=b"a") == [b"a", b"ab", b"abc", b"ac"]
    assert keys(prefix=b"a", reverse=True) == [b"ac", b"abc", b"ab", b"a"]
    assert keys(prefix=b"ab") == [b"ab", b"abc"]
    assert keys(prefix=b"b\xff") == [b"b\xff", b"b\xff\xff"]
    assert keys(prefix=b"b\xff", reverse=True) == [b"b\xff\xff", b"b\xff"]
    assert keys(prefix=b"c", reverse=True) == [b"c"]  # prefix range runs to the end of the db
    assert keys(prefix=b"zz") == []
    assert keys(prefix=b"zz", reverse=True) == []
    assert keys(limit=3, reverse=True) == [b"c", b"b\xff\xff", b"b\xff"]
    assert keys(limit=0) == []
    # start is inclusive and clipped to the prefix range
    assert keys(start=b"ab") == [b"ab", b"abc", b"ac", b"b", b"b\xff", b"b\xff\xff", b"c"]
    assert keys(start=b"abb") == [b"abc", b"ac", b"b", b"b\xff", b"b\xff\xff", b"c"]
    assert keys(start=b"abc", reverse=True) == [b"abc", b"ab", b"a"]
    assert keys(start=b"abb", reverse=True) == [b"ab", b"a"]
    assert keys(prefix=b"a", start=b"ab", limit=2) == [b"ab", b"abc"]
    assert keys(prefix=b"a", start=b"abz", reverse=True) == [b"abc", b"ab", b"a"]
    assert keys(prefix=b"a", start=b"0") == [b"a", b"ab", b"abc", b"ac"]
    assert keys(prefix=b"a", start=b"0", reverse=True) == []
    assert keys(prefix=b"a", start=b"z") == []
    assert keys(prefix=b"a", start=b"z", reverse=True) == [b"ac", b"abc", b"ab", b"a"]
    assert keys(start=b"zzz", reverse=True) == SCAN_KEYS[::-1]
    assert keys(start=b"0", reverse=True) == []


async def test_group_commit_batches_concurrent_calls(store: Store) -> None:
    sizes: list[int] = []
    store.on_batch = lambda size, seconds: sizes.append(size)
    n = 2000
    await asyncio.gather(*(store.commit([Put("ops", b"k%05d" % i, b"v%d" % i)]) for i in range(n)))
    assert store.count("ops") == n
    assert all(store.get("ops", b"k%05d" % i) == b"v%d" % i for i in range(n))
    stats = store.stats
    assert stats["batches"] == n and stats["ops"] == n
    assert stats["commits"] < n  # many requests shared one fsync
    assert stats["commits"] == len(sizes) and sum(sizes) == n
    assert max(sizes) > 1


async def test_map_grows_on_map_full_without_losing_or_duplicating(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", dbs=DBS, map_size=64 << 10)
    await s.start()
    value = bytes(range(256)) * 16  # 4 KiB
    n = 1024  # 4 MiB of values into a 64 KiB map

    # A reader thread keeps scanning during the remaps: it must never see an error.
    stop = threading.Event()
    reader_errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                s.scan("ops", prefix=b"k", limit=50)
                s.count("ops")
            except BaseException as exc:
                reader_errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for chunk in range(0, n, 64):
            await asyncio.gather(
                *(s.commit([Put("ops", b"k%05d" % i, value)]) for i in range(chunk, chunk + 64))
            )
        await s.commit([Put("ops", b"big", value * 256)])  # one 1 MiB value, one txn
    finally:
        stop.set()
        t.join()
    assert reader_errors == []
    stats = s.stats
    assert stats["map_grows"] >= 1
    assert stats["map_size"] >= 4 << 20
    assert s.count("ops") == n + 1
    await s.close()

    s2 = Store(tmp_path / "db", dbs=DBS, map_size=64 << 10)  # reopen with the small default
    try:
        assert s2.count("ops") == n + 1
        assert all(s2.get("ops", b"k%05d" % i) == value for i in range(n))
        assert s2.get("ops", b"big") == value * 256
    finally:
        await s2.close()


async def test_unknown_db_fails_only_that_call(store: Store) -> None:
    good = [store.commit([Put("ops", b"g%03d" % i, b"x")]) for i in range(100)]
    bad = store.commit([Put("ops", b"half", b"x"), Put("nosuch", b"k", b"v")])
    results = await asyncio.gather(*good[:50], bad, *good[50:], return_exceptions=True)
    assert isinstance(results[50], StoreError)
    assert "nosuch" in str(results[50])
    assert [r for i, r in enumerate(results) if i != 50] == [None] * 100
    assert store.count("ops") == 100
    assert store.get("ops", b"half") is None  # a request is atomic: nothing of it was written
    with pytest.raises(StoreError):
        store.get("nosuch", b"k")
    with pytest.raises(StoreError):
        await store.commit([Put("ops", b"", b"empty key")])
    with pytest.raises(StoreError):
        await store.commit([Put("ops", b"x" * 600, b"key longer than LMDB allows")])


async def test_put_made_is_made_once_on_the_writer_thread(store: Store) -> None:
    threads: list[str] = []

    def maker(i: int) -> PutMade:
        def make() -> bytes:
            threads.append(threading.current_thread().name)
            return b"made%d" % i

        return PutMade("ops", b"m%03d" % i, make)

    def failing() -> bytes:
        raise ValueError("cannot make this one")

    calls = [store.commit([maker(i), Put("meta", b"m%03d" % i, b"x")]) for i in range(40)]
    calls.insert(20, store.commit([Put("meta", b"half", b"x"), PutMade("ops", b"bad", failing)]))
    calls.insert(5, store.commit([PutMade("ops", b"notbytes", lambda: "str")]))  # type: ignore
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[5], StoreError) and "not bytes" in str(results[5])
    assert isinstance(results[21], StoreError)  # the maker's error reaches only its caller
    assert "cannot make this one" in str(results[21])
    assert [r for i, r in enumerate(results) if i not in (5, 21)] == [None] * 40
    assert [store.get("ops", b"m%03d" % i) for i in range(40)] == [b"made%d" % i for i in range(40)]
    assert store.get("meta", b"half") is None and store.get("ops", b"bad") is None  # atomic
    assert len(threads) == 40  # each value made exactly once
    assert threading.main_thread().name not in threads  # not on the event loop's thread
    with pytest.raises(StoreError, match="callable"):
        await store.commit([PutMade("ops", b"k", b"not callable")])  # type: ignore[arg-type]
    store.commit_sync([PutMade("ops", b"sync", lambda: b"s")])  # commit_sync makes them too
    assert store.get("ops", b"sync") == b"s"


class _ShortLenKey(bytes):
    """A key whose len() lies, so it passes validation and fails inside LMDB's txn."""

    def __len__(self) -> int:
        return 1


async def test_failed_txn_fails_one_request_and_keeps_the_rest_of_its_group(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Stall the writer inside on_batch (it runs on the writer thread) so that the requests
    # below queue up and are drained into one group together.
    first_batch_done = threading.Event()
    release = threading.Event()

    def on_batch(size: int, seconds: float) -> None:
        if not first_batch_done.is_set():
            first_batch_done.set()
            release.wait(timeout=30)

    store.on_batch = on_batch
    first = asyncio.ensure_future(store.commit([Put("ops", b"first", b"1")]))
    assert await asyncio.to_thread(first_batch_done.wait, 30)
    bad_key = _ShortLenKey(b"x" * 600)  # > max key size: MDB_BAD_VALSIZE in mdb_put
    calls = [store.commit([Put("ops", b"g%03d" % i, b"x")]) for i in range(20)]
    calls.insert(10, store.commit([Put("ops", b"also-bad-atomic", b"x"), Put("ops", bad_key, b"")]))
    gathered = asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0)  # one loop turn (not a timed wait): every call above is now queued
    assert not gathered.done()
    release.set()
    results = await gathered
    await first
    assert isinstance(results[10], StoreError)
    assert results[:10] + results[11:] == [None] * 20
    assert store.count("ops") == 21  # "first" + 20 good ones
    assert store.get("ops", b"also-bad-atomic") is None
    assert store.stats["failed"] == 1
    assert "retrying one by one" in caplog.text  # the shared txn failed, then the split


async def test_close_flushes_queued_writes_and_is_idempotent(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", dbs=DBS)
    await s.start()
    commits = [s.commit([Put("ops", b"k%04d" % i, b"v")]) for i in range(500)]
    results = await asyncio.gather(*commits, s.close(), s.close())
    assert results == [None] * 502
    await s.close()
    with pytest.raises(StoreError):
        await s.commit([Put("ops", b"late", b"v")])
    with pytest.raises(StoreError):
        s.get("ops", b"k0000")
    with pytest.raises(StoreError):
        await s.start()

    s2 = Store(tmp_path / "db", dbs=DBS)
    try:
        assert s2.count("ops") == 500
    finally:
        await s2.close()


async def test_commit_requires_start(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", dbs=DBS)
    try:
        with pytest.raises(StoreError, match="not started"):
            await s.commit([Put("ops", b"k", b"v")])
    finally:
        await s.close()


def test_commit_sync_without_loop(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", dbs=DBS, map_size=64 << 10)
    s.commit_sync([Put("ops", b"k%04d" % i, bytes(1000)) for i in range(500)])  # grows the map
    s.commit_sync([Delete("ops", b"k0000")])
    with pytest.raises(StoreError):
        s.commit_sync([Put("other", b"k", b"v")])
    assert s.count("ops") == 499
    s.close_sync()
    s.close_sync()
    with pytest.raises(StoreError):
        s.commit_sync([Put("ops", b"k", b"v")])


async def test_backup_is_a_consistent_copy(store: Store, tmp_path: Path) -> None:
    await store.commit([Put("ops", b"k%04d" % i, b"v%d" % i) for i in range(300)])
    await store.commit([Put("meta", b"version", b"1"), Delete("ops", b"k0007")])
    writing = asyncio.gather(
        *(store.commit([Put("meta", b"later%03d" % i, b"x")]) for i in range(100))
    )
    dest = await asyncio.to_thread(store.backup, tmp_path / "backup")
    await writing
    assert (dest / "data.mdb").is_file()

    copy = Store(dest, dbs=DBS)
    try:
        assert copy.scan("ops") == store.scan("ops")
        assert copy.get("meta", b"version") == b"1"
        # the copy is one snapshot: some prefix of the concurrent writes, nothing torn
        later = copy.scan("meta", prefix=b"later")
        assert all(v == b"x" for _, v in later)
    finally:
        await copy.close()
    with pytest.raises(StoreError, match="not empty"):
        store.backup(dest)


def test_acked_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), "100000", "60", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 500:
            line = proc.stdout.readline()
            if not line:
                break  # the writer exited early; stderr below says why
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert len(acked) >= 500, err.decode()
    assert proc.returncode == -signal.SIGKILL
    # lines already in the pipe were printed after their ack too; a torn last line was not
    acked += [int(line) for line in out.split(b"\n")[:-1]]

    s = Store(path, dbs=["ops"])
    try:
        missing = [n for n in acked if s.get("ops", b"k%09d" % n) is None]
        assert missing == []
        assert s.count("ops") >= len(acked)
    finally:
        s.close_sync()
