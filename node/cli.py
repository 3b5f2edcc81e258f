"""The `yanzi` command: run a node, check a config, back up and restore a data dir."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from federation.config import load_federation_config
from node import cli_mesh
from node.config import ConfigError, NodeConfig, load_config
from node.http_api import VERSION
from node.logs import configure as configure_logs

log = logging.getLogger("yanzi")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yanzi", description="Yanzi edge IM node")
    parser.add_argument("--version", action="version", version=f"yanzi {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a node with embedded defaults")
    up.add_argument("--config", type=Path, help="TOML config file")
    up.add_argument("--data-dir", type=Path, help="data folder (default ./yanzi-data)")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8080; 0 picks a free one)")
    up.add_argument("--region", help="this node's region label (default local)")
    up.add_argument("--nats", help="connect to this NATS instead of starting a nats-server")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and print the result")
    check.add_argument("file", type=Path)

    backup = sub.add_parser("backup", help="hot backup of a data dir (safe while running)")
    backup.add_argument("dest", type=Path, help="empty or new folder for the backup")
    backup.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))

    restore = sub.add_parser("restore", help="restore a backup into a data dir (node stopped)")
    restore.add_argument("src", type=Path, help="a folder written by `yanzi backup`")
    restore.add_argument("--data-dir", type=Path, default=Path("./yanzi-data"))

    cli_mesh.add_commands(sub)
    return parser


# Commands that write a data dir (or a copy of one): password and token hashes, ciphertext,
# keys. Everything they create is owner-only (dirs 0700, files 0600), LMDB's files included.
PRIVATE_UMASK = 0o077


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("up", "backup", "restore"):
        os.umask(PRIVATE_UMASK)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "config":
            config = load_config(args.file)
            fed_config = load_federation_config(args.file)
            for name in NodeConfig.__dataclass_fields__:
                print(f"{name} = {getattr(config, name)!r}")
            for name in type(fed_config).__dataclass_fields__:
                print(f"federation.{name} = {getattr(fed_config, name)!r}")
            print(f"{args.file}: OK")
            return 0
        if args.command == "backup":
            return _backup(args.data_dir, args.dest)
        if args.command == "restore":
            return _restore(args.src, args.data_dir)
        if args.command in ("mesh", "join"):
            return cli_mesh.run(args)
    except ConfigError as exc:
        print(f"yanzi: configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


def _up(args: argparse.Namespace) -> int:
    config = load_config(
        args.config, data_dir=args.data_dir, host=args.host, port=args.port, region=args.region
    )
    fed_config = load_federation_config(args.config, nats_url=args.nats)
    configure_logs(config.log_level, config.log_format)
    from node.app import serve

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop, fed_config=fed_config)

    asyncio.run(run())
    return 0


# Files beside lmdb/ that a backup carries (those present): identity and mesh membership.
BACKUP_FILES = ("node.key", "mesh.json", "operator.key", "roster-pending.json")


def _backup(data_dir: Path, dest: Path) -> int:
    from node.app import NODE_DBS
    from node.store import Store, StoreError

    if not (data_dir / "lmdb").exists():
        print(f"yanzi: no node data in {data_dir}", file=sys.stderr)
        return 1
    try:
        store = Store(data_dir / "lmdb", dbs=NODE_DBS)
        try:
            store.backup(dest / "lmdb")
        finally:
            store.close_sync()
    except StoreError as exc:  # e.g. a non-empty destination: a message, not a traceback
        print(f"yanzi: backup failed: {exc}", file=sys.stderr)
        return 1
    for name in BACKUP_FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, dest / name)
    print(f"backed up {data_dir} to {dest}")
    return 0


def _restore(src: Path, data_dir: Path) -> int:
    from node.identity import KEY_FILE

    if not (src / "lmdb" / "data.mdb").exists() or not (src / KEY_FILE).exists():
        print(f"yanzi: {src} is not a yanzi backup", file=sys.stderr)
        return 1
    if (data_dir / "lmdb").exists() and any((data_dir / "lmdb").iterdir()):
        print(f"yanzi: {data_dir} already holds data; move it away first", file=sys.stderr)
        return 1
    (data_dir / "lmdb").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "lmdb" / "data.mdb", data_dir / "lmdb" / "data.mdb")
    (data_dir / "lmdb" / "data.mdb").chmod(0o600)  # copy2 copies the backup's mode bits
    for name in BACKUP_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, data_dir / name)
            (data_dir / name).chmod(0o600)
    print(f"restored {src} into {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
