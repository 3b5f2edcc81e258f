"""`yanzi mesh ...` and `yanzi join`: operator commands over the data dir's mesh files, and
status/revocation against a running node's HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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

    join = sub.add_parser("join", help="join a mesh with an invite")
    join.add_argument("invite")
    join.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))
    join.add_argument("--region", default=None, help="must match the invite's region")
    join.add_argument("--url", action="append", default=[], help="public URL of this node")


def run(args: argparse.Namespace) -> int:
    now_ms = time.time_ns() // 1_000_000
    try:
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
    print(f"{'node':14} {'region':12} {'up':4} {'last seen':10} urls")
    for m in status["members"]:
        seen = (
            "self" if m["self"] else ("-" if m["last_seen_s"] is None else f"{m['last_seen_s']}s")
        )
        print(f"{m['node'][:12]:14} {m['region']:12} {'yes' if m['up'] else 'NO':4} "
              f"{seen:10} {' '.join(m['urls'])}")  # fmt: skip
    for node in status["revoked"]:
        print(f"revoked: {node}")
    return 0


def show_identity(data_dir: Path) -> str:
    return node_id(load_or_create_key(data_dir))
