"""Starting, watching and stopping the two servers (loopback only, killed by PID).

Both run as our child processes, each in its own session (so a Ctrl-C at the
terminal reaches only the bench, which then stops them in order) and with
``PR_SET_PDEATHSIG`` set, so that even a ``kill -9`` of the bench does not leave
them running. The msession node is started by node.farm's launcher
(``NodeChild``), as ``msession farm`` and the tests start theirs; every server
is stopped by node.farm's ``terminate``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.farm import NodeChild, die_with_parent, node_command, serve_args, terminate

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something the bench cannot go on without; the message says what and why."""


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, (idle + iowait) / CLK_TCK, steal / CLK_TCK


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Child:
    """A server we start ourselves (redis, memcached), with a temporary file for
    its output (``self.logfile``, read by ``log()``, removed by ``stop()``)."""

    name = "server"

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return Path(self.logfile.name).read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s, by PID; idempotent."""
        if self.proc is not None:
            terminate([self.proc], signal.SIGTERM, timeout)
        try:
            self.logfile.close()
            os.unlink(self.logfile.name)
        except OSError:
            pass


# A farm of one on a free loopback port.
DEFAULT_NODE_CMD = node_command(serve_args(bind="127.0.0.1", port=0, gossip_port=0))


class MsessionServer:
    """A msession node, run by node.farm's launcher: ``self.node`` (a
    ``NodeChild``, once started) is all its state; ``log()`` is what it wrote
    to stderr (the launcher keeps it). Same interface as the other servers.
    ``command``: its command line (``DEFAULT_NODE_CMD``); ``name``: its
    ``--name`` in that command, if any (how the farm knows it)."""

    def __init__(self, command: list[str] | None = None, name: str = "msession"):
        self.command = command or DEFAULT_NODE_CMD
        self.name = name
        self.node: NodeChild | None = None

    def start(self, timeout: float = 15.0) -> "MsessionServer":
        self.node = NodeChild(command=self.command, cwd=ROOT, name=self.name)
        if self.node.wait_ready(timeout):
            if not _is_loopback(self.host):
                self.stop()
                raise BenchError(f"the msession node listens on {self.host}, not a loopback address")
            return self
        log = self.log()
        self.stop()
        raise BenchError(f"the msession node did not start:\n{log}")

    def _started(self) -> NodeChild:
        if self.node is None:
            raise RuntimeError("the msession node was not started")
        return self.node

    @property
    def host(self) -> str:
        return self._started().host

    @property
    def port(self) -> int:
        return self._started().port

    @property
    def address(self) -> str:
        return self._started().address

    @property
    def pid(self) -> int:
        return self._started().pid

    def alive(self) -> bool:
        return self.node is not None and self.node.exited() is None

    def log(self) -> str:
        return self.node.text() if self.node is not None else ""

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s, by PID; idempotent."""
        if self.node is not None:
            self.node.stop(signal.SIGTERM, timeout)


def find_redis(install: bool = True) -> str:
    """The redis-server binary; installs the Debian package when root and it is missing."""
    path = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: redis-server not found; installing it with apt-get (we are root)", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        return find_redis(install=False)
    raise BenchError(
        "redis-server is not installed. Install it with `sudo apt-get install redis-server` "
        "(Debian/Ubuntu; or run `bash deploy/install.sh --test` as root), then run the bench again."
    )


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out.strip()


class RedisServer(_Child):
    name = "redis"

    def __init__(self, binary: str):
        super().__init__()
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")

    def start(self, timeout: float = 10.0, attempts: int = 3) -> "RedisServer":
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--dir", self.dir, "--logfile", "", "--protected-mode", "yes",
                ],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self.logfile, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
            if self._wait_ready(timeout):
                return self
            last = self.log()
            self._kill()
        self.stop()
        raise BenchError(f"redis-server did not start:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self.proc is not None:
            terminate([self.proc], signal.SIGKILL, 0)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
