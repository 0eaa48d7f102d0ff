"""The ``msession`` command: run a node, or call any contract function from a shell.

    msession serve [--bind 127.0.0.1] [--port 8086] [--config FILE]
    msession [--node HOST:PORT[,HOST:PORT...]] [--json] COMMAND ARGS...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from protocol.client import Client, MsessionError
from protocol.constants import DEFAULT_PORT

from . import config as config_mod
from .plugins import PluginError

# name: (argument names, help). A name ending in "?" is optional, "*" takes the rest.
COMMANDS: dict[str, tuple[list[str], str]] = {
    "ping": ([], "check that the node answers"),
    "count": ([], "number of live sessions"),
    "info": ([], "the node's counters (sessions, connections, commands, errors)"),
    "create": (["session", "classname?", "data?"], "create a session (DUPSESSION if it exists)"),
    "destroy": (["session"], "destroy a session"),
    "set": (["session", "name", "value"], "set a variable"),
    "get": (["session", "name", "default?"], "get a variable (default when absent)"),
    "get_array": (["session"], "all variables of a session"),
    "set_array": (["session", "pairs*"], "set several variables atomically: NAME=VALUE ..."),
    "getdata": (["session"], "the session's opaque data"),
    "setdata": (["session", "data"], "set the session's opaque data (creates the session)"),
    "inc": (["session", "name", "delta?"], "increment a variable, print the new value"),
    "find": (["name", "value"], "sessions whose variable NAME equals VALUE"),
    "list": ([], "all session ids"),
    "listvar": (["name"], "session => value for every session with variable NAME"),
    "lock": (["session", "wait?", "lease?"], "lock a session (wait and lease in seconds), print the key"),
    "unlock": (["session", "key"], "unlock a session with its key"),
    "timeout": (["session", "seconds?"], "get or set the inactivity timeout"),
    "uniq": (["num_chars", "classname?", "data?"], "create a session under a fresh random id"),
    "randstr": (["num_chars"], "a random string"),
    "plugin": (["session", "val", "param?"], "call the personality plugin's escape function"),
    "call": (["fn_name", "params*"], "call a plugin function (up to 4 parameters)"),
    "ctl": (["session", "which?"], "EXIST, TTL, AGE, TLA, CTIME, TOUCH or NOW"),
}
INT_ARGS = {"num_chars", "seconds", "key", "delta"}
FLOAT_ARGS = {"wait", "lease"}


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run a node", description="Run an msession node until SIGTERM or SIGINT.")
    p.add_argument("--config", default=os.environ.get("MSESSION_CONFIG"), help="TOML config file")
    p.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--session-timeout", type=int, help="default inactivity timeout in seconds (1440)")
    p.add_argument("--max-connections", type=int, help="connections served at once (10000)")
    p.add_argument("--max-frame", type=int, help="largest frame in bytes (4 MiB)")
    p.add_argument("--plugin", action="append", dest="plugins", help="load a plugin (repeatable)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msession",
        description="msession: a session server for web farms. Run a node with 'msession serve', "
        "or call any contract function, e.g. 'msession list', 'msession get SID name'.",
    )
    parser.add_argument(
        "--node", action="append",
        help="node(s) to ask, HOST:PORT, comma-separated or repeated; tried in order "
        "(default $MSESSION_NODES or 127.0.0.1:8086)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_serve(sub)
    for name, (argnames, help_text) in COMMANDS.items():
        aliases = [name.replace("_", "-")] if "_" in name else []
        p = sub.add_parser(name, aliases=aliases, help=help_text, description=help_text)
        for arg in argnames:
            bare = arg.rstrip("?*")
            kind = float if bare in FLOAT_ARGS else int if bare in INT_ARGS else str
            nargs = "?" if arg.endswith("?") else "*" if arg.endswith("*") else None
            p.add_argument(bare, nargs=nargs, type=kind)
    return parser


def _call(client: Client, command: str, ns: argparse.Namespace) -> Any:
    argnames = [a.rstrip("?*") for a in COMMANDS[command][0]]
    values = {a: getattr(ns, a) for a in argnames}
    if command == "set_array":
        pairs = {}
        for item in values["pairs"]:
            if "=" not in item:
                raise SystemExit(f"msession set_array: expected NAME=VALUE, got {item!r}")
            k, _, v = item.partition("=")
            pairs[k] = v
        return client.set_array(values["session"], pairs)
    if command == "call":
        return client.call(values["fn_name"], *values["params"])
    if command == "get":
        return client.get(values["session"], values["name"], values["default"])
    args = [values[a] for a in argnames]
    while args and args[-1] is None:
        args.pop()
    if command == "ctl" and len(args) == 2:
        args[1] = args[1].upper()
    return getattr(client, command)(*args)


def _plain(value: Any) -> bytes:
    if value is None:
        return b""
    if value is True:
        return b"OK\n"
    if isinstance(value, bytes):
        return value + b"\n"
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape") + b"\n"
    if isinstance(value, list):
        return b"".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return b"".join(_plain(k).rstrip(b"\n") + b"\t" + _plain(v) for k, v in value.items())
    return str(value).encode() + b"\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_jsonable(k): _jsonable(v) for k, v in value.items()}
    return value


def serve(ns: argparse.Namespace) -> int:
    import trio

    from .server import main_async

    overrides = {
        "bind": ns.bind, "port": ns.port, "session_timeout": ns.session_timeout,
        "max_connections": ns.max_connections, "max_frame": ns.max_frame,
        "plugins": ns.plugins, "log_level": ns.log_level,
    }
    try:
        cfg = config_mod.load(ns.config, overrides=overrides)
    except config_mod.ConfigError as exc:
        print(f"msession: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(main_async, cfg)
    except PluginError as exc:  # a plugin that cannot load: say which, not a traceback
        print(f"msession: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    command = ns.command.replace("-", "_")
    if command == "serve":
        return serve(ns)
    nodes = ns.node or [os.environ.get("MSESSION_NODES") or os.environ.get("MSESSION_NODE") or f"127.0.0.1:{DEFAULT_PORT}"]
    nodes = [n for spec in nodes for n in spec.split(",") if n.strip()]
    try:
        with Client(nodes=nodes, timeout=ns.timeout) as client:
            result = _call(client, command, ns)
    except MsessionError as exc:
        if ns.json:
            print(json.dumps({"error": exc.code, "message": exc.message}))
        else:
            print(f"msession: {exc.code}: {exc.message}" if exc.message else f"msession: {exc.code}", file=sys.stderr)
        return 1
    except (TypeError, ValueError, KeyError) as exc:
        print(f"msession {command}: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(_jsonable(result)))
    else:
        sys.stdout.buffer.write(_plain(result))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
