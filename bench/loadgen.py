"""Load generator: worker processes driving raw non-blocking sockets with epoll.

Each worker owns a share of the connections. A connection sends a *batch* of
``depth`` requests in one ``send`` and waits for all their replies before it
sends the next batch: depth 1 is one request at a time, as PHP does; depth 16
is pipelining as in ``redis-benchmark -P 16`` or ``Client.pipeline()``.

Timeline (all on ``time.monotonic``, which is one clock for every process):
``t0`` the parent's go; ``t0 + warmup`` the measurement starts; ``t_end`` it
stops: no new batch is sent, the batches in flight are drained (not counted)
and the sockets closed. A reply counts if the ``recv`` that completed it
returned inside the window; its latency is from just before the batch's
``send`` to just after that ``recv``. Latencies are kept per worker in an
``array('d')`` and merged by the parent. The worker's own CPU time
(``getrusage``) over the window is reported so the parent can tell whether the
load generator kept up.
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import signal
import socket
import time
import traceback
from dataclasses import dataclass

from node.farm import die_with_parent

from .protocols import CODECS, ERROR, CodecError
from .workload import MUST_EXIST, OpStream, Workload

RECV_SIZE = 65536
DRAIN_SECONDS = 2.0


@dataclass
class WorkerSpec:
    worker: int
    system: str
    host: str
    port: int
    connections: list[int]  # global connection numbers (they seed the op streams)
    depth: int
    seed: int
    sessions: int
    data_size: int
    parent_pid: int = 0


class _Conn:
    __slots__ = ("sock", "fd", "codec", "ops", "kinds", "done", "t_sent", "out", "alive", "number")

    def __init__(self, number: int, sock: socket.socket, codec, ops: OpStream):
        self.number = number
        self.sock = sock
        self.fd = sock.fileno()
        self.codec = codec
        self.ops = ops
        self.kinds: list[int] = []
        self.done = 0
        self.t_sent = 0.0
        self.out = b""
        self.alive = True


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _blocking_ping(sock: socket.socket, codec, timeout: float = 5.0) -> None:
    sock.settimeout(timeout)
    sock.sendall(codec.ping())
    while True:
        data = sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        replies = codec.feed(data)
        if replies:
            if replies[0] is ERROR:
                raise ConnectionError("server answered PING with an error")
            return


def run_worker(spec: WorkerSpec, pipe) -> None:
    """Process entry point. Talks to the parent over ``pipe``:
    sends ``("ready", None)``, receives ``("go", t0, warmup, seconds)`` or
    ``("stop",)``, sends ``("done", result)`` or ``("error", text)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() != spec.parent_pid:  # the parent died before prctl took effect
        return
    conns: list[_Conn] = []
    try:
        wl = Workload(spec.seed, spec.sessions, spec.data_size)
        codec_cls = CODECS[spec.system]
        for n in spec.connections:
            sock = _connect(spec.host, spec.port)
            c = _Conn(n, sock, codec_cls(wl), OpStream(spec.seed, n, spec.sessions))
            conns.append(c)
            _blocking_ping(sock, c.codec)
        for c in conns:
            c.sock.setblocking(False)
        pipe.send(("ready", None))
        msg = pipe.recv()
        if msg[0] != "go":
            return
        _, t0, warmup, seconds = msg
        result = _drive(conns, spec.depth, t0, t0 + warmup, t0 + warmup + seconds)
        result["worker"] = spec.worker
        result["connections"] = len(conns)
        pipe.send(("done", result))
    except (BrokenPipeError, EOFError):
        pass  # the parent went away
    except BaseException:
        try:
            pipe.send(("error", f"worker {spec.worker}: {traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        for c in conns:
            try:
                c.sock.close()
            except OSError:
                pass
        pipe.close()


def _drive(conns: list[_Conn], depth: int, t0: float, t_meas: float, t_end: float) -> dict:
    monotonic = time.monotonic
    ep = select.epoll()
    by_fd = {}
    for c in conns:
        ep.register(c.fd, select.EPOLLIN)
        by_fd[c.fd] = c
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    IN_MASK = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP

    lat = array.array("d")
    lat_append = lat.append
    ops = 0
    errors = 0
    error_kinds: dict[str, int] = {}
    dead = 0
    measuring = False
    cpu0 = cpu1 = 0.0
    w0 = w1 = 0.0

    def fail(c: _Conn, why: str) -> None:
        nonlocal errors, dead
        if not c.alive:
            return
        c.alive = False
        dead += 1
        errors += len(c.kinds) - c.done  # the requests in flight are lost
        error_kinds[why] = error_kinds.get(why, 0) + 1
        try:
            ep.unregister(c.fd)
        except (OSError, ValueError):
            pass

    def issue(c: _Conn) -> None:
        kinds = []
        chunks = []
        nxt = c.ops.next
        req = c.codec.request
        for _ in range(depth):
            kind, s, a = nxt()
            kinds.append(kind)
            chunks.append(req(kind, s, a))
        data = chunks[0] if depth == 1 else b"".join(chunks)
        c.kinds = kinds
        c.done = 0
        c.t_sent = monotonic()
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            fail(c, f"send: {errno.errorcode.get(exc.errno, exc.errno)}")
            return
        if sent < len(data):
            c.out = data[sent:]
            ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    # Wait for the go time, then start every connection.
    delay = t0 - monotonic()
    if delay > 0:
        time.sleep(delay)
    for c in conns:
        issue(c)

    sending = True
    drain_deadline = t_end + DRAIN_SECONDS
    while True:
        now = monotonic()
        if sending:
            if not measuring and now >= t_meas:
                measuring = True
                cpu0, w0 = _cpu(), now
            if now >= t_end:
                sending = False
                cpu1, w1 = _cpu(), now
                if not measuring:  # warmup longer than the run: nothing measured
                    cpu0, w0 = cpu1, w1
        if not sending:
            if now >= drain_deadline or all(not c.alive or c.done >= len(c.kinds) for c in conns):
                break
        timeout = min(0.05, max(0.0, (t_meas if not measuring else t_end if sending else drain_deadline) - now))
        try:
            events = ep.poll(timeout)
        except InterruptedError:
            continue
        for fd, ev in events:
            c = by_fd[fd]
            if not c.alive:
                continue
            if ev & EPOLLOUT and c.out:
                try:
                    sent = c.sock.send(c.out)
                    c.out = c.out[sent:]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    fail(c, f"send: {errno.errorcode.get(exc.errno, exc.errno)}")
                    continue
                if not c.out:
                    ep.modify(fd, EPOLLIN)
            if not ev & IN_MASK:
                continue
            try:
                data = c.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                fail(c, f"recv: {errno.errorcode.get(exc.errno, exc.errno)}")
                continue
            t = monotonic()
            if not data:
                fail(c, "closed by server")
                continue
            try:
                replies = c.codec.feed(data)
            except CodecError as exc:
                fail(c, str(exc))
                continue
            if not replies:
                continue
            kinds = c.kinds
            i = c.done
            n = len(replies)
            if i + n > len(kinds):
                fail(c, "more replies than requests")
                continue
            for value in replies:
                if value is ERROR or (not value and kinds[i] in MUST_EXIST):
                    errors += 1
                    name = "error reply" if value is ERROR else "empty read"
                    error_kinds[name] = error_kinds.get(name, 0) + 1
                i += 1
            c.done = i
            if t_meas <= t < t_end:
                ops += n
                dt = t - c.t_sent
                for _ in range(n):
                    lat_append(dt)
            if i == len(kinds) and sending and t < t_end:
                issue(c)
    if w1 == 0.0:
        cpu1, w1 = _cpu(), monotonic()
    ep.close()
    return {
        "ops": ops,
        "errors": errors,
        "error_kinds": error_kinds,
        "dead_connections": dead,
        "latencies": lat,
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": w1 - w0,
        "pid": os.getpid(),
    }
