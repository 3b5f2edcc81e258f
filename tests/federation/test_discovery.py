"""zeroconf discovery: the TXT codec (hypothesis), and live adverts on 127.0.0.1 only.

Every zeroconf instance here binds to interfaces=["127.0.0.1"] (this machine's only usable
network is loopback, and tests must never announce on a real LAN). Other sessions on this host
may advertise Yanzi nodes on loopback too, so assertions look for the nodes a test made, never
at exact counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zeroconf._core
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from crdt import b64encode, node_id_for
from federation.discovery import (
    DISCOVERY_VERSION,
    SERVICE_TYPE,
    Advert,
    Advertiser,
    DiscoveryError,
    Found,
    decode_txt,
    discover,
    encode_txt,
    host_name,
    parse_found,
    parse_interfaces,
    service_name,
    url_port,
)
from federation.invite import valid_region
from federation.meshfiles import MeshFiles
from tests.helpers import ROOT, NodeProcess, eventually

LOOPBACK = "127.0.0.1"

# -- strategies ---------------------------------------------------------------------------------

node_ids = st.binary(min_size=32, max_size=32).map(b64encode)
mesh_ids = st.binary(min_size=32, max_size=32).map(lambda b: b64encode(b)[:16])
regions = st.text(min_size=1, max_size=16).filter(valid_region)
hosts = st.sampled_from(["127.0.0.1", "10.0.0.7", "node-a.lan", "[::1]", "chat.example.com"])
ports = st.integers(1, 65535)
http_urls = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}:{port}",
    st.sampled_from(["http", "https"]),
    hosts,
    ports,
) | st.just("https://chat.example.com")
nats_urls = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}:{port}",
    st.sampled_from(["nats", "tls", "ws", "wss"]),
    hosts,
    ports,
)
adverts = st.builds(
    Advert,
    node=node_ids,
    region=regions,
    http=http_urls,
    mesh=st.just("") | mesh_ids,
    nats=st.just("") | nats_urls,
)


def txt(*strings: bytes) -> bytes:
    """TXT RDATA from raw strings (RFC 6763 §6.1: a length byte before each)."""
    return b"".join(bytes((len(s),)) + s for s in strings)


def good_strings(node: str) -> list[bytes]:
    return [b"v=1", f"node={node}".encode(), b"region=eu", b"mesh=", b"http=http://h:1", b"nats="]


def new_node_id() -> str:
    return node_id_for(SigningKey.generate().verify_key)


# -- pure codec ---------------------------------------------------------------------------------


@given(adverts)
def test_txt_round_trip(advert: Advert) -> None:
    assert decode_txt(encode_txt(advert)) == advert


def check_decode(data: bytes) -> None:
    """decode_txt raises DiscoveryError or returns a valid advert (one that round-trips)."""
    try:
        advert = decode_txt(data)
    except DiscoveryError:
        return
    assert decode_txt(encode_txt(advert)) == advert


@given(st.binary(max_size=600))
def test_decode_of_any_bytes_raises_only_discovery_error(data: bytes) -> None:
    check_decode(data)


@given(adverts, st.data())
def test_decode_of_a_corrupted_record_raises_only_discovery_error(
    advert: Advert, data: st.DataObject
) -> None:
    raw = bytearray(encode_txt(advert))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    check_decode(bytes(raw))
    check_decode(bytes(raw[:cut]))


@given(
    st.text(max_size=80) | node_ids.map(service_name),
    st.binary(max_size=300) | adverts.map(encode_txt),
    st.none() | st.integers(-5, 70000),
    st.lists(st.text(max_size=20) | st.just("127.0.0.1"), max_size=3),
)
def test_parse_found_raises_only_discovery_error(
    name: str, text: bytes, port: int | None, addresses: list[str]
) -> None:
    try:
        found = parse_found(name, text, port, addresses)
    except DiscoveryError:
        return
    assert found.name == name and 0 < found.port <= 65535
    assert found.name.lower() == service_name(found.advert.node).lower()


def test_decoding_follows_rfc6763_key_rules() -> None:
    node = new_node_id()
    strings = good_strings(node)
    # Keys are case-insensitive; the first occurrence wins; unknown and keyless strings and
    # empty strings are ignored.
    advert = decode_txt(
        txt(b"", b"=x", b"REGION=first", *strings, b"region=second", b"extra=1", b"flag")
    )
    assert advert == Advert(node=node, region="first", http="http://h:1")
    # mesh and nats may be absent altogether.
    assert decode_txt(txt(*strings[:3], strings[4])).mesh == ""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s[1:], "lacks v"),
        (lambda s: [b"v=2", *s[1:]], "unsupported"),
        (lambda s: [b"v=\xd9\xa1", *s[1:]], "unsupported"),  # an Arabic-Indic digit one
        (lambda s: [s[0], b"node", *s[2:]], "no value"),
        (lambda s: [s[0], b"node=abc", *s[2:]], "node id"),
        (lambda s: [*s[:2], b"region=", *s[3:]], "region"),
        (lambda s: [*s[:2], b"region=a b", *s[3:]], "region"),
        (lambda s: [*s[:2], b"region=\xff", *s[3:]], "UTF-8"),
        (lambda s: [*s[:3], b"mesh=short", *s[4:]], "mesh"),
        (lambda s: [*s[:4], b"http=ftp://h:1", s[5]], "http"),
        (lambda s: [*s[:4], b"http=http://h:0", s[5]], "http"),
        (lambda s: [*s[:4], b"http=http://[::1", s[5]], "http"),
        (lambda s: [*s[:4], b"http=http://h:99999", s[5]], "http"),
        (lambda s: [*s[:4], b"http=http://h /x", s[5]], "http"),
        (lambda s: [*s[:5], b"nats=http://h:4222"], "nats"),
    ],
)
def test_malformed_records_are_refused(change: Any, why: str) -> None:
    with pytest.raises(DiscoveryError, match=why):
        decode_txt(txt(*change(good_strings(new_node_id()))))


def test_truncated_and_oversized_records_are_refused() -> None:
    whole = txt(*good_strings(new_node_id()))
    with pytest.raises(DiscoveryError, match="truncated"):
        decode_txt(whole[:-3])
    with pytest.raises(DiscoveryError, match="over"):
        decode_txt(whole + txt(*[b"pad=" + b"x" * 250] * 40))


def test_adverts_are_validated_on_construction() -> None:
    node = new_node_id()
    with pytest.raises(DiscoveryError, match="node id"):
        Advert(node="not-a-node", region="eu", http="http://h:1")
    with pytest.raises(DiscoveryError, match="too long"):
        Advert(node=node, region="eu", http="http://h:1/" + "x" * 260)
    with pytest.raises(DiscoveryError, match="version"):
        Advert(node=node, region="eu", http="http://h:1", version=DISCOVERY_VERSION + 1)


def test_found_must_match_its_name_port_and_addresses() -> None:
    node, other = new_node_id(), new_node_id()
    text = encode_txt(Advert(node=node, region="eu", http="http://h:1"))
    found = parse_found(service_name(node).upper(), text, 8080, ["127.0.0.1"])
    assert found.advert.node == node and found.addresses == ("127.0.0.1",)
    with pytest.raises(DiscoveryError, match="name"):
        parse_found(service_name(other), text, 8080, [])
    with pytest.raises(DiscoveryError, match="port"):
        parse_found(service_name(node), text, 0, [])
    with pytest.raises(DiscoveryError, match="address"):
        parse_found(service_name(node), text, 8080, ["::1"])


def test_names_fit_dns_labels() -> None:
    node = new_node_id()
    assert len(service_name(node).split(".")[0]) <= 63  # RFC 6763 §4.1.1
    assert host_name(node).endswith(".local.") and "_" not in host_name(node)


def test_interfaces_and_url_ports() -> None:
    assert parse_interfaces("127.0.0.1") == ["127.0.0.1"]
    assert parse_interfaces(" 10.0.0.2, 127.0.0.1,10.0.0.2 ") == ["10.0.0.2", "127.0.0.1"]
    assert parse_interfaces("ALL") == "all"
    for bad in ("", "eth0", "::1", "0.0.0.0", "127.0.0.1,"):
        with pytest.raises(DiscoveryError):
            parse_interfaces(bad)
    assert url_port("http://127.0.0.1:8080") == 8080
    assert url_port("https://chat.example.com") == 443
    assert url_port("http://127.0.0.1:0") is None  # the listener is not up yet
    assert url_port("http://[::1") is None


# -- live, on 127.0.0.1 ---------------------------------------------------------------------------


@pytest.fixture
def fast_zeroconf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Shrink python-zeroconf's RFC 6762 probe/announce timers (as its own tests do): on one
    loopback host there is no network delay to wait out."""
    monkeypatch.setattr(zeroconf._core, "_PROBE_RANDOM_DELAY_INTERVAL", (5, 10))
    monkeypatch.setattr(zeroconf._core, "_CHECK_TIME", 20)
    monkeypatch.setattr(zeroconf._core, "_REGISTER_TIME", 40)
    monkeypatch.setattr(zeroconf._core, "_UNREGISTER_TIME", 20)
    yield


@pytest.fixture
async def advertised(fast_zeroconf: None) -> AsyncIterator[list[Advertiser]]:
    """Two nodes advertised on loopback, one in a mesh with a leaf URL, one standalone."""
    first = Advert(
        node=new_node_id(),
        region="cn-east",
        http="http://127.0.0.1:18081",
        mesh=b64encode(os.urandom(12)),
        nats="nats://127.0.0.1:17422",
    )
    second = Advert(node=new_node_id(), region="华南", http="http://127.0.0.1:18082")
    advertisers = [
        Advertiser(first, port=18081, interfaces=LOOPBACK),
        Advertiser(second, port=18082, interfaces=[LOOPBACK]),
    ]
    try:
        await asyncio.gather(*(a.start() for a in advertisers))
        yield advertisers
    finally:
        for advertiser in advertisers:
            await advertiser.stop()


def by_node(found: list[Found]) -> dict[str, Found]:
    return {f.advert.node: f for f in found}


async def test_discover_finds_both_advertisers_with_their_fields(
    advertised: list[Advertiser],
) -> None:
    mine = {a.advert.node: a for a in advertised}

    async def both() -> dict[str, Found]:
        seen = by_node(await discover(1.0, LOOPBACK))
        return seen if mine.keys() <= seen.keys() else {}

    seen = await eventually(both, timeout=20)
    for node, advertiser in mine.items():
        found = seen[node]
        assert found.advert == advertiser.advert  # every TXT field, as advertised
        assert found.port == advertiser.port
        assert found.addresses == (LOOPBACK,)
        assert found.name == service_name(node)


async def test_stop_unregisters(advertised: list[Advertiser]) -> None:
    gone, kept = advertised
    assert gone.advert.node in by_node(await eventually(lambda: discover(1.0, LOOPBACK)))
    await gone.stop()
    assert not gone.registered

    async def only_kept() -> bool:
        seen = by_node(await discover(1.0, LOOPBACK))
        return gone.advert.node not in seen and kept.advert.node in seen

    await eventually(only_kept, timeout=20)


async def test_update_is_seen(advertised: list[Advertiser]) -> None:
    advertiser = advertised[1]
    moved = Advert(node=advertiser.advert.node, region="华南", http="http://127.0.0.1:18090")
    await advertiser.update(moved, 18090)

    async def updated() -> bool:
        found = by_node(await discover(1.0, LOOPBACK)).get(moved.node)
        return found is not None and found.advert == moved and found.port == 18090

    await eventually(updated, timeout=20)


async def test_malformed_records_are_skipped(fast_zeroconf: None) -> None:
    good = Advertiser(
        Advert(node=new_node_id(), region="eu", http="http://127.0.0.1:18083"), port=18083
    )
    bad_node = new_node_id()
    impostor = new_node_id()  # a well-formed record under another node's instance name
    raw = [
        (service_name(bad_node), txt(b"v=1", f"node={bad_node}".encode(), b"region=eu")),
        (service_name(new_node_id()), txt(b"v=1", b"node=???", b"region=eu", b"http=http://h")),
        (service_name(impostor), encode_txt(Advert(node=new_node_id(), region="eu", http="http://h"))),
    ]  # fmt: skip
    azc = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        await good.start()
        for name, text in raw:
            info = AsyncServiceInfo(
                SERVICE_TYPE, name, port=18084, properties=text, server="bad.local.",
                addresses=[socket.inet_aton(LOOPBACK)],
            )  # fmt: skip
            await (await azc.async_register_service(info))

        async def good_seen() -> list[Found]:
            found = await discover(1.0, LOOPBACK)
            return found if good.advert.node in by_node(found) else []

        found = await eventually(good_seen, timeout=20)
        names = {f.name for f in found}
        assert not names & {name for name, _ in raw}
    finally:
        await good.stop()
        await azc.async_close()


async def test_a_bad_interface_is_a_clear_error() -> None:
    advertiser = Advertiser(
        Advert(node=new_node_id(), region="eu", http="http://h:1"),
        port=1,
        interfaces="203.0.113.77",  # TEST-NET-3: never this host's
    )
    with pytest.raises(DiscoveryError, match=r"203\.0\.113\.77"):
        await advertiser.start()
    await advertiser.stop()
    with pytest.raises(DiscoveryError, match="timeout"):
        await discover(0, LOOPBACK)


# -- the CLI, as a user runs it -------------------------------------------------------------------


async def yanzi(*args: str | Path, timeout: float = 60) -> tuple[int, str, str]:
    """`python -m node.cli ...` without blocking the loop (our advertisers must keep
    answering while it runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YANZI_FED_DISCOVERY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", *map(str, args), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_mesh_discover_lists_the_advertised_nodes(
    advertised: list[Advertiser],
) -> None:
    first, second = (a.advert for a in advertised)

    async def listed() -> str:
        code, out, err = await yanzi("mesh", "discover", "--timeout", "2")
        assert code == 0, err
        return out if first.node[:12] in out and second.node[:12] in out else ""

    out = await eventually(listed, timeout=40)
    row = next(line for line in out.splitlines() if line.startswith(first.node[:12]))
    assert row.split() == [first.node[:12], "cn-east", first.mesh, first.http, first.nats]
    assert "not verified" in out

    async def listed_json() -> dict[str, Any]:
        code, out, err = await yanzi("mesh", "discover", "--timeout", "2", "--json")
        assert code == 0, err
        rows = {row["node"]: row for row in json.loads(out)}
        return rows if second.node in rows else {}

    rows = await eventually(listed_json, timeout=40)
    assert rows[second.node] == {
        "node": second.node, "region": "华南", "mesh": None, "http": second.http,
        "nats": None, "port": 18082, "addresses": [LOOPBACK],
    }  # fmt: skip


async def test_cli_join_discover(tmp_path: Path, fast_zeroconf: None) -> None:
    """Without an invite it shows the mesh and who to ask; with one whose NATS URL is dead it
    joins and takes the leaf URL a node of the same mesh advertises (and is listening on)."""
    operator_dir = tmp_path / "operator"
    mesh_id, _ = MeshFiles(operator_dir).init("eu", ["http://127.0.0.1:18085"], 0)
    token = MeshFiles(operator_dir).invite("eu", 3600, ["nats://127.0.0.1:1"], now_ms())
    leaf = socket.create_server((LOOPBACK, 0))  # stands in for the hub's leafnode port
    leaf_url = f"nats://127.0.0.1:{leaf.getsockname()[1]}"
    hub = Advertiser(
        Advert(
            node=new_node_id(), region="eu", http="http://127.0.0.1:18085", mesh=mesh_id,
            nats=leaf_url,
        ),
        port=18085,
    )  # fmt: skip
    await hub.start()
    try:

        async def shown() -> str:
            code, out, _ = await yanzi("join", "--discover", "--timeout", "2")
            assert code == 1  # nothing was joined
            return out if f"mesh {mesh_id}" in out else ""

        out = await eventually(shown, timeout=40)
        assert hub.advert.node[:12] in out and "invite" in out and leaf_url in out

        attempts = iter(range(100))

        async def joined() -> tuple[Path, str]:
            new_dir = tmp_path / f"new{next(attempts)}"  # each try joins from a fresh node
            code, out, err = await yanzi(
                "join", token, "--discover", "--timeout", "2", "--data-dir", new_dir
            )
            assert code == 0, err
            assert f"joined mesh {mesh_id}" in out
            return (new_dir, out) if f"mesh {mesh_id} on the LAN" in out else None  # type: ignore[return-value]

        new_dir, out = await eventually(joined, timeout=40)
        mesh = MeshFiles(new_dir).load()
        assert mesh is not None and mesh.mesh_id == mesh_id
        assert mesh.nats == (leaf_url,)  # the invite's nats://127.0.0.1:1 is dead
        assert "not signed" in out
    finally:
        await hub.stop()
        leaf.close()

    code, _, err = await yanzi("join")
    assert code == 2 and "INVITE" in err


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- a real node --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_running_node_advertises_itself_until_it_stops(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", env={"YANZI_FED_DISCOVERY_INTERFACES": LOOPBACK})
    await asyncio.to_thread(node.start)
    try:
        status = json.loads(await asyncio.to_thread(_get, node.url + "/v1/mesh/status"))

        async def advertised() -> Found | None:
            return by_node(await discover(1.0, LOOPBACK)).get(status["node"])

        found = await eventually(advertised, timeout=30)
        assert found.advert.http == node.url and found.port == node.port
        assert found.advert.mesh == ""  # standalone
    finally:
        await asyncio.to_thread(node.stop)

    async def gone() -> bool:
        return status["node"] not in by_node(await discover(1.0, LOOPBACK))

    await eventually(gone, timeout=20)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())
