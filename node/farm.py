"""Starting msession nodes as child processes, and ``msession farm``.

**The launcher** (``NodeChild``; used by ``msession farm``, the tests'
``tests/procs.py`` and the benchmarks' ``bench/servers.py``): ``serve_args``
builds a node's ``serve`` command line; a ``NodeChild`` runs it (``python -m
node.cli``, or a command of the caller's) in its own session (a Ctrl-C at the
terminal reaches only the parent, which then stops it) and with
``PR_SET_PDEATHSIG`` (``die_with_parent``), so it dies with its parent even when
that is SIGKILLed; a thread reads its stderr, keeps it (or its last lines) and
finds the lines that say where it listens (``msession listening on HOST:PORT``,
and ``gossip on HOST:PORT as NAME`` before it); ``wait_ready`` waits for them,
bounded; ``terminate`` stops processes by PID: a signal (SIGTERM), then SIGKILL
to those still running after a bound.

**``msession farm``** (``Farm``, ``main``): a local farm of N nodes on this
machine. Node ``i`` (1-based) runs ``python -m node.cli serve --name node<i>
--bind IP_i --port PORT --gossip-port GPORT [--seeds ...]`` where ``IP_i`` is the
base address plus ``i - 1``: every node has its own loopback address (Linux routes
all of 127.0.0.0/8 to ``lo``), so all of them can use the same ports. Node 1 starts
without seeds; the others seed to node 1 and, with more than two nodes, to node 2
as well, so either one alive suffices to join.

The launcher waits until every node listens and every node sees N members alive,
prints one line per node and ``MSESSION_NODES=...``, then runs until SIGINT,
SIGTERM or SIGHUP, or until a node dies on its own (reported, with its last log
lines; exit status 1). Stopping is SIGTERM to every node, up to 10 s, then SIGKILL.
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from protocol.client import Client, MsessionError

from .config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent  # the directory holding node/, protocol/, cluster/
READY = re.compile(r"msession listening on (\S+):(\d+)")
GOSSIP = re.compile(r"gossip on (\S+):(\d+) as (\S+)")  # logged before READY, by a node with gossip
START_TIMEOUT = 20.0  # seconds until every node listens and sees them all alive
STOP_TIMEOUT = 10.0  # seconds a node has after SIGTERM before SIGKILL
KILL_WAIT = 5.0  # seconds we wait for a SIGKILLed process to be gone
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


def wait_converged(addresses: Sequence[str], names: Iterable[str], timeout: float, *, interval: float = 0.05,
                   check: Callable[[], None] | None = None, sleep: Callable[[float], object] = time.sleep,
                   status_timeout: float = 2.0) -> str | None:
    """Polls STATUS of every node at ``addresses`` (HOST:PORT), a round at a time,
    until ``converged`` says None of their answers and ``names`` (None returned),
    or ``timeout`` seconds have passed (what is still missing returned). A STATUS
    that fails (MsessionError, OSError) is "not yet"; any other exception (a
    bad address, a bug) is raised. ``check`` is called before each STATUS and after a
    round that did not converge (it may raise: no more waiting); then
    ``sleep(interval)``. Bounded:
    returns within ``timeout`` + one round (at most ``status_timeout`` + 1 s a
    node) + ``interval``. Used by ``msession farm`` and the tests' farms."""
    names = set(names)
    deadline = time.monotonic() + timeout
    while True:
        views, missing = [], None
        for address in addresses:
            if check is not None:
                check()  # before each STATUS too: a stop or a dead node ends the wait at once
            try:
                with Client(nodes=[address], timeout=status_timeout, connect_timeout=1.0) as client:
                    views.append(client.status())
            except MsessionError as exc:  # the client's word for a node that does not answer (yet)
                missing = f"{address}: STATUS failed: {exc}"
                break
            except OSError as exc:
                missing = f"{address}: STATUS failed: {exc!r}"
                break
        else:
            missing = converged(views, names)
            if missing is None:
                return None
        if check is not None:
            check()
        if time.monotonic() > deadline:
            return missing
        sleep(interval)


class FarmError(Exception):
    """The farm cannot start or went wrong; the message says what and why."""


try:  # looked up here, not in the child: loading a library after fork in a threaded process can deadlock
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover (not Linux)
    _prctl = None
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """preexec_fn: ``sig`` (SIGKILL) to this process when its parent dies (Linux
    PR_SET_PDEATHSIG). Strictly: when the *thread* that forked it ends, so
    start children from a thread that lives as long as they should (the
    main thread, in the farm, the tests and the benchmark, which use it too).
    Only this process gets it, not the children it forks: see ``term_with_parent``."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def term_with_parent() -> None:
    """preexec_fn: SIGTERM, which it can catch, when its parent dies (else as
    ``die_with_parent``): for a supervisor that then stops the children it forked."""
    die_with_parent(signal.SIGTERM)


# -- the launcher -------------------------------------------------------------------------

def child_env(drop_msession: bool | Iterable[str] = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child process's environment: a copy of ours without the ``MSESSION_*``
    variables (every one when ``drop_msession`` is True; those it names when it
    is a list of names; none when False), then ``extra`` set. Changes nothing."""
    if drop_msession is True:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSESSION_")}
    else:
        dropped = set(drop_msession or ())
        env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra or {})
    return env


def serve_args(*, name: str | None = None, bind: str = "127.0.0.1", port: int = 0, gossip_port: int | None = 0,
               seeds: Iterable[str] = (), extra: Iterable[str] = ()) -> list[str]:
    """A node's ``serve`` command line (without the interpreter): ``--name`` when
    given, ``--bind``, ``--port``, ``--gossip-port`` unless None (the node's
    default then, or one in ``extra``), ``--seeds`` when there are any, then ``extra``."""
    args = ["serve"]
    if name is not None:
        args += ["--name", name]
    args += ["--bind", bind, "--port", str(port)]
    if gossip_port is not None:
        args += ["--gossip-port", str(gossip_port)]
    seeds = list(seeds)
    if seeds:
        args += ["--seeds", ",".join(seeds)]
    return args + list(extra)


def node_command(args: Iterable[str]) -> list[str]:
    """This interpreter running ``node.cli`` with ``args`` (from ``serve_args``)."""
    return [sys.executable, "-m", "node.cli", *args]


def terminate(procs: Iterable[subprocess.Popen], sig: int = signal.SIGTERM,
              timeout: float = STOP_TIMEOUT) -> list[subprocess.Popen]:
    """Stops processes by PID: ``sig`` to each one still running, then SIGKILL
    to those still running ``timeout`` seconds later (one deadline for all).
    Returns those it had to SIGKILL. Takes at most ``timeout`` + ``KILL_WAIT`` s."""
    procs = list(procs)
    for proc in procs:
        proc.send_signal(sig)  # nothing if it was reaped already (its PID may be another's now)
    deadline = time.monotonic() + timeout
    killed = []
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            killed.append(proc)
    kill_deadline = time.monotonic() + KILL_WAIT
    for proc in killed:
        try:
            proc.wait(max(0.0, kill_deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # not even SIGKILL ended it in time (stuck in the kernel): its returncode stays None
    return killed


class NodeChild:
    """A msession node running as our child process (see the module's docstring).

    ``args``: its ``serve`` command line (``serve_args``), run by this interpreter
    with the repository on ``PYTHONPATH``; or ``command``: a whole command line of
    the caller's, run as it is (it must log READY to stderr like a node). ``env``:
    variables set for it, on top of our environment without the ``MSESSION_*``
    variables named in ``drop_env`` (every one when None). ``cwd``: where it runs
    (ours when None). ``name``: how ``on_line`` and ``last_lines`` name it.
    ``keep``: how many of its stderr lines to keep (all when None); ``on_line``:
    called with each line (text), from the reader thread. ``host`` and ``port``:
    where it is expected to listen, until it says where it does.
    """

    def __init__(self, args: Iterable[str] = (), *, command: list[str] | None = None, env: dict | None = None,
                 drop_env: Iterable[str] | None = None, cwd: str | Path | None = None, name: str = "node",
                 keep: int | None = None, on_line: Callable[[str], None] | None = None,
                 host: str | None = None, port: int | None = None):
        self.name = name
        self.host, self.port = host, port
        self.gossip: str | None = None  # HOST:PORT of its gossip, once READY (None: a standalone node)
        self._lines: collections.deque[bytes] = collections.deque(maxlen=keep)
        self._on_line = on_line
        self._ready = False
        self._closed = False
        self._cond = threading.Condition()
        full_env = child_env(True if drop_env is None else drop_env)
        if command is None:
            command = node_command(args)
            # The child imports the same code as we do, wherever it is started from.
            full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_stderr, name=f"stderr-{name}-{self.proc.pid}", daemon=True)
        try:
            self._reader.start()
        except BaseException:  # no thread to read it: it goes now
            terminate([self.proc], signal.SIGKILL, 0)
            self.proc.stderr.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> bytes:
        """What it wrote to stderr so far (its last ``keep`` lines)."""
        with self._cond:
            return b"".join(self._lines)

    def text(self) -> str:
        return self.log.decode(errors="replace")

    def _read_stderr(self) -> None:
        # Reads for as long as the process writes, so a chatty node never blocks on a full pipe.
        try:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self._lines.append(raw)
                    if not self._ready:
                        self._parse(line)
                    self._cond.notify_all()
                if self._on_line is not None:
                    self._on_line(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _parse(self, line: str) -> None:
        m = GOSSIP.search(line)
        if m:
            self.gossip = f"{m.group(1)}:{m.group(2)}"
        m = READY.search(line)
        if m:
            self.host, self.port = m.group(1), int(m.group(2))
            self._ready = True

    def wait_ready(self, timeout: float) -> bool:
        """True once it said where it listens; False if it did not within
        ``timeout`` seconds or closed its stderr (exited) first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
            return self._ready

    def exited(self) -> int | None:
        return self.proc.poll()

    def last_lines(self, n: int = 10) -> str:
        """Its last ``n`` lines of stderr, indented and named, for a message."""
        with self._cond:  # the reader may still be copying a dying node's last words
            self._cond.wait_for(lambda: self._closed, 1.0 if self.proc.poll() is not None else 0)
            lines = [raw.decode("utf-8", "replace").rstrip("\r\n") for raw in list(self._lines)[-n:]]
        return "\n".join(f"  {self.name}: {line}" for line in lines) or f"  ({self.name} wrote nothing)"

    def send(self, sig: int) -> None:
        """``sig`` to its PID, if it is still running."""
        self.proc.send_signal(sig)

    def close(self) -> None:
        """After it exited: lets the reader finish (bounded) and closes the pipe."""
        self._reader.join(2.0)
        if not self._reader.is_alive():
            self.proc.stderr.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """``sig``, then SIGKILL after ``timeout`` s; its exit status (None only
        if not even SIGKILL ended it within ``KILL_WAIT`` s). Idempotent."""
        terminate([self.proc], sig, timeout)
        self.close()
        return self.proc.returncode


# -- msession farm ------------------------------------------------------------------------

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
    return [serve_args(name=f"node{i + 1}", bind=ip, port=port, gossip_port=gossip_port,
                       seeds=[] if i == 0 else gossip[:2] if i > 1 else gossip[:1], extra=extra)
            for i, ip in enumerate(ips)]


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
        self.nodes: list[NodeChild] = []
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
        for i, (ip, args) in enumerate(zip(self.ips, commands)):
            self.nodes.append(NodeChild(args, drop_env=FARM_OWNED_ENV, name=f"node{i + 1}", keep=20,
                                        on_line=self._copier(f"node{i + 1}"), host=ip, port=self.port))
            if i == 0:  # node 1 first, so the others find their seed up when they join
                self._wait_listening(self.nodes[0], deadline)
        for node in self.nodes[1:]:
            self._wait_listening(node, deadline)
        self._wait_members(deadline)

    def _copier(self, name: str) -> Callable[[str], None]:
        """Copies a node's stderr lines to ours, prefixed with its name."""
        return lambda line: self.out.line(f"{name}: {line}")

    def _wait_listening(self, node: NodeChild, deadline: float) -> None:
        while not node.wait_ready(0.05):
            self._check()
            if time.monotonic() > deadline:
                raise FarmError(f"{node.name} did not start listening within {self.start_timeout:g} s; "
                                "its last lines:\n" + node.last_lines())

    def _wait_members(self, deadline: float) -> None:
        """Until every node sees all of them alive (and the same ring)."""
        missing = wait_converged([n.address for n in self.nodes], [n.name for n in self.nodes],
                                 max(0.0, deadline - time.monotonic()), interval=0.2,
                                 check=self._check, sleep=self._wake.wait)
        if missing is not None:
            raise FarmError(f"the {len(self.nodes)} nodes do not all see each other alive "
                            f"within {self.start_timeout:g} s: {missing}")

    # -- stop -----------------------------------------------------------------------
    def stop(self) -> list[str]:
        """SIGTERM every node, SIGKILL those still running after STOP_TIMEOUT; returns problems."""
        running = {node.name for node in self.nodes if node.exited() is None}
        killed = terminate([node.proc for node in self.nodes], signal.SIGTERM, STOP_TIMEOUT)
        problems = []
        for node in self.nodes:
            if node.proc in killed:
                problems.append(f"{node.name} (pid {node.pid}) did not stop within {STOP_TIMEOUT:g} s: killed")
            elif node.name in running and node.proc.returncode not in (0, -signal.SIGTERM):
                problems.append(f"{node.name} (pid {node.pid}) {_describe_exit(node.proc.returncode)} while stopping")
            node.close()
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
                for node, ip in zip(self.nodes, self.ips):
                    print(f"{node.name:<{width}}  {node.address}  gossip {ip}:{self.gossip_port}  pid {node.pid}",
                          file=stdout)
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
            # whatever happened above, leave no node running
            terminate([node.proc for node in self.nodes if node.exited() is None], signal.SIGKILL, KILL_WAIT)
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
