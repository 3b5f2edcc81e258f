"""The `yanzi` command as a user runs it: a real subprocess each time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crdt import b64decode, b64encode
from node.http_api import VERSION
from tests.helpers import ROOT, NodeProcess
from tests.integration.conftest import PASSWORD, device_keys


def yanzi(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = yanzi("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"yanzi {VERSION}"
    script = shutil.which("yanzi")
    if script is not None:  # the console script, when the package is installed
        out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == f"yanzi {VERSION}"


def test_config_check_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text('[node]\nport = 9001\nregion = "eu"\n')
    result = yanzi("config", "check", path)
    assert result.returncode == 0, result.stderr
    assert "port = 9001" in result.stdout and f"{path}: OK" in result.stdout


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port = = 1\n", "not valid TOML"),
        ("port = 70000\n", "port"),
        ("prot = 8080\n", "prot"),
        ('fsync = "sometimes"\n', "fsync"),
        ("[node]\nsend_queue = 0\n", "send_queue"),
    ],
)
def test_config_check_bad_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = yanzi("config", "check", path)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and needle in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_missing_file(tmp_path: Path) -> None:
    result = yanzi("config", "check", tmp_path / "nope.toml")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_up_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("max_frame_bytes = 10\n")
    result = yanzi("up", "--config", path, "--data-dir", tmp_path / "data", "--port", "0")
    assert result.returncode == 2 and "max_frame_bytes" in result.stderr
    assert not (tmp_path / "data" / "lmdb").exists()


def test_up_reads_environment_overrides(tmp_path: Path) -> None:
    result = yanzi(
        "up", "--data-dir", tmp_path / "data", "--port", "0", env={"YANZI_SEND_QUEUE": "-1"}
    )
    assert result.returncode == 2 and "send_queue" in result.stderr


# -- backup and restore --------------------------------------------------------------------------


async def _chat(url: str, texts: list[str], token: str | None = None) -> tuple[str, str]:
    """Register alice and bob (first time), send `texts` from alice; (alice's token, conv)."""
    async with aiohttp.ClientSession() as http:
        if token is None:
            for user in ("alice", "bob"):
                body = {"username": user, "password": PASSWORD}
                async with http.post(f"{url}/v1/register", json=body) as resp:
                    assert resp.status == 201
            login = {"username": "alice", "password": PASSWORD, "device": "d1"}
            async with http.post(f"{url}/v1/login", json={**login, "keys": device_keys()}) as resp:
                token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{url}/v1/direct", json={"user": "bob"}, headers=headers) as resp:
            conv = (await resp.json())["conv"]
        for i, text in enumerate(texts):
            op = {
                "cmid": f"{text}-{i}",
                "conv": conv,
                "kind": "message",
                "body": b64encode(text.encode()),
            }
            async with http.post(f"{url}/v1/ops", json=op, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
    assert token is not None
    return token, conv


async def _messages(url: str, token: str) -> tuple[list[str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/sync", headers=headers) as resp:
            ops = (await resp.json())["ops"]
        async with http.get(f"{url}/healthz") as resp:
            health = await resp.json()
    texts = [
        b64decode(op["content"]["body"]).decode()
        for op in ops
        if op["content"]["kind"] == "message"
    ]
    return texts, health


@pytest.mark.integration
async def test_backup_while_running_then_restore_into_a_fresh_dir(tmp_path: Path) -> None:
    data, backup, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    with NodeProcess(data) as node:
        token, _ = await _chat(node.url, [f"before {i}" for i in range(20)])
        _, health = await _messages(node.url, token)
        result = yanzi("backup", backup, "--data-dir", data)  # the node keeps running
        assert result.returncode == 0, result.stderr
        await _chat(node.url, ["after the backup"], token)
        texts, _ = await _messages(node.url, token)
        assert texts[-1] == "after the backup"

    result = yanzi("restore", backup, "--data-dir", restored)
    assert result.returncode == 0, result.stderr
    assert (restored / "node.key").stat().st_mode & 0o077 == 0
    with NodeProcess(restored) as node:
        texts, restored_health = await _messages(node.url, token)  # tokens survive too
        assert texts == [f"before {i}" for i in range(20)]
        assert restored_health["node"] == health["node"]  # the same identity
        await _chat(node.url, ["on the restored node"], token)
        texts, _ = await _messages(node.url, token)
        assert texts[-1] == "on the restored node"

    # Restoring over data is refused; so is restoring something that is not a backup.
    result = yanzi("restore", backup, "--data-dir", restored)
    assert result.returncode == 1 and "already holds data" in result.stderr
    result = yanzi("restore", tmp_path / "nothing", "--data-dir", tmp_path / "x")
    assert result.returncode == 1 and "not a yanzi backup" in result.stderr


def test_backup_refusals(tmp_path: Path) -> None:
    result = yanzi("backup", tmp_path / "dest", "--data-dir", tmp_path / "no-node-here")
    assert result.returncode == 1 and "no node data" in result.stderr


@pytest.mark.integration
def test_backup_into_a_non_empty_folder_is_refused_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with NodeProcess(data):
        pass
    dest = tmp_path / "dest"
    (dest / "lmdb").mkdir(parents=True)
    (dest / "lmdb" / "something").write_text("keep me")
    result = yanzi("backup", dest, "--data-dir", data)
    assert result.returncode == 1
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert (dest / "lmdb" / "something").read_text() == "keep me"


@pytest.mark.integration
def test_start_and_clean_stop_log_the_real_url_and_no_nats_warning(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data").start()  # --port 0: the OS picks the port
    assert node.stop() == 0
    log = node.read_log()
    assert f"ready at {node.url} (data in" in log and ":0 " not in log
    # A clean stop drains NATS on purpose: no "disconnected; reconnecting" warning.
    assert "disconnected from NATS (stopping)" in log
    assert "reconnecting" not in log


@pytest.mark.integration
async def test_json_logs_are_one_object_per_line_without_secrets(tmp_path: Path) -> None:
    """A node with log_format = "json", DEBUG: every line is a JSON record, and the password,
    the token and the message body it handled appear in none of them (nor in the text)."""
    node = NodeProcess(
        tmp_path / "data", env={"YANZI_LOG_FORMAT": "json", "YANZI_LOG_LEVEL": "DEBUG"}
    ).start()
    try:
        body = "SECRET-BODY-" + os.urandom(8).hex()
        token, _ = await _chat(node.url, [body])
        assert (await _messages(node.url, token))[0] == [body]
    finally:
        assert node.stop() == 0
    raw = node.read_log()
    records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    text = " ".join(r["msg"] for r in records)
    assert "logged in" in text and "ready at" in text  # it did log the events
    for secret in (PASSWORD, token, body, b64encode(body.encode())):
        assert secret not in raw, secret


def _loose(path: Path) -> list[str]:
    """Everything under `path` (itself included) that its group or others can use."""
    found = [path, *path.rglob("*")]
    return [f"{p} {p.stat().st_mode & 0o777:o}" for p in found if p.stat().st_mode & 0o077]


@pytest.mark.integration
def test_data_dir_backup_and_restore_are_private_to_the_owner(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, inherited by the node: files would be 0644
    try:
        data = tmp_path / "data"
        with NodeProcess(data):
            pass
        assert (data / "lmdb" / "data.mdb").exists() and (data / "audit.log").exists()
        assert _loose(data) == []
        assert yanzi("backup", tmp_path / "backup", "--data-dir", data).returncode == 0
        assert _loose(tmp_path / "backup") == []
        (tmp_path / "backup" / "lmdb" / "data.mdb").chmod(0o644)  # e.g. an older backup
        assert yanzi("restore", tmp_path / "backup", "--data-dir", tmp_path / "r").returncode == 0
        assert _loose(tmp_path / "r") == []
    finally:
        os.umask(old)


def test_help_lists_the_commands() -> None:
    result = yanzi("--help")
    assert result.returncode == 0
    for command in ("up", "config", "backup", "restore"):
        assert command in result.stdout
