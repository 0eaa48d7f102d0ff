"""The ``msession`` command: run a node, or call any contract function from a shell.

    msession serve [--bind 127.0.0.1] [--port 8086] [--config FILE]
                   [--name NAME] [--gossip-port 7946] [--seeds HOST:GOSSIP_PORT,...]
    msession status [--node HOST:PORT] [--json]
    msession farm --nodes N [--base-ip 127.0.0.11] [--port 8086] [--gossip-port 7946] [-- SERVE ARGS]
    msession [--node HOST:PORT[,HOST:PORT...]] [--json] COMMAND ARGS...
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
from typing import Any

from protocol.client import Client, MsessionError, as_text
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
    c = p.add_argument_group("cluster (see docs/farm.md)")
    c.add_argument("--name", help="this member's unique name (default <hostname>-<address>:<port>)")
    c.add_argument(
        "--gossip-port", type=int,
        help="UDP and TCP port for membership gossip (default 7946; 0 picks a free one; -1 runs a standalone node)",
    )
    c.add_argument(
        "--seeds", action="append", metavar="HOST:PORT,...",
        help="other members' GOSSIP addresses (host:gossip_port, not their client port) to join "
        "through; comma-separated or repeated; any one alive suffices",
    )
    c.add_argument("--advertise", metavar="ADDR", help="address other members reach this node at (default: --bind)")
    c.add_argument("--forward-timeout", type=float, metavar="SECONDS",
                   help="seconds a request forwarded to the owning member may take (5)")


def _add_status(sub) -> None:
    p = sub.add_parser(
        "status", help="the farm's members and ring as one node sees them",
        description="Print the members (name, address, state, incarnation, partitions, sessions) "
        "and a ring summary, as the asked node sees them.",
    )
    p.add_argument("--node", dest="status_node", action="append", metavar="HOST:PORT",
                   help="the node to ask (default $MSESSION_NODES or 127.0.0.1:8086)")
    p.add_argument("--json", dest="status_json", action="store_true", help="print the status map as JSON")


def _add_farm(sub) -> None:
    p = sub.add_parser(
        "farm", help="run a local farm of N nodes on this machine",
        description="Start N nodes on consecutive loopback addresses (base-ip, base-ip+1, ...), all on the "
        "same ports, node 1 as the seed; print MSESSION_NODES=...; stop them all on SIGINT or SIGTERM. "
        "Arguments after '--' go to every 'msession serve'.",
    )
    p.add_argument("--nodes", type=int, required=True, metavar="N", help="number of nodes")
    p.add_argument("--base-ip", default="127.0.0.11", help="first node's address, in 127.0.0.0/8 (127.0.0.11)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"every node's client port ({DEFAULT_PORT})")
    p.add_argument("--gossip-port", type=int, default=7946, help="every node's gossip port (7946)")
    p.add_argument("serve_args", nargs="*", metavar="-- SERVE ARGS", help="more 'msession serve' arguments")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msession",
        description="msession: a session server for web farms. Run a node with 'msession serve' "
        "(a local farm with 'msession farm --nodes 3', shown by 'msession status'), "
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
    _add_status(sub)
    _add_farm(sub)
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


def serve_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The config options ``serve``'s flags set (None: not given)."""
    seeds = None
    if ns.seeds is not None:  # comma-separated, repeatable; "" gives an empty list
        seeds = [s.strip() for spec in ns.seeds for s in spec.split(",") if s.strip()]
    return {
        "bind": ns.bind, "port": ns.port, "session_timeout": ns.session_timeout,
        "max_connections": ns.max_connections, "max_frame": ns.max_frame,
        "plugins": ns.plugins, "log_level": ns.log_level,
        "name": ns.name, "gossip_port": ns.gossip_port, "seeds": seeds,
        "advertise": ns.advertise, "forward_timeout": ns.forward_timeout,
    }


def serve(ns: argparse.Namespace) -> int:
    import trio

    from .server import main_async

    try:
        cfg = config_mod.load(ns.config, overrides=serve_overrides(ns))
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


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def status_table(status: dict[str, Any]) -> str:
    """``msession status``'s text: a member table, then one ring summary line."""
    members = status.get("members") or []
    header = ["NAME", "NODE", "GOSSIP", "STATE", "INC", "PARTS", "SHARE", "SESSIONS"]
    right = {"INC", "PARTS", "SHARE", "SESSIONS"}
    rows = [header]
    for m in members:
        sessions = m.get("sessions")
        rows.append([
            str(m.get("name", "")), str(m.get("node") or "-"), str(m.get("gossip") or "-"),
            str(m.get("state", "?")), str(m.get("incarnation", "")), str(m.get("partitions", 0)),
            _pct(m.get("share") or 0.0), "?" if sessions is None else str(sessions),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if header[i] in right else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    states = collections.Counter(m.get("state") for m in members)
    counted = [m["sessions"] for m in members if m.get("sessions") is not None]
    unasked = [str(m.get("name", "?")) for m in members if m.get("sessions") is None]
    sessions = f"{sum(counted)} sessions"
    if unasked:
        sessions = f"at least {sum(counted)} sessions ({', '.join(unasked)} not counted)"
    seen_by = f"seen by {status.get('name') or '?'} ({status.get('node') or '?'})"
    if not status.get("cluster"):
        if not members:  # a standalone node lists no members: no table
            return f"standalone node {status.get('name') or '?'} ({status.get('node') or '?'}): no gossip, no ring\n"
        lines.append(f"standalone node {seen_by}: no gossip, no ring; {sessions}")
        return "\n".join(lines) + "\n"
    total = status.get("partitions", 0)
    owners = [m.get("partitions") or 0 for m in members
              if (m.get("partitions") or 0) > 0 or m.get("state") in ("alive", "suspect")]
    assigned = sum(owners)
    load = f"load max/avg {max(owners) / (assigned / len(owners)):.2f}" if assigned else "load n/a"
    parts = f"{total} partitions" + (f" ({total - assigned} unassigned)" if assigned != total else "")
    summary = (
        f"ring {status.get('ring', '?')} {seen_by}: {parts}, {len(members)} member{'' if len(members) == 1 else 's'} "
        f"({states['alive']} alive, {states['suspect']} suspect, {states['dead']} dead, {states['left']} left), "
        f"{sessions}, {load}"
    )
    if status.get("health"):
        summary += f", local health {status['health']} (this node is slow: its timeouts are stretched)"
    lines.append(summary)
    return "\n".join(lines) + "\n"


def _nodes_from(specs: list[str] | None) -> list[str]:
    specs = specs or [os.environ.get("MSESSION_NODES") or os.environ.get("MSESSION_NODE") or f"127.0.0.1:{DEFAULT_PORT}"]
    return [n.strip() for spec in specs for n in spec.split(",") if n.strip()]


def status(ns: argparse.Namespace) -> int:
    nodes = _nodes_from(ns.status_node or ns.node)
    as_json = ns.json or ns.status_json
    try:
        with Client(nodes=nodes, timeout=ns.timeout) as client:
            answer = client.status()
    except MsessionError as exc:
        where = ",".join(nodes)
        if exc.code == "UNKNOWN":
            message = f"{where} does not know STATUS (a node older than the cluster?)"
        elif exc.code == "NOCONNECT":
            message = f"cannot reach {where}: {exc.message}"
        else:
            message = f"{where} answered {exc.code}" + (f": {exc.message}" if exc.message else "")
        if as_json:  # as every command's errors with --json, for tools
            print(json.dumps({"error": exc.code, "message": message}))
        print(f"msession status: {message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad HOST:PORT
        print(f"msession status: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(answer))  # Client.status already gives str names and strings
    elif not isinstance(answer, dict):
        print(f"msession status: unexpected answer {answer!r}", file=sys.stderr)
        return 1
    else:
        sys.stdout.write(status_table(answer))
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    command = ns.command.replace("-", "_")
    if command == "serve":
        return serve(ns)
    if command == "status":
        return status(ns)
    if command == "farm":
        from . import farm

        return farm.main(ns)
    nodes = _nodes_from(ns.node)
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
        print(json.dumps(as_text(result)))
    else:
        sys.stdout.buffer.write(_plain(result))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
