"""``msession farm``: a local farm of N nodes on this machine, stopped cleanly.

Node ``i`` (1-based) runs ``python -m node.cli serve --name node<i> --bind IP_i
--port PORT --gossip-port GPORT [--seeds ...]`` where ``IP_i`` is the base address
plus ``i - 1``: every node has its own loopback address (Linux routes all of
127.0.0.0/8 to ``lo``), so all of them can use the same ports. Node 1 starts
without seeds; the others seed to node 1 and, with more than two nodes, to node 2
as well, so either one alive suffices to join.

The launcher waits until every node listens and every node sees N members alive,
prints one line per node and ``MSESSION_NODES=...``, then runs until SIGINT,
SIGTERM or SIGHUP, or until a node dies on its own (reported, with its last log
lines; exit status 1). Stopping is SIGTERM to every node, up to 10 s, then SIGKILL.

The nodes run in their own session (a Ctrl-C at the terminal reaches only the
launcher, which then stops them) and with ``PR_SET_PDEATHSIG``, so they die with
the launcher even when it is SIGKILLed.
"""

from __future__ import annotations

import collections
import ctypes
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from protocol.client import Client, MsessionError

from .config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent  # the directory holding node/, protocol/, cluster/
READY = re.compile(r"msession listening on (\S+):(\d+)")
START_TIMEOUT = 20.0  # seconds until every node listens and node 1 sees them all alive
STOP_TIMEOUT = 10.0  # seconds a node has after SIGTERM before SIGKILL
# Options the launcher decides for every node: not taken from our environment.
FARM_OWNED_ENV = ("MSESSION_NAME", "MSESSION_BIND", "MSESSION_PORT", "MSESSION_GOSSIP_PORT",
                  "MSESSION_SEEDS", "MSESSION_ADVERTISE")


def converged(views: list[dict], names: set[str]) -> str | None:
    """None when every STATUS answer in ``views`` shows exactly ``names``
    alive and all show the same ring; else what is still missing."""
    for view in views:
        alive = {m.get("name") for m in view.get("members", []) if m.get("state") == "alive"}
        if alive != names:
            return f"{view.get('name')} sees {len(alive)} of {len(names)} alive ({', '.join(sorted(map(str, alive))) or 'none'})"
    rings = {view.get("ring") for view in views}
    return None if len(rings) <= 1 else f"{len(rings)} different rings"


class FarmError(Exception):
    """The farm cannot start or went wrong; the message says what and why."""


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG).
    The benchmark and the tests use it too."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def node_addresses(base_ip: str, count: int) -> list[str]:
    """``count`` consecutive addresses from ``base_ip``, all inside 127.0.0.0/8."""
    if count < 1:
        raise FarmError(f"--nodes must be at least 1, not {count}")
    try:
        first = ipaddress.IPv4Address(base_ip)
    except ValueError:
        raise FarmError(f"--base-ip {base_ip!r} is not an IPv4 address") from None
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    last = int(first) + count - 1
    if first not in loopback or first == loopback.network_address or last >= int(loopback.broadcast_address):
        raise FarmError(
            f"--base-ip {base_ip} with {count} nodes leaves 127.0.0.0/8: the farm launcher runs "
            "nodes on this machine only; on real hosts run one 'msession serve' per host (see docs/farm.md)"
        )
    return [str(ipaddress.IPv4Address(int(first) + i)) for i in range(count)]


def node_commands(ips: list[str], port: int, gossip_port: int, extra: list[str]) -> list[list[str]]:
    """The ``serve`` command line of every node (without the interpreter)."""
    gossip = [f"{ip}:{gossip_port}" for ip in ips]
    commands = []
    for i, ip in enumerate(ips):
        seeds = [] if i == 0 else gossip[:2] if i > 1 else gossip[:1]
        cmd = ["serve", "--name", f"node{i + 1}", "--bind", ip, "--port", str(port),
               "--gossip-port", str(gossip_port)]
        if seeds:
            cmd += ["--seeds", ",".join(seeds)]
        commands.append(cmd + list(extra))
    return commands


class _Output:
    """Our stderr, shared by the reader threads: whole lines only."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


class FarmNode:
    """One ``msession serve`` child; a thread copies its stderr to ours, prefixed."""

    def __init__(self, name: str, ip: str, port: int, gossip_port: int, args: list[str], out: _Output):
        self.name = name
        self.ip = ip
        self.gossip = f"{ip}:{gossip_port}"
        self.address = f"{ip}:{port}"  # replaced by the address the node says it listens on
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._out = out
        env = {k: v for k, v in os.environ.items() if k not in FARM_OWNED_ENV}
        # Children import the same code as the launcher, wherever they are started from.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *args],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._copy_stderr, name=f"farm-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _copy_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            if not self.ready.is_set():
                m = READY.search(line)
                if m:
                    self.address = f"{m.group(1)}:{m.group(2)}"
                    self.ready.set()
            self._out.line(f"{self.name}: {line}")
        self.closed.set()

    def exited(self) -> int | None:
        return self.proc.poll()

    def last_lines(self, n: int = 10) -> str:
        # The reader may still be copying the dying node's last words.
        self.closed.wait(1.0)
        lines = list(self.tail)[-n:]
        return "\n".join(f"  {self.name}: {line}" for line in lines) or f"  ({self.name} wrote nothing)"

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def finish(self) -> None:
        self._reader.join(2.0)
        if not self._reader.is_alive():
            self.proc.stderr.close()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Farm:
    def __init__(self, count: int, base_ip: str, port: int, gossip_port: int, extra: list[str],
                 out: _Output | None = None, start_timeout: float = START_TIMEOUT):
        if not 1 <= gossip_port <= 65535:
            raise FarmError(f"--gossip-port must be 1..65535 (the nodes seed to it), not {gossip_port}")
        try:  # the rest is what every node checks of its ports: refused here, before any starts
            Config(port=port, gossip_port=gossip_port).validate()
        except ConfigError as exc:
            raise FarmError(str(exc)) from None
        self.ips = node_addresses(base_ip, count)
        self.port = port
        self.gossip_port = gossip_port
        self.extra = extra
        self.out = out or _Output()
        self.start_timeout = start_timeout
        self.nodes: list[FarmNode] = []
        self.stop_signal: int | None = None
        self._wake = threading.Event()

    # -- signals ----------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        self._wake.set()

    def _install_signals(self) -> dict:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    def _check(self) -> None:
        """Raises if asked to stop or a node died."""
        if self.stop_signal is not None:
            raise _Stopped()
        for node in self.nodes:
            code = node.exited()
            if code is not None:
                raise FarmError(
                    f"{node.name} (pid {node.pid}, {node.address}) {_describe_exit(code)}; its last lines:\n"
                    + node.last_lines()
                )

    # -- start ----------------------------------------------------------------------
    def start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        commands = node_commands(self.ips, self.port, self.gossip_port, self.extra)
        for i, (ip, command) in enumerate(zip(self.ips, commands)):
            self.nodes.append(FarmNode(f"node{i + 1}", ip, self.port, self.gossip_port, command, self.out))
            if i == 0:  # node 1 first, so the others find their seed up when they join
                self._wait_listening(self.nodes[0], deadline)
        for node in self.nodes[1:]:
            self._wait_listening(node, deadline)
        self._wait_members(deadline)

    def _wait_listening(self, node: FarmNode, deadline: float) -> None:
        while not node.ready.wait(0.05):
            self._check()
            if time.monotonic() > deadline:
                raise FarmError(f"{node.name} did not start listening within {self.start_timeout:g} s; "
                                "its last lines:\n" + node.last_lines())

    def _sees_all(self, node: FarmNode) -> str | None:
        """None when ``node`` sees every node alive, else what it sees."""
        try:
            with Client(nodes=[node.address], timeout=2.0, connect_timeout=1.0) as client:
                status = client.status()
        except MsessionError as exc:
            return f"STATUS failed: {exc}"
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            return f"STATUS failed: {exc!r}"
        return converged([status], {n.name for n in self.nodes})

    def _wait_members(self, deadline: float) -> None:
        """Until node 1, then every other node, sees all of them alive."""
        for node in self.nodes:
            while (seen := self._sees_all(node)) is not None:
                self._check()
                if time.monotonic() > deadline:
                    raise FarmError(f"{node.name} ({node.address}) does not see all {len(self.nodes)} members "
                                    f"alive within {self.start_timeout:g} s: {seen}")
                self._wake.wait(0.2)

    # -- stop -----------------------------------------------------------------------
    def stop(self) -> list[str]:
        """SIGTERM every node, SIGKILL those still running after STOP_TIMEOUT; returns problems."""
        running = {node.name for node in self.nodes if node.exited() is None}
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        problems = []
        for node in self.nodes:
            was_running = node.name in running
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.signal(signal.SIGKILL)
                node.proc.wait()
                problems.append(f"{node.name} (pid {node.pid}) did not stop within {STOP_TIMEOUT:g} s: killed")
            else:
                code = node.proc.returncode
                if was_running and code not in (0, -signal.SIGTERM):
                    problems.append(f"{node.name} (pid {node.pid}) {_describe_exit(code)} while stopping")
            node.finish()
        return problems

    # -- run ------------------------------------------------------------------------
    def run(self, stdout=None) -> int:
        stdout = stdout or sys.stdout
        old = self._install_signals()
        status = 0
        try:
            try:
                self.start()
                width = max(len(n.name) for n in self.nodes)
                for node in self.nodes:
                    print(f"{node.name:<{width}}  {node.address}  gossip {node.gossip}  pid {node.pid}", file=stdout)
                print("MSESSION_NODES=" + ",".join(n.address for n in self.nodes), file=stdout, flush=True)
                self.out.line(f"msession farm: {len(self.nodes)} nodes up; Ctrl-C or SIGTERM stops them")
                while True:
                    self._check()
                    self._wake.wait(0.2)
            except _Stopped:
                name = signal.Signals(self.stop_signal).name
                self.out.line(f"msession farm: received {name}: stopping {len(self.nodes)} nodes")
            except FarmError as exc:
                self.out.line(f"msession farm: {exc}")
                status = 1
            problems = self.stop()
            for problem in problems:
                self.out.line(f"msession farm: {problem}")
            if problems:
                status = 1
            elif status == 0:
                self.out.line("msession farm: all nodes stopped")
            return status
        finally:
            for node in self.nodes:  # whatever happened above, leave no node running
                if node.exited() is None:
                    node.signal(signal.SIGKILL)
                    node.proc.wait()
            for sig, handler in old.items():
                signal.signal(sig, handler)


class _Stopped(Exception):
    pass


def main(ns) -> int:
    """Entry point from ``msession farm`` (``ns`` from node.cli's parser)."""
    try:
        farm = Farm(ns.nodes, ns.base_ip, ns.port, ns.gossip_port, ns.serve_args)
    except FarmError as exc:
        print(f"msession farm: {exc}", file=sys.stderr)
        return 2
    return farm.run()
