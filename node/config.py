"""Node configuration: defaults < TOML file < MSESSION_* environment < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from protocol.constants import DEFAULT_MAX_FRAME, DEFAULT_PORT


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    """Frozen: a Node copies limits out of it for its quick argument paths, so
    a value changed under a running node would not be obeyed. A different
    configuration is a new Config (``dataclasses.replace``) and a new node.
    The freeze is shallow: the lists and dicts (``seeds``, ``plugins``,
    ``plugin_options``) are read once at start-up and must not be changed in
    place either."""

    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Sessions
    session_timeout: int = 1440  # seconds of inactivity, as PHP's session.gc_maxlifetime
    max_timeout: int = 365 * 86400
    max_id_len: int = 256
    max_name_len: int = 1024
    max_uniq_len: int = 256
    max_randstr_len: int = 65536
    # Locks
    lock_wait: float = 30.0  # default wait when a locker gives none
    max_lock_wait: float = 300.0
    lock_lease: float = 30.0  # default lease, as PHP's max_execution_time
    max_lock_lease: float = 3600.0
    # Connections
    max_connections: int = 10000
    max_frame: int = DEFAULT_MAX_FRAME
    idle_timeout: float = 600.0  # a connection with no request for this long is closed
    frame_timeout: float = 10.0  # a frame started must complete within this
    # Cluster (see docs/cluster.md). gossip_port -1 runs a standalone node.
    name: str = ""  # unique member name; default "<hostname>-<advertised address>:<port>"
    gossip_port: int = 7946  # UDP probes/gossip and TCP full-state sync; 0 picks a free port
    seeds: list[str] = field(default_factory=list)  # other members' gossip addresses, host:port
    advertise: str = ""  # the address members reach this node at; default: bind (or this host's address if bind is a wildcard)
    forward_timeout: float = 5.0  # seconds a forwarded request may take (waiting locks excepted)
    # Plugins
    plugins: list[str] = field(default_factory=list)
    plugin_options: dict[str, dict] = field(default_factory=dict)
    log_level: str = "info"

    def validate(self) -> "Config":
        positive = [
            "session_timeout", "max_timeout", "max_id_len", "max_name_len", "max_uniq_len",
            "max_randstr_len", "lock_lease", "max_lock_lease", "max_connections", "max_frame",
            "idle_timeout", "frame_timeout",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if not -1 <= self.gossip_port <= 65535:
            raise ConfigError(f"gossip_port must be 0..65535 (or -1 for a standalone node), not {self.gossip_port}")
        if self.gossip_port > 0 and self.gossip_port == self.port:
            raise ConfigError(f"gossip_port and port are both {self.port}: give each its own port")
        if self.forward_timeout <= 0:
            raise ConfigError("forward_timeout must be positive")
        if len(self.name) > 128 or any(c.isspace() for c in self.name):
            raise ConfigError(f"name must be at most 128 characters without spaces, not {self.name!r}")
        for seed in self.seeds:
            try:
                parse_seed(seed)
            except ValueError:
                raise ConfigError(f"seed {seed!r} must be host:port (a member's gossip address)") from None
        if self.lock_wait < 0 or self.max_lock_wait < 0:
            raise ConfigError("lock_wait and max_lock_wait must not be negative")
        for value, limit in (
            ("session_timeout", "max_timeout"), ("lock_wait", "max_lock_wait"),
            ("lock_lease", "max_lock_lease"), ("max_uniq_len", "max_id_len"),
        ):
            if getattr(self, value) > getattr(self, limit):
                raise ConfigError(f"{value} ({getattr(self, value)}) must not exceed {limit} ({getattr(self, limit)})")
        if self.max_frame < 1024:
            raise ConfigError("max_frame must be at least 1024 bytes")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        return self


def parse_seed(text: str) -> tuple[str, int]:
    """A seed's ``host:port`` as ``(host, port)``: an IPv6 host may be
    bracketed (``[::1]:7946`` gives ``::1``: one leading '[' with its matching
    trailing ']'), the port is 1..65535. ValueError for anything else (an
    unmatched or extra bracket included). Config validation and the cluster's
    resolver both use it."""
    host, sep, port = text.rpartition(":")
    if len(host) >= 2 and host[0] == "[" and host[-1] == "]":
        host = host[1:-1]
    if not sep or not host or "[" in host or "]" in host or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ValueError(f"seed {text!r} is not host:port")
    return host, int(port)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# MSESSION_* variables that are not node options, so a node started where they
# are set ignores them (any other unknown one is refused, to catch typos): the
# command line's (NODE, NODES, CONFIG) and the PHP session handler's settings
# (clients/php/src/SessionHandler.php) that a node does not have. The handler's
# LOCK_LEASE and LOCK_WAIT are node options too, with the same meaning (a
# lock's lease and wait when the request gives none): they set both.
NOT_NODE_OPTIONS = frozenset({
    "MSESSION_NODE", "MSESSION_NODES", "MSESSION_CONFIG",
    "MSESSION_MODE", "MSESSION_TIMEOUT", "MSESSION_ROUTE", "MSESSION_PERSISTENT", "MSESSION_SID_LENGTH",
})


def _coerce(name: str, value: Any) -> Any:
    if name not in FIELDS:
        raise ConfigError(f"unknown option {name!r}")
    default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else FIELDS[name].default_factory()
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError
            return value
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r}: cannot use {value!r}") from None


def load(path: str | None = None, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in data.items():
            values[key.replace("-", "_")] = _coerce(key.replace("-", "_"), value)
    env = os.environ if env is None else env
    for key, value in env.items():
        if key.startswith("MSESSION_") and key not in NOT_NODE_OPTIONS:
            name = key[len("MSESSION_"):].lower()
            values[name] = _coerce(name, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    return Config(**values).validate()
