"""Mesh files on disk: init, invite, join, revoke, pending records, owner-only modes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt import b64encode, canonical_json
from crdt.signing import node_id_for
from federation.invite import InviteError, parse_invite
from federation.meshfiles import MeshFiles, MeshFilesError, MeshInfo
from federation.roster import Roster, record_id
from node.identity import load_or_create_key

T0 = 1_700_000_000_000
NATS = ["nats://127.0.0.1:4222"]


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """With umask 0, owner-only modes must come from the code, not from the environment."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def roster_for(files: MeshFiles) -> Roster:
    info = files.load()
    assert info is not None
    return Roster(info.mesh_id, info.operator)


@pytest.fixture
def operator(tmp_path: Path) -> MeshFiles:
    files = MeshFiles(tmp_path / "op")
    files.init("eu", ["http://op.example:8080"], now_ms=T0)
    return files


def test_init_creates_an_operator_key_and_a_mesh_with_owner_only_files(tmp_path: Path) -> None:
    files = MeshFiles(tmp_path / "a")
    mesh_id, genesis = files.init("eu", ["http://a.example:8080"], now_ms=T0)
    for name in ("operator.key", "node.key", "mesh.json", "roster-pending.json", "mesh.lock"):
        assert mode(tmp_path / "a" / name) == 0o600, name
    assert (tmp_path / "a" / "operator.key").stat().st_size == 32
    info = files.load()
    assert info is not None
    assert info.mesh_id == mesh_id and info.region == "eu" and info.nats == ()
    assert info.has_operator_key
    node = node_id_for(load_or_create_key(tmp_path / "a").verify_key)
    roster = roster_for(files)
    assert roster.add(genesis)
    assert roster.is_member(node)
    assert roster.members()[node].urls == ("http://a.example:8080",)
    assert files.pending() == [genesis]


def test_init_refuses_a_dir_already_in_a_mesh(operator: MeshFiles, tmp_path: Path) -> None:
    before = (operator.data_dir / "mesh.json").read_bytes()
    with pytest.raises(MeshFilesError, match="already in a mesh"):
        operator.init("us", [], now_ms=T0)
    assert (operator.data_dir / "mesh.json").read_bytes() == before


def test_an_interrupted_init_reuses_the_operator_key(tmp_path: Path) -> None:
    files = MeshFiles(tmp_path / "a")
    mesh_id, _ = files.init("eu", [], now_ms=T0)
    (tmp_path / "a" / "mesh.json").unlink()
    (tmp_path / "a" / "roster-pending.json").unlink()
    again, genesis = files.init("eu", [], now_ms=T0 + 1)
    assert again == mesh_id
    assert files.pending() == [genesis]


def test_invite_and_join_enrol_a_new_node(operator: MeshFiles, tmp_path: Path) -> None:
    token = operator.invite("cn-east", 3600, NATS, now_ms=T0)
    invite = parse_invite(token).invite
    assert invite.region == "cn-east" and invite.exp == T0 + 3_600_000
    assert invite.nats == tuple(NATS)

    joiner = MeshFiles(tmp_path / "b")
    enrol = joiner.join(token, None, ["http://b.example:8080"], now_ms=T0 + 1000)
    info = joiner.load()
    assert info == MeshInfo(
        mesh_id=invite.mesh,
        operator=invite.operator,
        nats=tuple(NATS),
        region="cn-east",
        has_operator_key=False,
    )
    for name in ("node.key", "mesh.json", "roster-pending.json"):
        assert mode(tmp_path / "b" / name) == 0o600, name
    assert not (tmp_path / "b" / "operator.key").exists()
    assert joiner.pending() == [enrol]

    # Every member that learns both records agrees the new node is in.
    roster = roster_for(operator)
    for record in [*operator.pending(), *joiner.pending()]:
        roster.add(record)
    new_node = node_id_for(load_or_create_key(tmp_path / "b").verify_key)
    assert roster.members()[new_node].region == "cn-east"
    assert len(roster.members()) == 2


def test_no_file_keeps_the_invite_token_or_its_one_time_key(
    operator: MeshFiles, tmp_path: Path
) -> None:
    """What is written (and later replicated) cannot be replayed to enrol another node."""
    token = operator.invite("eu", 3600, NATS, now_ms=T0)
    seed = parse_invite(token).seed
    joiner = MeshFiles(tmp_path / "b")
    enrol = joiner.join(token, None, [], now_ms=T0 + 1)
    assert enrol["invite"] == parse_invite(token).invite.body()  # the public part only
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert seed not in data, path
            assert b64encode(seed).encode() not in data, path
            assert token.encode() not in data, path


def test_two_invites_have_independent_one_time_keys(operator: MeshFiles) -> None:
    first = parse_invite(operator.invite("eu", 60, NATS, now_ms=T0))
    second = parse_invite(operator.invite("eu", 60, NATS, now_ms=T0))
    assert first.invite.id != second.invite.id
    assert first.seed != second.seed and first.invite.enrol_key != second.invite.enrol_key


def test_join_refuses_an_expired_invite_and_writes_nothing(
    operator: MeshFiles, tmp_path: Path
) -> None:
    token = operator.invite("eu", 60, NATS, now_ms=T0)
    joiner = MeshFiles(tmp_path / "b")
    with pytest.raises(InviteError, match="expired"):
        joiner.join(token, None, [], now_ms=T0 + 60_001)
    assert joiner.load() is None
    assert not (tmp_path / "b" / "mesh.json").exists()


def test_join_refuses_another_region_than_the_invites(operator: MeshFiles, tmp_path: Path) -> None:
    token = operator.invite("eu", 60, NATS, now_ms=T0)
    with pytest.raises(InviteError, match="region"):
        MeshFiles(tmp_path / "b").join(token, "us", [], now_ms=T0)
    assert MeshFiles(tmp_path / "b").join(token, "eu", [], now_ms=T0)["region"] == "eu"


def test_join_refuses_a_dir_in_another_mesh(operator: MeshFiles, tmp_path: Path) -> None:
    other = MeshFiles(tmp_path / "other")
    other.init("eu", [], now_ms=T0)
    before = (other.data_dir / "mesh.json").read_bytes()
    token = operator.invite("eu", 60, NATS, now_ms=T0)
    with pytest.raises(MeshFilesError, match="already in mesh"):
        other.join(token, None, [], now_ms=T0)
    assert (other.data_dir / "mesh.json").read_bytes() == before


def test_rejoining_the_same_mesh_is_allowed(operator: MeshFiles, tmp_path: Path) -> None:
    joiner = MeshFiles(tmp_path / "b")
    joiner.join(operator.invite("eu", 60, NATS, now_ms=T0), None, [], now_ms=T0)
    second = joiner.join(operator.invite("eu", 60, NATS, now_ms=T0), None, [], now_ms=T0 + 1)
    assert second in joiner.pending() and len(joiner.pending()) == 2
    with pytest.raises(MeshFilesError, match="region"):
        joiner.join(operator.invite("us", 60, NATS, now_ms=T0), None, [], now_ms=T0)


def test_invite_and_revoke_need_the_operator_key(operator: MeshFiles, tmp_path: Path) -> None:
    joiner = MeshFiles(tmp_path / "b")
    joiner.join(operator.invite("eu", 60, NATS, now_ms=T0), None, [], now_ms=T0)
    with pytest.raises(MeshFilesError, match=r"operator\.key"):
        joiner.invite("eu", 60, NATS, now_ms=T0)
    with pytest.raises(MeshFilesError, match=r"operator\.key"):
        joiner.revoke(node_id_for(load_or_create_key(tmp_path / "b").verify_key), now_ms=T0)
    with pytest.raises(MeshFilesError, match="not in a mesh"):
        MeshFiles(tmp_path / "empty").invite("eu", 60, NATS, now_ms=T0)


def test_invite_expiry_is_bounded(operator: MeshFiles) -> None:
    with pytest.raises(MeshFilesError):
        operator.invite("eu", 0, NATS, now_ms=T0)
    with pytest.raises(MeshFilesError):
        operator.invite("eu", 31 * 24 * 3600, NATS, now_ms=T0)


def test_revoke_queues_a_record_that_removes_the_node(operator: MeshFiles, tmp_path: Path) -> None:
    joiner = MeshFiles(tmp_path / "b")
    enrol = joiner.join(operator.invite("eu", 60, NATS, now_ms=T0), None, [], now_ms=T0)
    revoke = operator.revoke(enrol["node"], now_ms=T0 + 5)
    assert revoke in operator.pending()
    roster = roster_for(operator)
    roster.add_all([*operator.pending(), enrol])
    assert roster.is_revoked(enrol["node"]) and not roster.is_member(enrol["node"])
    with pytest.raises(MeshFilesError):
        operator.revoke("not-a-node-id", now_ms=T0)


def test_discard_pending_forgets_only_the_named_records(operator: MeshFiles) -> None:
    genesis = operator.pending()[0]
    revoke = operator.revoke(b64encode(b"\x05" * 32), now_ms=T0 + 1)
    operator.discard_pending([record_id(genesis)])
    assert operator.pending() == [revoke]
    assert mode(operator.data_dir / "roster-pending.json") == 0o600
    operator.discard_pending([record_id(revoke)])
    assert operator.pending() == []


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        canonical_json({"mesh_id": "x", "operator": "y", "nats": [], "region": "eu"}),
        canonical_json({"mesh_id": "x"}),
    ],
)
def test_a_corrupt_mesh_file_is_reported(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "mesh.json").write_bytes(content)
    with pytest.raises(MeshFilesError, match="corrupt"):
        MeshFiles(tmp_path).load()


def test_a_mesh_file_whose_id_does_not_match_its_operator_is_reported(
    operator: MeshFiles, tmp_path: Path
) -> None:
    info = operator.load()
    assert info is not None
    other = MeshFiles(tmp_path / "x")
    other.init("eu", [], now_ms=T0)
    other_info = other.load()
    assert other_info is not None
    (tmp_path / "x" / "mesh.json").write_bytes(
        canonical_json(
            {"mesh_id": info.mesh_id, "operator": other_info.operator, "nats": [], "region": "eu"}
        )
    )
    with pytest.raises(MeshFilesError, match="corrupt"):
        other.load()


def test_corrupt_pending_records_are_reported(operator: MeshFiles) -> None:
    (operator.data_dir / "roster-pending.json").write_bytes(b'{"records": 5}')
    with pytest.raises(MeshFilesError, match="corrupt"):
        operator.pending()


def test_node_key_is_owner_only_even_over_a_stale_tmp_file_or_a_loose_copy(
    tmp_path: Path,
) -> None:
    data = tmp_path / "n"
    data.mkdir()
    (data / "node.key.tmp").write_bytes(b"left by a crash")
    (data / "node.key.tmp").chmod(0o666)
    key = load_or_create_key(data)
    assert (data / "node.key").stat().st_mode & 0o777 == 0o600
    (data / "node.key").chmod(0o644)  # e.g. restored by hand with the wrong mode
    assert bytes(load_or_create_key(data)) == bytes(key)  # same identity, and tightened
    assert (data / "node.key").stat().st_mode & 0o777 == 0o600
