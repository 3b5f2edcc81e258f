"""Fixtures for SDK tests: one real node per module, clients that are always closed."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crdt import Op
from tests.helpers import NodeProcess
from yanzi import Client, ClientConfig, Event, OpReceived

PASSWORD = "correct-horse-battery"
# Shrunk timers (python-zeroconf style): reconnects in tens of ms, not seconds.
FAST = ClientConfig(
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    ack_timeout_s=5.0,
    send_timeout_s=15.0,
    connect_timeout_s=5.0,
    request_timeout_s=5.0,
    persist_delay_s=0.01,
)
_names = itertools.count(1)
E = TypeVar("E")

MakeClient = Callable[..., Awaitable[Client]]


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}{next(_names)}{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("sdk") / "node").start()
    yield proc
    proc.stop()


async def new_client(
    url: str,
    keystore: Path,
    clients: list[Client],
    *,
    user: str | None = None,
    register: bool = True,
    login: bool = True,
    connect: bool = True,
    config: ClientConfig = FAST,
    **kwargs: Any,
) -> Client:
    client = Client(url, keystore_path=keystore, config=config, **kwargs)
    clients.append(client)
    if user is not None and register:
        await client.register(user, PASSWORD)
    if user is not None and login:
        await client.login(user, PASSWORD)
    if connect:
        await client.connect()
    return client


@pytest.fixture
async def make_client(node: NodeProcess, tmp_path: Path) -> AsyncIterator[MakeClient]:
    """make_client(user=None, *, register=True, login=True, connect=True, keystore=None, url=None).

    A fresh unique user is registered unless `user` is given; `login=False` reuses the token
    already in `keystore`."""
    clients: list[Client] = []
    counter = itertools.count(1)

    async def make(
        user: str | None = None,
        *,
        keystore: Path | None = None,
        url: str | None = None,
        **kwargs: Any,
    ) -> Client:
        if user is None and kwargs.get("login", True):
            user = unique_user()
        path = keystore or tmp_path / f"keys-{next(counter)}.json"
        return await new_client(url or node.url, path, clients, user=user, **kwargs)

    yield make
    for client in clients:
        await client.close()


class Recorder:
    """Accumulates a client's events so tests can poll them with eventually()."""

    def __init__(self, client: Client) -> None:
        self.stream = client.events()
        self.seen: list[Event] = []

    def poll(self) -> list[Event]:
        self.seen.extend(self.stream.drain())
        return self.seen

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.poll() if isinstance(e, kind)]

    def ops(self, kind: str | None = None) -> list[Op]:
        return [e.op for e in self.of(OpReceived) if kind is None or e.op.kind == kind]
