"""The node's Ed25519 identity: created on first start in the data dir (mode 0600)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nacl.signing import SigningKey

from crdt import NodeId, node_id_for

log = logging.getLogger(__name__)
KEY_FILE = "node.key"


def load_or_create_key(data_dir: Path) -> SigningKey:
    """Read the node's signing key seed, or create one atomically with owner-only permissions."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path} is corrupt: expected a 32-byte Ed25519 seed")
        if path.stat().st_mode & 0o077:  # e.g. copied with a loose umask: tighten, say so
            log.warning("%s was readable by others; its mode is now 0600", path)
            path.chmod(0o600)
        return SigningKey(seed)
    key = SigningKey.generate()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored if a stale tmp file exists
        os.write(fd, bytes(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    log.info("created node identity %s", node_id_for(key.verify_key))
    return key


def node_id(key: SigningKey) -> NodeId:
    return node_id_for(key.verify_key)
