"""Starting and stopping real msession processes for tests (loopback only)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import free_port  # noqa: E402,F401  (tests take it from here)
from node.farm import NodeChild, child_env, serve_args, wait_converged  # noqa: E402


_live: "set[NodeProcess]" = set()


def stop_all() -> None:
    """Stops every node a test started and left running (called at session end)."""
    for node in list(_live):
        node.stop(signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Polls ``predicate`` until it returns something true (returned), at most
    ``timeout`` seconds; then fails naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        time.sleep(interval)


def node_info(node) -> dict:
    """INFO of one node (its own counters: ``sessions``, ``lock_waiters``, ...)."""
    from protocol.client import Client

    with Client(nodes=[node.address], timeout=5) as c:
        return c.info()


def run(node, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``msession ARGS`` (``python -m node.cli``), asking ``node`` (``--node``;
    None: no ``--node``) with our environment minus ``MSESSION_*`` plus ``env``;
    with ``check``, fails unless it exits 0."""
    cmd = [sys.executable, "-m", "node.cli"]
    if node is not None:
        cmd += ["--node", node.address]
    proc = subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, timeout=30, env=child_env(extra=env))
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """``wait_for`` inside trio: polls without blocking the event loop."""
    import trio

    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


class NodeProcess(NodeChild):
    """``msession serve`` in a child process, on a free loopback port (node.farm's
    launcher: it dies with the test run, even a SIGKILLed one). The constructor
    returns once it listens; ``log`` holds all it wrote to stderr."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 15.0):
        # a farm of one by default
        super().__init__(serve_args(gossip_port=None if "--gossip-port" in args else 0, extra=args), env=env, cwd=ROOT)
        _live.add(self)
        if not self.wait_ready(timeout):
            self.stop()
            raise RuntimeError(f"node did not start: {self.read_log()}")

    @property
    def gossip_address(self) -> str:
        if self.gossip is None:
            raise RuntimeError("this node has no gossip port (standalone)")
        return self.gossip

    def read_log(self) -> str:
        return self.text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """``sig`` by PID, SIGKILL after ``timeout`` s; its exit status."""
        try:
            return super().stop(sig, timeout)
        finally:
            _live.discard(self)


class Farm:
    """``n`` real nodes on loopback that found each other through gossip."""

    def __init__(self, n: int, *args: str, prefix: str = "node"):
        self.args = args
        self.prefix = prefix
        self.nodes: list[NodeProcess] = []
        try:
            for _ in range(n):
                self.add()
            self.wait_converged()
        except BaseException:
            self.stop()
            raise

    def add(self, *extra: str, name: str | None = None) -> NodeProcess:
        name = name or f"{self.prefix}{len(self.nodes) + 1}"
        live = [n for n in self.nodes if n.proc.poll() is None]
        seeds = ["--seeds", ",".join(n.gossip_address for n in live[:2])] if live else []
        node = NodeProcess("--name", name, *seeds, *self.args, *extra)
        node.name = name
        self.nodes.append(node)
        return node

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes if n.proc.poll() is None]

    def status(self, node: NodeProcess) -> dict:
        from protocol.client import Client

        with Client(nodes=[node.address], timeout=5) as c:
            return c.status()

    def wait_converged(self, timeout: float = 20.0) -> None:
        """Until every running node sees every running node alive, and the same ring."""
        live = [n for n in self.nodes if n.proc.poll() is None]
        missing = wait_converged([n.address for n in live], [n.name for n in live], timeout, status_timeout=5.0)
        if missing is not None:
            raise AssertionError(f"farm did not converge in {timeout} s: {missing}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for node in self.nodes:
            node.stop(sig)
