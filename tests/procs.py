"""Starting and stopping real msession processes for tests (loopback only)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import free_port  # noqa: E402,F401  (tests take it from here)
from node.farm import converged, die_with_parent  # noqa: E402
READY = re.compile(rb"msession listening on (\S+):(\d+)")
GOSSIP = re.compile(rb"gossip on (\S+):(\d+) as (\S+)")


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


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """``wait_for`` inside trio: polls without blocking the event loop."""
    import trio

    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


class NodeProcess:
    """``msession serve`` in a child process, on a free loopback port."""

    def __init__(self, *args: str, env: dict | None = None):
        gossip = [] if "--gossip-port" in args else ["--gossip-port", "0"]  # a farm of one by default
        self.args = ["serve", "--bind", "127.0.0.1", "--port", "0", *gossip, *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSESSION_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *self.args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,  # even a SIGKILLed test run leaves no node behind
        )
        _live.add(self)
        self.log = b""
        self._closed = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.host, self.port = self._wait_ready()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def gossip_address(self) -> str:
        m = GOSSIP.search(self.read_log().encode())
        if m is None:
            raise RuntimeError("this node has no gossip port (standalone)")
        return f"{m.group(1).decode()}:{m.group(2).decode()}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        # Reads stderr for as long as the process lives, so a chatty node never
        # blocks on a full pipe.
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            with self._cond:
                self.log += chunk
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _wait_ready(self, timeout: float = 15.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = READY.search(self.log)
                if m:
                    return m.group(1).decode(), int(m.group(2))
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        self.stop()
        raise RuntimeError(f"node did not start: {self.log.decode(errors='replace')}")

    def read_log(self) -> str:
        with self._cond:
            return self.log.decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self.proc.stderr.close()
        _live.discard(self)
        return self.proc.returncode


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

    def states(self, node: NodeProcess) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.status(node)["members"]}

    def wait_converged(self, timeout: float = 20.0) -> None:
        """Until every running node sees every running node alive, and the same ring."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.proc.poll() is None]
            names = {n.name for n in live}
            try:
                if converged([self.status(n) for n in live], names) is None:
                    return
            except Exception:  # a node still starting
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"farm did not converge in {timeout} s: {[self.states(n) for n in live]}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
