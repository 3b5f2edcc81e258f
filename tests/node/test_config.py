"""NodeConfig: TOML file, then YANZI_* environment, then explicit overrides; validated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.config import ConfigError, NodeConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "yanzi.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_frozen() -> None:
    config = load_config(environ={})
    assert config == NodeConfig()
    assert config.port == 8080 and config.host == "127.0.0.1" and config.fsync is True
    assert config.recall_window_s == 120
    assert config.url == "http://127.0.0.1:8080"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_toml_file_top_level_and_node_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'port = 9000\nhost = "0.0.0.0"\ndata_dir = "/srv/yanzi"\nfsync = false\n'
        "rate_per_s = 5\nheartbeat_s = 2.5\n",
    )
    config = load_config(path, environ={})
    assert config.port == 9000 and config.host == "0.0.0.0"
    assert config.data_dir == Path("/srv/yanzi") and config.fsync is False
    assert config.rate_per_s == 5.0 and isinstance(config.rate_per_s, float)
    assert config.heartbeat_s == 2.5

    tabled = write(tmp_path, '[node]\nregion = "eu-west"\npublic_url = "https://chat.example"\n')
    config = load_config(tabled, environ={})
    assert config.region == "eu-west" and config.url == "https://chat.example"


def test_a_node_table_and_top_level_keys_together_are_refused(tmp_path: Path) -> None:
    mixed = write(tmp_path, 'port = 9000\ndata_dir = "/srv/yanzi"\n[node]\nregion = "eu"\n')
    with pytest.raises(ConfigError, match="top-level keys") as err:
        load_config(mixed, environ={})
    assert "data_dir, port" in str(err.value)
    # [federation] beside [node] is fine: it is another package's table.
    both = write(tmp_path, '[node]\nregion = "eu"\n[federation]\nae_interval_s = 5.0\n')
    assert load_config(both, environ={}).region == "eu"


def test_environment_overrides_the_file_and_explicit_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9000\nsend_queue = 10\n")
    env = {
        "YANZI_PORT": "9100",
        "YANZI_FSYNC": "off",
        "YANZI_RATE_PER_S": "2.5",
        "YANZI_DATA_DIR": "/tmp/x",
        "YANZI_NOT_A_FIELD": "ignored",  # only known fields are read from the environment
        "PORT": "1",
    }
    config = load_config(path, environ=env)
    assert (config.port, config.send_queue, config.fsync) == (9100, 10, False)
    assert config.rate_per_s == 2.5 and config.data_dir == Path("/tmp/x")
    config = load_config(path, environ=env, port=0, host=None)
    assert config.port == 0 and config.host == "127.0.0.1"  # None means "not given"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("off", False)],
)
def test_boolean_spellings(raw: str, value: bool) -> None:
    assert load_config(environ={"YANZI_FSYNC": raw}).fsync is value


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YANZI_REGION", "from-env")
    assert load_config().region == "from-env"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"YANZI_PORT": "70000"}, "port"),
        ({"YANZI_PORT": "-1"}, "port"),
        ({"YANZI_PORT": "eighty"}, "port"),
        ({"YANZI_PORT": "80.5"}, "port"),
        ({"YANZI_SEND_QUEUE": "0"}, "send_queue"),
        ({"YANZI_RATE_PER_S": "-1"}, "rate_per_s"),
        ({"YANZI_RATE_PER_S": "nan"}, "rate_per_s"),
        ({"YANZI_HEARTBEAT_S": "inf"}, "heartbeat_s"),
        ({"YANZI_TOKEN_TTL_S": "0"}, "token_ttl_s"),
        ({"YANZI_FSYNC": "maybe"}, "fsync"),
        ({"YANZI_MAX_BODY_BYTES": "70000"}, "max_body_bytes"),
        ({"YANZI_MAX_FRAME_BYTES": "1000"}, "max_frame_bytes"),
        ({"YANZI_RECALL_WINDOW_S": "-5"}, "recall_window_s"),
        ({"YANZI_PWHASH_LEVEL": "fast"}, "pwhash_level"),
        ({"YANZI_LOG_LEVEL": "chatty"}, "log_level"),
        ({"YANZI_GC_FREEZE_INTERVAL_S": "-1"}, "gc_freeze_interval_s"),
        ({"YANZI_GC_FREEZE_INTERVAL_S": "inf"}, "gc_freeze_interval_s"),
        ({"YANZI_GC_FULL_INTERVAL_S": "0"}, "gc_full_interval_s"),
    ],
)
def test_invalid_values_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("port = 8080.9", "port"),  # not silently truncated to 8080
        ("port = true", "port"),
        ("rate_per_s = true", "rate_per_s"),
        ('fsync = "sometimes"', "fsync"),
        ("fsync = 1", "fsync"),
        ('host = ["a", "b"]', "host"),
        ("region = 5", "region"),
        ("data_dir = 5", "data_dir"),
        ("send_queue = -3", "send_queue"),
    ],
)
def test_invalid_toml_values_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), environ={})
    assert field in str(info.value)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prot"):
        load_config(write(tmp_path, "prot = 8080\n"), environ={})
    with pytest.raises(ConfigError, match="colour"):
        load_config(write(tmp_path, '[node]\ncolour = "red"\n'), environ={})
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(environ={}, nonsense=1)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "port = = 1\n"), environ={})
    with pytest.raises(ConfigError, match="node"):
        load_config(write(tmp_path, "node = 5\n"), environ={})


def test_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="max_errors_per_session"):
        NodeConfig(max_errors_per_session=0)
    config = NodeConfig(port=0)
    assert config.replace(port=1).port == 1
    with pytest.raises(ConfigError, match="port"):
        config.replace(port=-1)
    assert NodeConfig(data_dir="rel/dir").data_dir == Path("rel/dir")  # type: ignore[arg-type]
