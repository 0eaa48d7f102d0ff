"""PHP session handlers on a web farm: msession vs phpredis vs php-memcached.

    .venv/bin/python -m bench.php_farm [--seconds 10] [--runs 3]

For each handler, in the same run: its server on a free loopback port (an
msession node, redis-server, memcached), two ``php -S`` web servers
(PHP_CLI_SERVER_WORKERS=4 each) sharing sessions through it, and the page
clients/php/tests/farm/counter.php, which increments a session counter. Two phases:

- sequential: 20 virtual users, each sending one request at a time,
  alternating between the two web servers; every answer must be the previous
  plus one;
- burst: 5 users, each sending 4 concurrent requests (AJAX-style), alternating
  web servers, then the next 4; the 4 answers must be exactly previous+1 ..
  previous+4.

Per handler and phase: requests/s, p50 and p99 latency, errors (non-200 or
failed requests) and consistency violations (answers that are not what a
lost-nothing session gives: each missing or duplicated increment counts one).
Handlers: msession's handler (lock mode, clients/php/session.php, persistent
connections: msession.persistent=1, the default) on one node ("msession") and
on a farm of three ("msession-farm3": web server i lists the nodes starting
from node i; the handler routes each session's requests straight to its
owner, msession.route=1, the default for several nodes; "msession-farm3-noroute":
msession.route=0, so a request for a session another node owns is forwarded
node to node; the one node runs with the default for one node, no routing);
phpredis
(``session.save_handler=redis``, ``redis.session.locking_enabled=1``, other
settings shipped defaults); php-memcached (``session.save_handler=memcached``,
shipped defaults: locking on). All with session.use_strict_mode=1.

With ``--runs N`` the handlers are measured N times, interleaved, and the
table shows the median of each figure. Every server is ours: loopback only,
stopped by PID (php -S by process group, since it forks its workers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node.farm import child_env, die_with_parent, node_command, serve_args, term_with_parent, wait_converged

from .report import percentile
from .servers import BenchError, MsessionServer, RedisServer, _Child, find_redis, free_port, proc_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "clients" / "php" / "tests" / "farm"  # the web-farm test's page
HANDLERS = ("msession", "msession-farm3", "msession-farm3-noroute", "phpredis", "memcached")
SEQ_USERS, BURST_USERS, BURST = 20, 5, 4


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """Polls until 127.0.0.1:``port`` accepts a connection (True), ``proc``
    exits or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class MemcachedServer(_Child):
    name = "memcached"

    def start(self, timeout: float = 10.0) -> "MemcachedServer":
        binary = shutil.which("memcached")
        if binary is None:
            raise BenchError("memcached is not installed: run `bash deploy/install.sh --test` as root")
        self.port = free_port()
        cmd = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        if _wait_port(self.port, self.proc, timeout):
            return self
        log = self.log()
        self.stop()
        raise BenchError(f"memcached did not start:\n{log}")


# Runs its arguments; on SIGTERM, SIGTERM to its whole process group (itself
# included, once its trap is reset). ``wait $!``: php's exit status is its own.
SUPERVISOR = 'trap "trap - TERM; kill 0" TERM; "$@" & wait $!'


class PhpServer:
    """``php -S`` with workers, in its own process group (stopped as a group;
    the whole group is stopped when we die, see ``SUPERVISOR``),
    with a TMPDIR of its own (where msession's handler caches the farm's
    routing table when APCu is absent). ``log``: keep its stderr (minus the
    access log lines) in ``self.log``. tests/test_php.py uses it too."""

    def __init__(self, ini: dict, workers: int = 4, log: bool = False):
        php = shutil.which("php")
        if php is None:
            raise BenchError("php is not installed: run `bash deploy/install.sh --test` as root")
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="msession-php-")
        cmd = [php]
        for k, v in ini.items():
            cmd += ["-d", f"{k}={v}"]
        cmd += ["-S", f"127.0.0.1:{self.port}", "-t", str(APP)]
        env = child_env(extra={"PHP_CLI_SERVER_WORKERS": str(workers), "TMPDIR": self.tmp})
        self.log = b""
        # php's workers are forked children, which PR_SET_PDEATHSIG does not
        # reach: php runs under a shell in a process group of its own, which
        # gets SIGTERM when we die (even SIGKILLed) and then signals its whole
        # group. ``self.proc`` is that shell; stop() signals the group.
        self.proc = subprocess.Popen(["sh", "-c", SUPERVISOR, "sh", *cmd], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if log else subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=term_with_parent)
        self._reader = threading.Thread(target=self._drain, daemon=True) if log else None
        if self._reader:
            self._reader.start()
        if not _wait_port(self.port, self.proc, 10):
            self.stop()
            raise BenchError(f"php -S did not start: {' '.join(cmd)}\n{self.log.decode(errors='replace')}")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if b"Accepted" not in line and b"Closing" not in line and b"[200]:" not in line:
                self.log += line

    def cpu_seconds(self) -> float:
        """CPU seconds of the web server's processes (its process group: the workers included)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        total += proc_cpu_seconds(int(entry))
                except (OSError, ValueError):
                    pass  # gone meanwhile
        return total

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        if self._reader:
            self._reader.join(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


class MsessionFarm:
    """``n`` msession nodes on loopback that found each other through gossip."""

    def __init__(self, n: int):
        self.nodes: list[MsessionServer] = []
        try:
            for i in range(n):
                name, seeds = f"bench{i + 1}", [self.gossip(self.nodes[0])] if self.nodes else []
                self.nodes.append(MsessionServer(node_command(serve_args(name=name, seeds=seeds)), name=name).start())
            self.wait_converged()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def gossip(node: MsessionServer) -> str:
        address = node.node.gossip if node.node is not None else None  # parsed by the launcher
        if address is None:
            raise BenchError(f"no gossip address in the node's log:\n{node.log()}")
        return address

    def wait_converged(self, timeout: float = 20.0) -> None:
        missing = wait_converged(self.addresses, [node.name for node in self.nodes], timeout, interval=0.1)
        if missing is not None:
            raise BenchError(f"the {len(self.nodes)} msession nodes did not form a farm within {timeout} s: {missing}")

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def handler_ini(handler: str, backend, web: int = 0) -> dict:
    """php.ini settings of web server ``web`` (0 or 1)."""
    ini = {"session.use_strict_mode": "1", "display_errors": "0", "log_errors": "0",
           "opcache.enable_cli": "1"}  # as any production PHP has opcache on
    if isinstance(backend, MsessionFarm):
        nodes = backend.addresses
        addr = ",".join(nodes[web % len(nodes):] + nodes[: web % len(nodes)])  # web server i starts at node i
    else:
        addr = f"127.0.0.1:{backend.port}"
    if handler.startswith("msession"):
        ini.update({"auto_prepend_file": str(ROOT / "clients/php/session.php"), "session.save_path": addr,
                    "msession.mode": "lock", "msession.persistent": "1"})
        if handler.endswith("-noroute"):
            ini["msession.route"] = "0"  # else the default: on with several nodes, off with one
    elif handler == "phpredis":
        ini.update({"session.save_handler": "redis", "session.save_path": f"tcp://{addr}",
                    "redis.session.locking_enabled": "1"})
    else:
        ini.update({"session.save_handler": "memcached", "session.save_path": addr})
    return ini


def request(port: int, sid: str | None) -> tuple[int | None, str | None, float]:
    """One GET of the counter page: (value or None on error, sid, seconds)."""
    t = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            cookie = f"Cookie: PHPSESSID={sid}\r\n" if sid else ""
            s.sendall(f"GET /counter.php HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
            return None, sid, time.perf_counter() - t
        answer = json.loads(body)
        return int(answer["value"]), answer["sid"], time.perf_counter() - t
    except (OSError, ValueError, KeyError):
        return None, sid, time.perf_counter() - t


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.violations = 0

    def add(self, seconds: float, error: bool = False, violations: int = 0) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.errors += error
            self.violations += violations

    def add_violations(self, n: int) -> None:
        with self.lock:
            self.violations += n


def sequential_user(ports, seconds: float, tally: Tally) -> None:
    sid, prev, i = None, 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value, new_sid, dt = request(ports[i % 2], sid)
        i += 1
        if value is None:
            tally.add(dt, error=True)
            continue
        if sid is None:
            sid = new_sid
        tally.add(dt, violations=0 if value == prev + 1 else 1)
        prev = value


def burst_user(ports, seconds: float, tally: Tally, pool: ThreadPoolExecutor) -> None:
    value, sid, dt = request(ports[0], None)
    tally.add(dt, error=value is None)
    prev, i = value or 0, 1
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        futures = [pool.submit(request, ports[(i + k) % 2], sid) for k in range(BURST)]
        i += 1
        answers = [f.result() for f in futures]
        values = [v for v, _, _ in answers if v is not None]
        for v, _, dt in answers:
            tally.add(dt, error=v is None)
        expected = set(range(prev + 1, prev + len(values) + 1))
        tally.add_violations(len(values) - len(expected & set(values)))
        prev = max(values, default=prev)


def phase(ports, kind: str, seconds: float) -> dict:
    tally = Tally()
    t = time.monotonic()
    if kind == "sequential":
        with ThreadPoolExecutor(SEQ_USERS) as users:
            list(users.map(lambda _: sequential_user(ports, seconds, tally), range(SEQ_USERS)))
    else:
        with ThreadPoolExecutor(BURST_USERS) as users, ThreadPoolExecutor(BURST_USERS * BURST) as pool:
            list(users.map(lambda _: burst_user(ports, seconds, tally, pool), range(BURST_USERS)))
    elapsed = time.monotonic() - t
    lat = sorted(tally.latencies)
    ms = (lambda q: 1000 * percentile(lat, q)) if lat else (lambda q: math.nan)  # no request: no latency, not 0 ms
    return {"req_s": len(lat) / elapsed, "p50_ms": ms(0.50), "p99_ms": ms(0.99),
            "errors": tally.errors, "violations": tally.violations, "requests": len(lat)}


def measure(handler: str, seconds: float) -> dict:
    backend = {"msession": lambda: MsessionServer().start(), "msession-farm3": lambda: MsessionFarm(3),
               "msession-farm3-noroute": lambda: MsessionFarm(3), "phpredis": lambda: RedisServer(find_redis()).start(),
               "memcached": lambda: MemcachedServer().start()}[handler]()
    webs: list[PhpServer] = []
    try:
        for web in range(2):  # one at a time: if the second fails to start, the first is stopped below
            webs.append(PhpServer(handler_ini(handler, backend, web)))
        ports = [w.port for w in webs]
        for _ in range(50):  # warm up: workers, connections, opcode caches
            request(ports[0], None)
        out = {}
        for kind in ("sequential", "burst"):
            cpu0, php0 = backend.cpu_seconds(), sum(w.cpu_seconds() for w in webs)
            out[kind] = phase(ports, kind, seconds)
            n = max(1, out[kind]["requests"])
            out[kind]["server_cpu_ms"] = 1000 * (backend.cpu_seconds() - cpu0) / n
            out[kind]["php_cpu_ms"] = 1000 * (sum(w.cpu_seconds() for w in webs) - php0) / n
        return out
    finally:
        for w in webs:
            w.stop()
        backend.stop()


def table(results: dict) -> str:
    lines = ["| handler | phase | req/s | p50 ms | p99 ms | errors | violations | server CPU ms/req | PHP CPU ms/req |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for handler in HANDLERS:
        if handler not in results["runs"][0]:
            continue
        for kind in ("sequential", "burst"):
            runs = [r[handler][kind] for r in results["runs"]]
            med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            lines.append(f"| {handler} | {kind} | {med['req_s']:,.0f} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} "
                         f"| {med['errors']:g} | {med['violations']:g} | {med['server_cpu_ms']:.3f} | {med['php_cpu_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (10)")
    ap.add_argument("--runs", type=int, default=3, help="runs, handlers interleaved; the table shows medians (3)")
    ap.add_argument("--json", help="write every run's figures to this file")
    ap.add_argument("--handlers", default=",".join(HANDLERS), help=f"comma-separated subset of {','.join(HANDLERS)}")
    ns = ap.parse_args(argv)
    handlers = [h for h in HANDLERS if h in ns.handlers.split(",")]
    results = {"seconds": ns.seconds, "runs": []}
    try:
        for run in range(ns.runs):
            figures = {}
            for handler in handlers:
                figures[handler] = measure(handler, ns.seconds)
                print(f"run {run + 1} {handler}: " + json.dumps(figures[handler]), file=sys.stderr)
            results["runs"].append(figures)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
