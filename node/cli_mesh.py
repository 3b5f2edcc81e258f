"""`yanzi mesh ...` and `yanzi join`: operator commands over the data dir's mesh files, and
status/revocation against a running node's HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from federation import demo as mesh_demo
from federation.config import load_federation_config
from federation.discovery import DiscoveryError, Found, discover
from federation.errors import FederationError
from federation.meshfiles import MeshFiles
from node.identity import load_or_create_key, node_id

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' or plain seconds."""
    text = text.strip()
    unit = DURATION_UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 90s, 15m, 1h, 7d)")
    return int(number) * (unit or 1)


def add_commands(sub: Any) -> None:
    mesh = sub.add_parser("mesh", help="create and manage a mesh of nodes")
    msub = mesh.add_subparsers(dest="mesh_command", required=True)

    init = msub.add_parser("init", help="create a mesh with this node as operator and member")
    init.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))
    init.add_argument("--region", default="local")
    init.add_argument("--url", action="append", default=[], help="public URL of this node")

    invite = msub.add_parser("invite", help="sign a single-use, expiring invite for a node")
    invite.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))
    invite.add_argument("--region", required=True)
    invite.add_argument("--expires", type=parse_duration, default=3600, help="e.g. 1h (default)")
    invite.add_argument(
        "--nats", action="append", default=[], required=True,
        help="NATS URL the new node's nats-server connects to as a leaf (or its client)",
    )  # fmt: skip

    status = msub.add_parser("status", help="members, regions, connectivity of a running node")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true")

    revoke = msub.add_parser("revoke", help="revoke a node (needs the operator key)")
    revoke.add_argument("node")
    revoke.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))
    revoke.add_argument("--url", default="", help="also hand the revocation to this node now")

    demo = msub.add_parser("demo", help="N nodes and a NATS cluster on loopback (Ctrl-C stops)")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--base-port", type=int, default=0, help="0 (default): free ports")
    demo.add_argument("--data-root", type=Path, default=None, help="default: a temporary dir")

    discover = msub.add_parser("discover", help="list Yanzi nodes on the LAN (zeroconf)")
    _discovery_args(discover)
    discover.add_argument("--json", action="store_true")

    join = sub.add_parser("join", help="join a mesh with an invite")
    join.add_argument("invite", nargs="?", help="the token from `yanzi mesh invite`")
    join.add_argument("--discover", action="store_true", help="look for the mesh on the LAN")
    _discovery_args(join)
    join.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))
    join.add_argument("--region", default=None, help="must match the invite's region")
    join.add_argument("--url", action="append", default=[], help="public URL of this node")


def run(args: argparse.Namespace) -> int:
    now_ms = time.time_ns() // 1_000_000
    try:
        if args.command == "join" and (args.discover or args.invite is None):
            return _join_discovered(args, now_ms)
        if args.command == "join":
            record = MeshFiles(args.data_dir).join(args.invite, args.region, args.url, now_ms)
            mesh = MeshFiles(args.data_dir).load()
            assert mesh is not None
            print(f"joined mesh {mesh.mesh_id} as {record['node']} in region {record['region']}")
            print("start the node (yanzi up) to enrol with the mesh")
            return 0
        command = args.mesh_command
        if command == "init":
            mesh_id, record = MeshFiles(args.data_dir).init(args.region, args.url, now_ms)
            print(f"created mesh {mesh_id}; this node {record['node']} is its first member")
            print(f"the operator key is {args.data_dir / 'operator.key'}: guard it")
            return 0
        if command == "invite":
            token = MeshFiles(args.data_dir).invite(args.region, args.expires, args.nats, now_ms)
            print(token)
            return 0
        if command == "revoke":
            record = MeshFiles(args.data_dir).revoke(args.node, now_ms)
            print(f"revoked {args.node}")
            if args.url:
                result = _post(args.url + "/v1/mesh/records", {"records": [record]})
                print(f"handed to {args.url}: {result}")
            else:
                print("the node applies it at its next start (or pass --url to apply it now)")
            return 0
        if command == "status":
            return _status(args.url, as_json=args.json)
        if command == "discover":
            return _discover(args)
        if command == "demo":
            return mesh_demo.main(args.nodes, args.base_port, args.data_root)
    except FederationError as exc:
        print(f"yanzi: {exc}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"yanzi: cannot reach the node: {exc}", file=sys.stderr)
        return 1
    return 2


def _post(url: str, body: dict[str, Any]) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _status(url: str, *, as_json: bool) -> int:
    with urllib.request.urlopen(url + "/v1/mesh/status", timeout=10) as resp:
        status = json.loads(resp.read())
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    if status.get("mesh") is None:
        print(f"node {status['node']} is standalone (no mesh); nats connected: "
              f"{status['nats_connected']}")  # fmt: skip
        return 0
    print(f"mesh {status['mesh']}  node {status['node'][:12]}  region {status['region']}  "
          f"nats {'up' if status['nats_connected'] else 'DOWN'}  "
          f"conversations {status['hosted_conversations']}")  # fmt: skip
    print(f"{'node':14} {'region':12} {'up':4} {'last seen':10} {'lag':10} urls")
    for m in status["members"]:
        seen = (
            "self" if m["self"] else ("-" if m["last_seen_s"] is None else f"{m['last_seen_s']}s")
        )
        lag = "-" if m.get("lag_ms") is None else f"{m['lag_ms']}ms"
        print(f"{m['node'][:12]:14} {m['region']:12} {'yes' if m['up'] else 'NO':4} "
              f"{seen:10} {lag:10} {' '.join(m['urls'])}")  # fmt: skip
    for node in status["revoked"]:
        print(f"revoked: {node}")
    return 0


def show_identity(data_dir: Path) -> str:
    return node_id(load_or_create_key(data_dir))


# -- zeroconf: `yanzi mesh discover`, `yanzi join --discover` --------------------------------------
# Discovery only finds nodes (DESIGN 9): what it prints is a hint, and joining still takes an
# operator-signed invite.


def _discovery_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (3)")
    parser.add_argument(
        "--interfaces", default=None,
        help="IPv4 addresses to query on, comma separated, or 'all' "
        "(default: federation.discovery_interfaces, i.e. $YANZI_FED_DISCOVERY_INTERFACES or "
        "127.0.0.1)",
    )  # fmt: skip


def _find(args: argparse.Namespace) -> tuple[str, list[Found]]:
    interfaces = args.interfaces or load_federation_config().discovery_interfaces
    return interfaces, asyncio.run(discover(args.timeout, interfaces))


def _discover(args: argparse.Namespace) -> int:
    interfaces, found = _find(args)
    if args.json:
        print(json.dumps([_found_json(f) for f in found], indent=2))
        return 0
    if not found:
        print(f"no Yanzi nodes answered on {interfaces} within {args.timeout:g} s "
              "(--interfaces takes this host's LAN address, or 'all')")  # fmt: skip
        return 0
    print(f"{'node':14} {'region':12} {'mesh':18} {'http':32} nats")
    for f in found:
        a = f.advert
        print(f"{a.node[:12]:14} {a.region:12} {a.mesh or '-':18} {a.http:32} {a.nats or '-'}")
    print("(found on the LAN, not verified: trust comes from invites and the mesh roster)")
    return 0


def _found_json(found: Found) -> dict[str, Any]:
    a = found.advert
    return {
        "node": a.node,
        "region": a.region,
        "mesh": a.mesh or None,
        "http": a.http,
        "nats": a.nats or None,
        "port": found.port,
        "addresses": list(found.addresses),
    }


def _join_discovered(args: argparse.Namespace, now_ms: int) -> int:
    if not args.discover:
        print("yanzi: join needs an INVITE (or --discover to look for a mesh on the LAN)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.invite is None:
        return _show_meshes(*_find(args), timeout=args.timeout)
    files = MeshFiles(args.data_dir)
    record = files.join(args.invite, args.region, args.url, now_ms)  # the invite is the trust
    mesh = files.load()
    assert mesh is not None
    print(f"joined mesh {mesh.mesh_id} as {record['node']} in region {record['region']}")
    try:
        _, found = _find(args)
    except DiscoveryError as exc:
        print(f"note: could not look on the LAN ({exc}); keeping the invite's NATS URLs")
        found = []
    seen = [f for f in found if f.advert.mesh == mesh.mesh_id]
    if not seen:
        print(f"note: no node of mesh {mesh.mesh_id} answered on the LAN; "
              "keeping the invite's NATS URLs")  # fmt: skip
    else:
        nodes = ", ".join(f"{f.advert.node[:12]} ({f.advert.region}) {f.advert.http}" for f in seen)
        print(f"mesh {mesh.mesh_id} on the LAN: {nodes}")
        if not any(_reachable(url) for url in mesh.nats):
            leaves = sorted(
                {f.advert.nats for f in seen if f.advert.nats and _reachable(f.advert.nats)}
            )
            if leaves:
                # Only where to connect, not whom to trust: envelopes are still verified
                # against the roster, which the invite's operator key anchors.
                files._write_mesh(mesh.mesh_id, mesh.operator, leaves, mesh.region)
                print(f"the invite's NATS URLs ({', '.join(mesh.nats) or 'none'}) are unreachable; "
                      f"using {', '.join(leaves)}, advertised on the LAN (not signed)")  # fmt: skip
            else:
                print("warning: the invite's NATS URLs are unreachable and no node of the mesh "
                      "on the LAN advertises a reachable one")  # fmt: skip
    print("start the node (yanzi up) to enrol with the mesh")
    return 0


def _show_meshes(interfaces: str, found: list[Found], *, timeout: float) -> int:
    meshes: dict[str, list[Found]] = {}
    for f in found:
        if f.advert.mesh:
            meshes.setdefault(f.advert.mesh, []).append(f)
    if not meshes:
        print(f"no mesh answered on {interfaces} within {timeout:g} s "
              f"({len(found)} standalone node(s) seen)")  # fmt: skip
        return 1
    for mesh_id, nodes in sorted(meshes.items()):
        print(f"mesh {mesh_id}:")
        for f in nodes:
            extra = f"  leaf {f.advert.nats}" if f.advert.nats else ""
            print(f"  node {f.advert.node[:12]}  region {f.advert.region}  {f.advert.http}{extra}")
    print(
        "not joined: joining takes an invite from the mesh's operator (whoever ran "
        "`yanzi mesh init` and holds operator.key; discovery cannot tell which node that is)."
    )
    leaf = next((f.advert.nats for f in found if f.advert.nats), "LEAF_URL")
    print(f"ask them for one: yanzi mesh invite --region YOUR_REGION --nats {leaf}")
    print("then: yanzi join INVITE --discover")
    return 1


def _reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Can we open a TCP connection to a NATS URL (leaf port 7422 when it names none)?"""
    try:
        parts = urlsplit(url)
        port = parts.port or {"ws": 80, "wss": 443}.get(parts.scheme, 7422)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True
