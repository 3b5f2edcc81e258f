"""The `yanzi` command: run a node, check a config, back up and restore a data dir."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
from pathlib import Path

from node.config import ConfigError, NodeConfig, load_config
from node.http_api import VERSION

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "config":
            config = load_config(args.file)
            for name in NodeConfig.__dataclass_fields__:
                print(f"{name} = {getattr(config, name)!r}")
            print(f"{args.file}: OK")
            return 0
        if args.command == "backup":
            return _backup(args.data_dir, args.dest)
        if args.command == "restore":
            return _restore(args.src, args.data_dir)
    except ConfigError as exc:
        print(f"yanzi: configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


def _up(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data_dir, host=args.host, port=args.port)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from node.app import serve

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    asyncio.run(run())
    return 0


def _backup(data_dir: Path, dest: Path) -> int:
    from node.accounts import DBS as ACCOUNT_DBS
    from node.hub import DBS as HUB_DBS
    from node.identity import KEY_FILE
    from node.store import Store

    if not (data_dir / "lmdb").exists():
        print(f"yanzi: no node data in {data_dir}", file=sys.stderr)
        return 1
    store = Store(data_dir / "lmdb", dbs=(*ACCOUNT_DBS, *HUB_DBS))
    try:
        store.backup(dest / "lmdb")
    finally:
        store.close_sync()
    shutil.copy2(data_dir / KEY_FILE, dest / KEY_FILE)
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
    shutil.copy2(src / KEY_FILE, data_dir / KEY_FILE)
    (data_dir / KEY_FILE).chmod(0o600)
    print(f"restored {src} into {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
