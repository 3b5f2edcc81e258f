"""zeroconf discovery: nodes advertise themselves on the LAN and `yanzi mesh discover` lists them.

DESIGN decision 9: discovery only *finds* peers, it never grants trust. Anything on the LAN can
answer mDNS, so every record read here is untrusted input: each TXT field is validated and a
malformed record is skipped, and what survives is a hint for a person ("node X of mesh M is at
http://..."), never a roster entry. Trust still comes only from an operator-signed invite and
from the signed roster.

Layout, like python-zeroconf itself: a pure codec (`Advert`, `encode_txt`, `decode_txt`,
`parse_found`, `parse_interfaces`) under a thin async façade (`Advertiser`, `discover`).

Wire format (DNS-SD, RFC 6763)
    Service type ``_yanzi._tcp.local.``; instance ``yanzi-<node id>`` (49 bytes, below the 63-byte
    label limit); SRV target ``yanzi-<16 hex of sha256(node id)>.local.`` with the A records of
    the advertised interfaces; SRV port: the port of the node's public HTTP URL.
    TXT strings, in this order (RFC 6763 §6: ``key=value``, each at most 255 bytes)::

        v=1                  discovery record version; other versions are skipped
        node=<node id>       43-char base64url Ed25519 public key
        region=<region>      the node's region label
        mesh=<mesh id>       16-char mesh id, or empty when the node is standalone
        http=<url>           public http(s) URL of the node
        nats=<url>           NATS URL a joining node's nats-server can connect to as a leaf
                             (nats/tls/ws/wss), or empty when the node does not accept leaves

    Decoding follows RFC 6763 §6.4: keys are case-insensitive, only the first occurrence of a key
    counts, unknown keys and strings without a key are ignored. Values must be strict UTF-8.

Interfaces
    Adverts and queries go only where the operator says: a comma list of IPv4 addresses (the
    default is ``127.0.0.1``, so a node never announces itself on a LAN unless configured to), or
    ``all``. IPv6 is not supported yet (python-zeroconf cannot use ``::1``, and link-local
    addresses need interface indexes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import ifaddr
import zeroconf
from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from crdt import DecodeError, b64decode
from federation.errors import FederationError
from federation.invite import valid_region

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_yanzi._tcp.local."
DISCOVERY_VERSION: Final = 1
MAX_TXT_STRING: Final = 255  # RFC 6763 §6.1: a length byte, then at most 255 bytes
MAX_TXT_BYTES: Final = 8900  # RFC 6763 §6.2: fits one 9000-byte mDNS packet
MAX_TIMEOUT_S: Final = 300.0
HTTP_SCHEMES: Final = frozenset({"http", "https"})
NATS_SCHEMES: Final = frozenset({"nats", "tls", "ws", "wss"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_MESH_ID = re.compile(r"[A-Za-z0-9_-]{16}")
_URL_TEXT = re.compile(r"[!-~]+")  # printable ASCII, no blanks: IDNs must be punycoded
_VERSION = re.compile(r"[0-9]{1,6}")
_TXT_KEY = re.compile(rb"[ -<>-~]+")  # RFC 6763 §6.4: printable US-ASCII except '='

Interfaces = list[str] | Literal["all"]


class DiscoveryError(FederationError):
    """A discovery record is malformed, an advert cannot be encoded, or mDNS cannot run on the
    requested interfaces."""


# -- pure codec ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert:
    """What a node says about itself in its TXT record; validated on construction."""

    node: str
    region: str
    http: str
    mesh: str = ""
    nats: str = ""
    version: int = DISCOVERY_VERSION

    def __post_init__(self) -> None:
        _check_advert(self)
        for text in _txt_strings(self):
            if len(text) > MAX_TXT_STRING:
                key = text.split(b"=", 1)[0].decode()
                raise DiscoveryError(f"{key} is too long for a TXT string (max 255 bytes)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """A node seen on the LAN: its advert plus where mDNS says it is. Unverified."""

    name: str  # the DNS-SD instance's full name
    advert: Advert
    port: int
    addresses: tuple[str, ...]


def instance_name(node: str) -> str:
    """The DNS-SD instance label for a node (RFC 6763 §4.1.1)."""
    return f"yanzi-{node}"


def service_name(node: str) -> str:
    return f"{instance_name(node)}.{SERVICE_TYPE}"


def host_name(node: str) -> str:
    """The SRV target: a plain DNS label (node ids hold '_', which host names may not)."""
    return f"yanzi-{hashlib.sha256(node.encode()).hexdigest()[:16]}.local."


def encode_txt(advert: Advert) -> bytes:
    """The TXT record's RDATA: length-prefixed ``key=value`` strings."""
    return b"".join(bytes((len(s),)) + s for s in _txt_strings(advert))


def decode_txt(data: bytes) -> Advert:
    """Parse a TXT record's RDATA into an `Advert`; raises only DiscoveryError."""
    if len(data) > MAX_TXT_BYTES:
        raise DiscoveryError(f"TXT record over {MAX_TXT_BYTES} bytes")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = pos + 1 + data[pos]
        if end > len(data):
            raise DiscoveryError("truncated TXT string")
        key, sep, value = data[pos + 1 : end].partition(b"=")
        pos = end
        if not _TXT_KEY.fullmatch(key):
            continue  # empty or non-ASCII key: ignored (RFC 6763 §6.4)
        name = key.decode("ascii").lower()
        if name in fields or name not in _FIELDS:
            continue  # only the first occurrence counts; unknown keys are ignored
        if not sep:
            raise DiscoveryError(f"TXT key {name!r} has no value")
        try:
            fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DiscoveryError(f"TXT value of {name!r} is not UTF-8") from None
    missing = [k for k in ("v", "node", "region", "http") if k not in fields]
    if missing:
        raise DiscoveryError(f"TXT record lacks {', '.join(missing)}")
    if not _VERSION.fullmatch(fields["v"]) or int(fields["v"]) != DISCOVERY_VERSION:
        raise DiscoveryError(f"unsupported discovery record version {fields['v'][:16]!r}")
    return Advert(
        node=fields["node"],
        region=fields["region"],
        http=fields["http"],
        mesh=fields.get("mesh", ""),
        nats=fields.get("nats", ""),
    )


def parse_found(name: str, text: bytes, port: int | None, addresses: Sequence[str]) -> Found:
    """Check a resolved mDNS service and build a `Found`; raises only DiscoveryError."""
    advert = decode_txt(text)
    if name.lower() != service_name(advert.node).lower():
        raise DiscoveryError("instance name does not match the advertised node id")
    if not isinstance(port, int) or not 0 < port <= 65535:
        raise DiscoveryError("SRV port out of range")
    checked = []
    for address in addresses:
        try:
            checked.append(str(ipaddress.IPv4Address(address)))
        except ValueError:
            raise DiscoveryError("bad IPv4 address in the service's A records") from None
    return Found(name=name, advert=advert, port=port, addresses=tuple(checked))


def parse_interfaces(text: str) -> Interfaces:
    """``all`` or a comma list of IPv4 addresses (the `discovery_interfaces` setting)."""
    if text.strip().lower() == "all":
        return "all"
    result = []
    for part in text.split(","):
        try:
            result.append(str(ipaddress.IPv4Address(part.strip())))
        except ValueError:
            raise DiscoveryError(
                f"{part.strip()!r} is not an IPv4 address (use a comma list of IPv4 addresses, "
                "or 'all')"
            ) from None
    if "0.0.0.0" in result:
        raise DiscoveryError("0.0.0.0 is not an interface address; use 'all' instead")
    return sorted(set(result))


def url_port(url: str) -> int | None:
    """The TCP port a URL points at (the scheme's default when it names none); None when the
    URL names port 0 (a node whose listener is not up yet) or cannot be parsed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    return port or None


_FIELDS: Final = frozenset({"v", "node", "region", "mesh", "http", "nats"})


def _txt_strings(advert: Advert) -> list[bytes]:
    pairs = [
        ("v", str(advert.version)),
        ("node", advert.node),
        ("region", advert.region),
        ("mesh", advert.mesh),
        ("http", advert.http),
        ("nats", advert.nats),
    ]
    return [f"{key}={value}".encode() for key, value in pairs]


def _check_advert(advert: Advert) -> None:
    if advert.version != DISCOVERY_VERSION:
        raise DiscoveryError(f"unsupported discovery record version {advert.version}")
    try:
        raw = b64decode(advert.node, max_bytes=32)
    except DecodeError:
        raw = b""
    if len(raw) != 32:
        raise DiscoveryError("node must be a node id (43-char base64url public key)")
    if not valid_region(advert.region):
        raise DiscoveryError("region must be 1-64 printable characters without blanks")
    if advert.mesh and not _MESH_ID.fullmatch(advert.mesh):
        raise DiscoveryError("mesh must be empty or a 16-char mesh id")
    if not _valid_url(advert.http, HTTP_SCHEMES):
        raise DiscoveryError("http must be an http(s)://host[:port] URL")
    if advert.nats and not _valid_url(advert.nats, NATS_SCHEMES):
        raise DiscoveryError("nats must be empty or a nats/tls/ws/wss://host[:port] URL")


def _valid_url(url: str, schemes: frozenset[str]) -> bool:
    if not _URL_TEXT.fullmatch(url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname) and port != 0


# -- async façade -------------------------------------------------------------------------------


def _zeroconf(
    interfaces: str | Sequence[str], *, unicast: bool = False
) -> tuple[AsyncZeroconf, Interfaces]:
    """An AsyncZeroconf bound to exactly these interfaces, IPv4 only."""
    chosen = parse_interfaces(interfaces if isinstance(interfaces, str) else ",".join(interfaces))
    choice: Any = zeroconf.InterfaceChoice.All if chosen == "all" else list(chosen)
    try:
        return AsyncZeroconf(
            interfaces=choice, ip_version=IPVersion.V4Only, unicast=unicast
        ), chosen
    except (OSError, RuntimeError, zeroconf.Error) as exc:
        raise DiscoveryError(
            f"cannot start mDNS on {','.join(chosen)} ({exc}): is each address this host's?"
        ) from exc


def _local_addresses(chosen: Interfaces) -> list[str]:
    """The A records to advertise: the chosen interfaces, or every non-loopback IPv4 address
    (loopback only when there is nothing else)."""
    if chosen != "all":
        return list(chosen)
    found = sorted(
        {str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips if ip.is_IPv4}
    )
    outside = [a for a in found if not ipaddress.IPv4Address(a).is_loopback]
    return outside or found


class Advertiser:
    """Keeps one node's advert registered on the chosen interfaces between `start` and `stop`.

    It starts no background tasks of its own: python-zeroconf's announcement broadcasts are
    awaited inside `start`/`update`/`stop`, so when `stop` returns nothing is left running.
    """

    def __init__(
        self, advert: Advert, *, port: int, interfaces: str | Sequence[str] = "127.0.0.1"
    ) -> None:
        if not 0 < port <= 65535:
            raise DiscoveryError(f"port must be 1-65535, not {port}")
        self.advert = advert
        self.port = port
        self._interfaces = interfaces
        self._azc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def registered(self) -> bool:
        return self._info is not None

    async def start(self) -> None:
        """Probe for the name, register, and send the announcements (about 1.5 s with
        python-zeroconf's RFC 6762 timers). Raises DiscoveryError, leaving nothing open."""
        if self._azc is not None:
            raise DiscoveryError("advertiser already started")
        self._azc, chosen = _zeroconf(self._interfaces)
        try:
            info = self._service_info(_local_addresses(chosen))
            await self._broadcast(await self._azc.async_register_service(info))
        except (OSError, zeroconf.Error) as exc:
            await self.stop()
            if isinstance(exc, zeroconf.NonUniqueNameException):
                raise DiscoveryError(
                    f"another responder already advertises node {self.advert.node} "
                    "(is this data dir running twice?)"
                ) from exc
            raise DiscoveryError(f"cannot advertise on the LAN: {exc}") from exc
        self._info = info
        log.info(
            "advertising node %s on %s via mDNS (%s port %d)",
            self.advert.node, ",".join(chosen), SERVICE_TYPE, self.port,
        )  # fmt: skip

    async def update(self, advert: Advert, port: int) -> None:
        """Announce a changed advert or port (same node) under the same name."""
        if advert.node != self.advert.node:
            raise DiscoveryError("an advertiser's node id cannot change")
        if not 0 < port <= 65535:
            raise DiscoveryError(f"port must be 1-65535, not {port}")
        if (advert, port) == (self.advert, self.port):
            return
        self.advert, self.port = advert, port
        if self._azc is None or self._info is None:
            return
        info = self._service_info(self._info.parsed_addresses(IPVersion.V4Only))
        await self._broadcast(await self._azc.async_update_service(info))
        self._info = info

    async def stop(self) -> None:
        """Send goodbyes (RFC 6762 §10.1) and close the sockets. Safe to call at any point."""
        azc, info = self._azc, self._info
        self._azc = self._info = None
        if azc is None:
            return
        try:
            if info is not None:
                with contextlib.suppress(OSError, zeroconf.Error):
                    await self._broadcast(await azc.async_unregister_service(info))
        finally:
            with contextlib.suppress(OSError, zeroconf.Error):
                await azc.async_close()

    def _service_info(self, addresses: Sequence[str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            service_name(self.advert.node),
            port=self.port,
            properties=encode_txt(self.advert),
            server=host_name(self.advert.node),
            addresses=[socket.inet_aton(a) for a in addresses],
        )

    @staticmethod
    async def _broadcast(pending: Any) -> None:
        """Await a broadcast python-zeroconf scheduled with ensure_future; cancel it if we are
        cancelled, so it never outlives its owner."""
        try:
            await pending
        except asyncio.CancelledError:
            pending.cancel()
            raise


async def discover(
    timeout_s: float = 3.0, interfaces: str | Sequence[str] = "127.0.0.1"
) -> list[Found]:
    """Browse `_yanzi._tcp.local.` for `timeout_s` seconds; the well-formed nodes seen, sorted
    by (mesh, region, node). Malformed records are skipped (logged at debug level).

    This is a one-shot querier (RFC 6762 §5.1): it asks from an ephemeral port, not 5353, so
    responders answer it directly by unicast (§6.7), at once and to this socket alone (several
    mDNS stacks on one host share port 5353, where a unicast answer would reach only one of
    them). Its questions carry the unicast-response bit (QU): python-zeroconf responders drop a
    QM query byte-identical to one seen in the last 800 ms, and every `discover` asks the same
    question, so two runs close together would otherwise go unanswered.
    """
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise DiscoveryError(f"timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    found: dict[str, Found] = {}
    resolving: dict[str, asyncio.Task[None]] = {}  # owned: cancelled and awaited below
    azc, _ = _zeroconf(interfaces, unicast=True)

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        remaining_ms = (deadline - loop.time()) * 1000
        if remaining_ms <= 0 or not await info.async_request(
            azc.zeroconf, remaining_ms, question_type=DNSQuestionType.QU
        ):
            return
        try:
            found[name] = parse_found(
                name, info.text or b"", info.port, info.parsed_addresses(IPVersion.V4Only)
            )
        except DiscoveryError as exc:
            found.pop(name, None)
            log.debug("skipped a malformed %s record: %s", SERVICE_TYPE, exc)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:  # python-zeroconf calls handlers with these keyword names
        previous = resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
            return
        task = resolving[name] = loop.create_task(resolve(name))
        task.add_done_callback(lambda done: _forget(resolving, name, done))

    try:
        browser = AsyncServiceBrowser(
            azc.zeroconf, SERVICE_TYPE, handlers=[on_change], question_type=DNSQuestionType.QU
        )
        try:
            await asyncio.sleep(timeout_s)  # browsing has no end: listen for the whole window
        finally:
            await browser.async_cancel()
            tasks = list(resolving.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await azc.async_close()
    return sorted(found.values(), key=lambda f: (f.advert.mesh, f.advert.region, f.advert.node))


def _forget(tasks: dict[str, asyncio.Task[None]], name: str, done: asyncio.Task[None]) -> None:
    if tasks.get(name) is done:
        del tasks[name]
