"""The node's one configuration object: frozen, keyword-only, validated on construction.

Loaded once (TOML file, then `YANZI_<FIELD>` environment overrides) by the CLI and passed down.
Every limit a client can hit is here and documented in docs/operations.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from node.errors import NodeError
from node.logs import FORMATS as LOG_FORMATS

_C = TypeVar("_C")


class ConfigError(NodeError, ValueError):
    """The configuration is invalid; the message says which field and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    data_dir: Path = Path("./yanzi-data")
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "local"
    public_url: str = ""  # how clients reach this node; defaults to http://host:port
    # storage
    map_size_mb: int = 64
    fsync: bool = True
    max_commit_batch: int = 1024
    # protocol limits
    max_frame_bytes: int = 128 * 1024
    max_body_bytes: int = 64 * 1024
    max_sync_page: int = 500
    max_history_page: int = 200
    # sessions
    auth_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    idle_timeout_s: float = 120.0
    send_queue: int = 1024
    rate_per_s: float = 50.0
    rate_burst: int = 200
    max_errors_per_session: int = 100
    # accounts
    token_ttl_s: int = 30 * 24 * 3600
    min_password_len: int = 8
    register_open: bool = True
    pwhash_level: str = "interactive"  # argon2id cost: "interactive", "moderate" or "min" (tests)
    # messaging policy
    recall_window_s: int = 120
    require_device_signatures: bool = False
    max_clock_drift_ms: int = 60_000
    max_group_members: int = 10_000
    log_level: str = "INFO"
    log_format: str = "text"  # "text" (one readable line per event) or "json" (one object each)
    # garbage collection (node/gc_policy.py); gc_freeze_interval_s = 0: CPython's defaults
    gc_freeze_interval_s: float = 1.0
    gc_full_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {self.port}")
        positive = (
            "map_size_mb",
            "max_commit_batch",
            "max_frame_bytes",
            "max_body_bytes",
            "max_sync_page",
            "max_history_page",
            "auth_timeout_s",
            "heartbeat_s",
            "idle_timeout_s",
            "send_queue",
            "rate_per_s",
            "rate_burst",
            "max_errors_per_session",
            "token_ttl_s",
            "min_password_len",
            "max_group_members",
            "gc_full_interval_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):  # `not >` also catches NaN
                raise ConfigError(f"{name} must be a finite number > 0, not {value}")
        if self.max_body_bytes > 64 * 1024:
            raise ConfigError("max_body_bytes cannot exceed the op format's 65536")
        if self.max_frame_bytes < self.max_body_bytes * 4 // 3 + 1024:
            raise ConfigError("max_frame_bytes must fit a base64 body of max_body_bytes")
        if self.recall_window_s < 0 or self.max_clock_drift_ms < 0:
            raise ConfigError("recall_window_s and max_clock_drift_ms must be >= 0")
        if not (self.gc_freeze_interval_s >= 0 and math.isfinite(self.gc_freeze_interval_s)):
            value = self.gc_freeze_interval_s
            raise ConfigError(f"gc_freeze_interval_s must be a finite number >= 0, not {value}")
        if self.pwhash_level not in {"interactive", "moderate", "min"}:
            raise ConfigError(
                f"pwhash_level must be interactive/moderate/min, not {self.pwhash_level}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be text or json, not {self.log_format}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"log_level must be DEBUG/INFO/WARNING/ERROR, not {self.log_level}")

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    target = kind if isinstance(kind, type) else {"Path": Path}.get(str(kind))
    if target is None:
        target = {"int": int, "float": float, "bool": bool, "str": str}.get(str(kind), str)
    if target is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return raw.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{name} must be a boolean, not {raw!r}")
    # TOML has real types: refuse what the constructors below would silently bend
    # (int(8080.9) == 8080, float(True) == 1.0, str(["a"]) == "['a']").
    if target in (int, float) and isinstance(raw, bool):
        raise ConfigError(f"{name} must be a number, not {raw!r}")
    if target is int and isinstance(raw, float):
        raise ConfigError(f"{name} must be an integer, not {raw!r}")
    if target in (str, Path) and not isinstance(raw, str | Path):
        raise ConfigError(f"{name} must be a string, not {raw!r}")
    if target is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    try:
        return target(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be {target.__name__}, not {raw!r}") from exc


def read_toml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc


def build_config(
    cls: type[_C],
    section: object,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
    what: str,
) -> _C:
    """One package's frozen config: TOML table, then `<env_prefix><FIELD>` env, then overrides.

    Shared by every package's config loader so they all coerce and refuse alike.
    """
    if not isinstance(section, dict):
        raise ConfigError(f"{what} must be a table ([{what}]), not {section!r}")
    values: dict[str, Any] = dict(section)
    env = os.environ if environ is None else environ
    known = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
    for name in known:
        key = f"{env_prefix}{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} config keys: {', '.join(unknown)}")
    coerced = {name: _coerce(name, known[name], value) for name, value in values.items()}
    try:
        return cls(**coerced)
    except ValueError as exc:  # a package's own config error (e.g. FederationConfigError)
        raise ConfigError(str(exc)) from exc


OTHER_TABLES = frozenset({"federation"})


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> NodeConfig:
    """TOML file ([node] table, or top-level keys), then YANZI_* env, then explicit overrides."""
    raw = read_toml(path)
    top_level = {k: v for k, v in raw.items() if k not in OTHER_TABLES and k != "node"}
    if "node" in raw and top_level:
        # Reading only [node] would drop these without a word (a port or data_dir the operator
        # believes is set); refuse the mix instead.
        raise ConfigError(
            f"config {path} has a [node] table and top-level keys ({', '.join(sorted(top_level))}):"
            " put every node field in [node], or none"
        )
    section = raw.get("node", top_level)
    return build_config(
        NodeConfig, section, env_prefix="YANZI_", environ=environ, overrides=overrides, what="node"
    )
