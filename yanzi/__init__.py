"""Yanzi's Python client SDK: an async `Client` with a local keystore, a persisted sync cursor,
exact catch-up and automatic reconnect. See docs/protocol.md for the wire protocol it speaks.

    async with yanzi.Client("http://127.0.0.1:8080", keystore_path="alice.json") as client:
        await client.login("alice", "correct horse")
        events = client.events()
        await client.connect()
        conv = await client.direct("bob")
        await client.send(conv, "hi")

In a mesh, `Client(url, ..., edges="auto")` connects to the nearest edge and fails over to the
next one when it drops (see yanzi.edges); `client.edge` is the base URL in use.
"""

from yanzi.client import Client, new_cmid
from yanzi.config import ClientConfig
from yanzi.edges import Edge
from yanzi.errors import (
    AckTimeout,
    ConnectionLost,
    ConnectTimeout,
    InvalidRequest,
    KeystoreError,
    NotLoggedIn,
    ProtocolError,
    RequestTimeout,
    ServerError,
    YanziError,
    YanziTimeout,
)
from yanzi.events import (
    Ack,
    CaughtUp,
    Connected,
    Conversation,
    DeviceAdded,
    Disconnected,
    E2eeStatus,
    EdgeChanged,
    Event,
    HistoryPage,
    KeyChanged,
    Message,
    OpReceived,
    Presence,
    Read,
    Replay,
    ServerNotice,
    Typing,
    Undecryptable,
)
from yanzi.keystore import Keystore
from yanzi.stream import EventStream

__all__ = [
    "Ack",
    "AckTimeout",
    "CaughtUp",
    "Client",
    "ClientConfig",
    "ConnectTimeout",
    "Connected",
    "ConnectionLost",
    "Conversation",
    "DeviceAdded",
    "Disconnected",
    "E2eeStatus",
    "Edge",
    "EdgeChanged",
    "Event",
    "EventStream",
    "HistoryPage",
    "InvalidRequest",
    "KeyChanged",
    "Keystore",
    "KeystoreError",
    "Message",
    "NotLoggedIn",
    "OpReceived",
    "Presence",
    "ProtocolError",
    "Read",
    "Replay",
    "RequestTimeout",
    "ServerError",
    "ServerNotice",
    "Typing",
    "Undecryptable",
    "YanziError",
    "YanziTimeout",
    "new_cmid",
]
