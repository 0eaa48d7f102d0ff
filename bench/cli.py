"""``python -m bench``: the command line and the phases of one run.

A *phase* is one system (msession or redis) under one mode (unpipelined:
depth 1; pipelined: depth ``--depth``). Before each phase the sessions are
preloaded again (redis: FLUSHALL first; msession: DATASET and SETVAL overwrite
every session completely), then the workers connect, wait for a common start
time, warm up, measure, drain and report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .loadgen import DRAIN_SECONDS, WorkerSpec, run_worker
from .protocols import CODECS, ERROR, CodecError
from .report import PhaseResult, machine_info, merge, table, to_json
from .servers import BenchError, MsessionServer, RedisServer, find_redis, machine_cpu, redis_version
from .workload import MIX, KIND_NAMES, Workload

SYSTEMS = ("msession", "redis")
MODES = ("unpipelined", "pipelined")


def build_parser() -> argparse.ArgumentParser:
    nproc = os.cpu_count() or 2
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Drive an msession node and a local redis-server with the same session workload "
        "and compare throughput, latency and CPU. Run from the repository root.",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions preloaded and used (default 10000)")
    p.add_argument("--connections", type=int, default=50, help="client connections (default 50)")
    p.add_argument("--workers", type=int, default=max(2, min(4, nproc)),
                   help="load generator processes sharing the connections (default: CPUs, 2..4)")
    p.add_argument("--depth", type=int, default=16, help="requests per batch in the pipelined mode (default 16)")
    p.add_argument("--data-size", type=int, default=1024, help="bytes of session data (default 1024)")
    p.add_argument("--seed", type=int, default=20240601, help="seed of the workload (default fixed)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: msession,redis")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: unpipelined,pipelined")
    p.add_argument("--msession-cmd", metavar="CMD",
                   help="command that starts the node instead of the default "
                   "'<python> -m node.cli serve --bind 127.0.0.1 --port 0 --gossip-port 0' (split like a shell would; run "
                   "from the repository root; it must bind loopback and log 'msession listening on HOST:PORT' "
                   "to stderr); e.g. to compare a branch or a config")
    p.add_argument("--py-spy", metavar="FILE",
                   help="profile the msession node with py-spy during its unpipelined phase "
                   "(FILE.svg: flame graph, FILE.json: speedscope, else raw collapsed stacks); "
                   "sampling slows the node, so do not record numbers from such a run")
    return p


def _list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"bench: --{what} takes a comma-separated subset of {','.join(allowed)}, not {value!r}")
    return [v for v in allowed if v in items]


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# Preloading (blocking socket, pipelined in batches)


def _exchange(sock: socket.socket, codec, requests: list[bytes]) -> list:
    if not requests:
        return []
    sock.sendall(b"".join(requests))
    replies: list = []
    while len(replies) < len(requests):
        data = sock.recv(262144)
        if not data:
            raise BenchError(f"{codec.system} closed the connection while preloading")
        replies += codec.feed(data)
    return replies


def preload(host: str, port: int, system: str, wl: Workload, batch: int = 500) -> float:
    """Writes every session afresh; returns the seconds it took."""
    t = time.monotonic()
    codec = CODECS[system](wl)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if any(r is ERROR for r in _exchange(sock, codec, codec.reset_requests())):
                raise BenchError(f"{system}: resetting the data set failed")
            for start in range(0, wl.n_sessions, batch):
                reqs = [r for i in range(start, min(start + batch, wl.n_sessions)) for r in codec.preload_requests(wl, i)]
                replies = _exchange(sock, codec, reqs)
                bad = sum(1 for r in replies if r is ERROR)
                if bad:
                    raise BenchError(f"{system}: {bad} preload requests failed")
            (count,) = _exchange(sock, codec, [codec.count_request()])
        except CodecError as exc:
            raise BenchError(f"preloading {system}: {exc}") from None
    if count != codec.expected_count(wl):
        raise BenchError(f"{system}: after preloading it holds {count} entries, expected {codec.expected_count(wl)}")
    return time.monotonic() - t


# ----------------------------------------------------------------------------
# One phase


class Children:
    """Every process the bench starts, so that ``finally`` can end each by PID."""

    def __init__(self):
        self.servers: list = []
        self.workers: list = []
        self.others: list[subprocess.Popen] = []

    def end_workers(self) -> None:
        for p in self.workers:
            if p.is_alive():
                p.terminate()  # SIGTERM to p.pid
        for p in self.workers:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        self.workers.clear()

    def end_all(self) -> None:
        self.end_workers()
        for proc in self.others:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self.others.clear()
        for srv in reversed(self.servers):
            srv.stop()
        self.servers.clear()


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def run_phase(children: Children, srv, system: str, mode: str, depth: int, wl: Workload,
              ns: argparse.Namespace, profile: str | None = None) -> PhaseResult:
    ctx = mp.get_context("fork")
    n_workers = max(1, min(ns.workers, ns.connections))
    pipes = []
    for w in range(n_workers):
        spec = WorkerSpec(
            worker=w, system=system, host=srv.host, port=srv.port,
            connections=list(range(w, ns.connections, n_workers)), depth=depth,
            seed=ns.seed, sessions=ns.sessions, data_size=ns.data_size, parent_pid=os.getpid(),
        )
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=run_worker, args=(spec, child_end), name=f"bench-worker-{w}", daemon=True)
        proc.start()
        child_end.close()
        children.workers.append(proc)
        pipes.append(parent_end)

    def receive(pipe, timeout: float, what: str):
        if not pipe.poll(timeout):
            raise BenchError(f"a load generator worker did not {what} within {timeout:g} s")
        try:
            msg = pipe.recv()
        except EOFError:
            raise BenchError(f"a load generator worker died before it could {what}") from None
        if msg[0] == "error":
            raise BenchError(f"load generator failed:\n{msg[1]}")
        return msg

    for pipe in pipes:
        receive(pipe, 60, "connect")
    t0 = time.monotonic() + 0.2
    t_meas = t0 + ns.warmup
    t_end = t_meas + ns.seconds
    for pipe in pipes:
        pipe.send(("go", t0, ns.warmup, ns.seconds))

    _sleep_until(t_meas)
    spy = None
    if profile:
        spy = _start_py_spy(children, srv.pid, ns.seconds, profile)
    m0, s0, w0 = machine_cpu(), srv.cpu_seconds(), time.monotonic()
    _sleep_until(t_end)
    m1, s1, w1 = machine_cpu(), srv.cpu_seconds(), time.monotonic()

    results = [receive(pipe, DRAIN_SECONDS + 60, "report")[1] for pipe in pipes]
    for pipe in pipes:
        pipe.close()
    for proc in children.workers:
        proc.join(10)
    children.end_workers()
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            _log("py-spy did not finish; killing it")
        if spy.poll() is None:
            os.kill(spy.pid, signal.SIGKILL)
            spy.wait()
        children.others.remove(spy)
        _log(f"py-spy profile written to {profile}" if Path(profile).exists() else "py-spy wrote no profile")
    if not srv.alive():
        raise BenchError(f"{system} died during the {mode} phase:\n{srv.log()[-4000:]}")
    machine = tuple(b - a for a, b in zip(m0, m1))
    return merge(system, mode, depth, ns.seconds, results, s1 - s0, w1 - w0, machine)


def _start_py_spy(children: Children, pid: int, seconds: float, out: str) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(exe, os.X_OK):
        raise BenchError("py-spy is not installed: `.venv/bin/pip install py-spy`")
    fmt = "flamegraph" if out.endswith(".svg") else "speedscope" if out.endswith(".json") else "raw"
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250",
           "--format", fmt, "--output", out]
    _log("profiling: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    children.others.append(proc)
    return proc


# ----------------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    systems = _list(ns.systems, SYSTEMS, "systems")
    modes = _list(ns.modes, MODES, "modes")
    for name in ("seconds", "sessions", "connections", "workers", "depth", "data_size"):
        if getattr(ns, name) <= 0:
            raise SystemExit(f"bench: --{name.replace('_', '-')} must be positive")
    if ns.warmup < 0:
        raise SystemExit("bench: --warmup must not be negative")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    children = Children()
    results: list[PhaseResult] = []
    try:
        redis_bin = find_redis() if "redis" in systems else None
        rversion = redis_version(redis_bin) if redis_bin else "-"
        wl = Workload(ns.seed, ns.sessions, ns.data_size)
        servers = {}
        if "msession" in systems:
            srv = MsessionServer(shlex.split(ns.msession_cmd) if ns.msession_cmd else None)
            children.servers.append(srv)
            servers["msession"] = srv.start()
            _log(f"msession node pid {srv.pid} on {srv.host}:{srv.port}")
        if "redis" in systems:
            srv = RedisServer(redis_bin)
            children.servers.append(srv)
            servers["redis"] = srv.start()
            _log(f"redis-server {rversion} pid {srv.pid} on {srv.host}:{srv.port}")

        machine = machine_info(rversion)
        n_workers = max(1, min(ns.workers, ns.connections))
        print(f"msession bench: {ns.sessions} sessions, {ns.connections} connections, {n_workers} load "
              f"generator processes, {ns.seconds:g} s per phase after {ns.warmup:g} s warmup, seed {ns.seed}")
        print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
              f"redis {machine['redis']}, {machine['date']}")
        print("mix: " + ", ".join(f"{KIND_NAMES[k]} {share:.0%}" for k, share in MIX)
              + f"; session data {ns.data_size} B")
        sys.stdout.flush()

        for mode in modes:
            depth = 1 if mode == "unpipelined" else ns.depth
            for system in systems:
                srv = servers[system]
                took = preload(srv.host, srv.port, system, wl)
                _log(f"{system} {mode}: preloaded {ns.sessions} sessions in {took:.2f} s; running")
                profile = ns.py_spy if (ns.py_spy and system == "msession" and mode == "unpipelined") else None
                r = run_phase(children, srv, system, mode, depth, wl, ns, profile)
                results.append(r)
                _log(f"{system} {mode}: {r.ops_per_s:,.0f} ops/s, p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, "
                     f"errors {r.errors}, server CPU {r.server_cpu_pct:.0f}%, loadgen CPU {r.loadgen_cpu_pct:.0f}% "
                     f"(workers {r.loadgen_worker_cpu_pct})")
    except KeyboardInterrupt:
        _log("interrupted; stopping everything")
        return 130
    except BenchError as exc:
        _log(str(exc))
        return 2
    finally:
        children.end_all()

    def ratio(mode: str) -> float | None:
        by = {(r.system, r.mode): r for r in results}
        m, rd = by.get(("msession", mode)), by.get(("redis", mode))
        if m is None or rd is None or rd.ops_per_s <= 0:
            return None
        return m.ops_per_s / rd.ops_per_s

    cores = os.cpu_count() or 1
    print()
    print(table(results))
    print()
    print(f"CPU % is of one core ({cores} cores = {cores * 100}%). server: /proc/PID/stat; loadgen: getrusage of "
          f"its {n_workers} worker processes; both over the measured window.")
    for r in results:
        if r.loadgen_bound(cores):
            print(f"note: {r.system} {r.mode}: the load generator or the machine was saturated (busiest worker "
                  f"{max(r.loadgen_worker_cpu_pct):.0f}% of a core, server+loadgen {r.server_cpu_pct + r.loadgen_cpu_pct:.0f}% "
                  f"of {cores * 100}%): {r.system}'s figure is a lower bound.")
        if r.other_cpu_pct >= 15.0:
            print(f"note: {r.system} {r.mode}: other processes used {r.other_cpu_pct:.0f}% of a core during the "
                  f"measurement (machine busy {r.machine_busy_pct:.0f}%, steal {r.machine_steal_pct:.0f}%): "
                  f"the figures are disturbed.")
        if r.errors:
            print(f"note: {r.system} {r.mode}: {r.errors} errors {r.error_kinds}, {r.dead_connections} connections lost")
    ratios = {"ratio_vs_redis": ratio("unpipelined"), "ratio_vs_redis_pipelined": ratio("pipelined")}
    if ns.json:
        config = {
            "seconds": ns.seconds, "warmup": ns.warmup, "sessions": ns.sessions, "connections": ns.connections,
            "workers": n_workers, "depth": ns.depth, "data_size": ns.data_size, "seed": ns.seed,
            "mix": {KIND_NAMES[k]: share for k, share in MIX}, "systems": systems, "modes": modes,
        }
        Path(ns.json).write_text(json.dumps(to_json(machine, config, results, ratios), indent=2) + "\n")
    if ratios["ratio_vs_redis_pipelined"] is not None:
        print(f"ratio_vs_redis_pipelined: {ratios['ratio_vs_redis_pipelined']:.2f}")
    rv = ratios["ratio_vs_redis"]
    print(f"ratio_vs_redis: {rv:.2f}" if rv is not None else "ratio_vs_redis: n/a")
    sys.stdout.flush()
    if any(r.errors for r in results):
        _log("some requests failed (see the notes above)")
        return 1
    if any(r.ops == 0 for r in results):
        _log("a phase completed no request")
        return 1
    return 0
