"""A node's mesh files in its data dir: operator key, mesh membership, records to publish.

This is the I/O shell around `federation.invite` and `federation.roster` used by the CLI
(`yanzi mesh init|invite|revoke`, `yanzi join`) and by the node at start. Every file is written
atomically (temporary file, fsync, rename, fsync of the directory) with mode 0600.

Files (all in the node's data dir):

``node.key``
    The node's Ed25519 seed, created by `node.identity.load_or_create_key`.
``operator.key``
    The operator's 32-byte Ed25519 seed; only on the node where ``yanzi mesh init`` ran (or
    where an operator copied it). Needed for ``invite`` and ``revoke``. Guard it: whoever holds
    it can enrol and revoke any node.
``mesh.json``
    ``{"mesh_id": M, "operator": <b64 operator public key>, "nats": [NATS URLs], "region": R}``.
    Its presence means "this node is in mesh M"; the node builds its `Roster` from it.
``roster-pending.json``
    ``{"records": [record, ...]}``: roster records made here (genesis, own enrolment,
    revocations) that the node must add to its roster and publish. The node reads them with
    `pending()` at start (and may re-read them later, for a revocation made while it runs),
    and calls `discard_pending(ids)` once they are durably in its own roster store. Until then
    they stay; re-publishing is harmless because roster records are idempotent.

Invite tokens are never written: ``invite`` returns the token to the caller, and ``join`` keeps
only the enrolment record it makes, which carries the signed invite without the token's
one-time seed (see `federation.invite`); no record or pending file can be replayed to enrol
another node.

Read-modify-write of ``roster-pending.json`` holds an exclusive `flock` on ``mesh.lock`` so a
CLI command and a running node do not lose each other's changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from crdt import DecodeError, b64encode, canonical_json, strict_loads
from federation.errors import FederationError
from federation.invite import InviteError, MeshId, make_invite, mesh_id_for, parse_invite
from federation.roster import (
    Roster,
    RosterError,
    enrol_record,
    genesis_record,
    record_id,
    revoke_record,
)
from node.identity import load_or_create_key

log = logging.getLogger(__name__)

OPERATOR_KEY_FILE = "operator.key"
MESH_FILE = "mesh.json"
PENDING_FILE = "roster-pending.json"
LOCK_FILE = "mesh.lock"
MAX_INVITE_EXPIRY_S = 30 * 24 * 3600


class MeshFilesError(FederationError):
    """The data dir's mesh state forbids the command (already in a mesh, no operator key,
    corrupt file); the message says what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshInfo:
    mesh_id: MeshId
    operator: str  # b64 operator public key
    nats: tuple[str, ...]
    region: str
    has_operator_key: bool


class MeshFiles:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)

    # -- commands -------------------------------------------------------------------------

    def init(
        self, region: str, urls: Sequence[str], now_ms: int | None = None
    ) -> tuple[MeshId, dict[str, Any]]:
        """Create a mesh with this node as its operator and first member.

        An ``operator.key`` left without ``mesh.json`` (an interrupted init) is reused.
        """
        if self.load() is not None:
            raise MeshFilesError(f"{self.data_dir} is already in a mesh ({MESH_FILE} exists)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        operator = self._read_operator_key()
        if operator is None:
            operator = SigningKey.generate()
            self._write(OPERATOR_KEY_FILE, bytes(operator))
        node_key = load_or_create_key(self.data_dir)
        ts = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        try:
            record = genesis_record(operator, node_key, region=region, urls=urls, ts=ts)
        except RosterError as exc:
            raise MeshFilesError(f"cannot create the mesh: {exc}") from None
        mesh_id = mesh_id_for(operator.verify_key)
        self._append_pending(record)
        self._write_mesh(mesh_id, b64encode(bytes(operator.verify_key)), [], region)
        log.info("created mesh %s in region %s", mesh_id, region)
        return mesh_id, record

    def invite(self, region: str, expires_s: int, nats_urls: Sequence[str], now_ms: int) -> str:
        """Sign an invite for one node in `region`, valid for `expires_s` seconds; return its
        token, a bearer secret until used (it holds the invite's one-time key)."""
        if self.load() is None:
            raise MeshFilesError(f"{self.data_dir} is not in a mesh: run `yanzi mesh init`")
        operator = self._need_operator_key()
        if not 0 < expires_s <= MAX_INVITE_EXPIRY_S:
            raise MeshFilesError(f"invite expiry must be 1 s to {MAX_INVITE_EXPIRY_S} s")
        token = make_invite(
            operator,
            region=region,
            expires_ms=now_ms + expires_s * 1000,
            nats_urls=nats_urls,
            random16=os.urandom(16),
            enrol_seed=os.urandom(32),
        )
        log.info("issued an invite for region %s, valid %d s", region, expires_s)
        return token

    def join(
        self, token: str, region: str | None, urls: Sequence[str], now_ms: int
    ) -> dict[str, Any]:
        """Enrol this node with an invite: verify it (not expired), record the mesh, and queue
        the enrolment for publishing. `region` None means the invite's region."""
        invite = parse_invite(token, now_ms=now_ms).invite
        if region is not None and region != invite.region:
            raise InviteError(f"this invite is for region {invite.region!r}, not {region!r}")
        current = self.load()
        if current is not None and current.mesh_id != invite.mesh:
            raise MeshFilesError(
                f"{self.data_dir} is already in mesh {current.mesh_id}; "
                "use a fresh data dir to join another mesh"
            )
        if current is not None and current.region != invite.region:
            raise MeshFilesError(
                f"this node is enrolled in region {current.region!r}; "
                f"the invite is for {invite.region!r}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        node_key = load_or_create_key(self.data_dir)
        try:
            record = enrol_record(node_key, token, region=invite.region, urls=urls, ts=now_ms)
        except RosterError as exc:
            raise MeshFilesError(f"cannot enrol: {exc}") from None
        self._append_pending(record)
        self._write_mesh(invite.mesh, invite.operator, list(invite.nats), invite.region)
        log.info("joined mesh %s in region %s", invite.mesh, invite.region)
        return record

    def revoke(self, node_id: str, now_ms: int) -> dict[str, Any]:
        """Sign and queue the revocation of `node_id`."""
        info = self.load()
        if info is None:
            raise MeshFilesError(f"{self.data_dir} is not in a mesh")
        operator = self._need_operator_key()
        try:
            record = revoke_record(operator, info.mesh_id, node_id, ts=now_ms)
        except RosterError as exc:
            raise MeshFilesError(f"cannot revoke {node_id!r}: {exc}") from None
        self._append_pending(record)
        log.info("revoked node %s in mesh %s", node_id, info.mesh_id)
        return record

    # -- state ----------------------------------------------------------------------------

    def load(self) -> MeshInfo | None:
        """The mesh this data dir is in, or None; raises MeshFilesError if mesh.json is corrupt."""
        path = self.data_dir / MESH_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            value = strict_loads(data)
        except DecodeError as exc:
            raise MeshFilesError(f"{path} is corrupt: {exc}") from None
        if (
            not isinstance(value, dict)
            or set(value) != {"mesh_id", "operator", "nats", "region"}
            or not isinstance(value["operator"], str)
            or not isinstance(value["region"], str)
            or not isinstance(value["nats"], list)
            or not all(isinstance(url, str) for url in value["nats"])
        ):
            raise MeshFilesError(f"{path} is corrupt: expected {{mesh_id, operator, nats, region}}")
        try:
            Roster(value["mesh_id"], value["operator"])  # checks mesh id == operator's
        except RosterError as exc:
            raise MeshFilesError(f"{path} is corrupt: {exc}") from None
        return MeshInfo(
            mesh_id=MeshId(value["mesh_id"]),
            operator=value["operator"],
            nats=tuple(value["nats"]),
            region=value["region"],
            has_operator_key=(self.data_dir / OPERATOR_KEY_FILE).exists(),
        )

    def pending(self) -> list[dict[str, Any]]:
        """Roster records made here that the node has not yet taken into its roster."""
        if not (self.data_dir / PENDING_FILE).exists():
            return []  # and do not create the data dir (or its lock file) just to look
        with self._locked():
            return self._read_pending()

    def discard_pending(self, ids: Iterable[str]) -> None:
        """Forget the pending records with these record ids (they are safely in the roster)."""
        done = set(ids)
        with self._locked():
            records = self._read_pending()
            kept = [r for r in records if record_id(r) not in done]
            if len(kept) != len(records):
                self._write(PENDING_FILE, canonical_json({"records": kept}))

    # -- files ----------------------------------------------------------------------------

    def _read_operator_key(self) -> SigningKey | None:
        path = self.data_dir / OPERATOR_KEY_FILE
        try:
            seed = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(seed) != 32:
            raise MeshFilesError(f"{path} is corrupt: expected a 32-byte Ed25519 seed")
        return SigningKey(seed)

    def _need_operator_key(self) -> SigningKey:
        key = self._read_operator_key()
        if key is None:
            raise MeshFilesError(
                f"no {OPERATOR_KEY_FILE} in {self.data_dir}: run this on the operator's node"
            )
        return key

    def _write_mesh(self, mesh_id: str, operator: str, nats: list[str], region: str) -> None:
        body = {"mesh_id": mesh_id, "operator": operator, "nats": nats, "region": region}
        self._write(MESH_FILE, canonical_json(body))

    def _append_pending(self, record: dict[str, Any]) -> None:
        with self._locked():
            records = self._read_pending()
            if record_id(record) not in {record_id(r) for r in records}:
                records.append(record)
            self._write(PENDING_FILE, canonical_json({"records": records}))

    def _read_pending(self) -> list[dict[str, Any]]:
        path = self.data_dir / PENDING_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            value = strict_loads(data, max_bytes=64 << 20)
        except DecodeError as exc:
            raise MeshFilesError(f"{path} is corrupt: {exc}") from None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("records"), list)
            or not all(isinstance(r, dict) for r in value["records"])
        ):
            raise MeshFilesError(f"{path} is corrupt: expected {{records: [...]}}")
        return list(value["records"])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, name: str, data: bytes) -> None:
        """Atomically replace data_dir/name with `data`, mode 0600, durable on return."""
        path = self.data_dir / name
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored if a stale tmp file exists
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
