"""Subprocess for the durability test: commit numbered keys, print each number once acked.

Usage: python _store_writer.py STORE_DIR [MAX_WRITES] [MAX_SECONDS] [CONCURRENCY]

A line "N\\n" on stdout means `Store.commit` returned for key N, i.e. the node would have
acknowledged it. The test kills this process with SIGKILL and checks every printed N survived.
The loop is bounded so a forgotten process dies on its own.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `node`

from node.store import Put, Store

DB = "ops"


def key_of(n: int) -> bytes:
    return b"k%09d" % n


def value_of(n: int) -> bytes:
    return b"v%09d-" % n + bytes(100)


async def main(path: str, max_writes: int, max_seconds: float, concurrency: int) -> None:
    deadline = time.monotonic() + max_seconds
    counter = iter(range(max_writes))

    async with Store(path, dbs=[DB]) as store:

        async def worker() -> None:
            for n in counter:
                if time.monotonic() > deadline:
                    return
                await store.commit([Put(DB, key_of(n), value_of(n))])
                sys.stdout.write(f"{n}\n")
                sys.stdout.flush()

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0],
            int(args[1]) if len(args) > 1 else 100_000,
            float(args[2]) if len(args) > 2 else 60.0,
            int(args[3]) if len(args) > 3 else 16,
        )
    )
