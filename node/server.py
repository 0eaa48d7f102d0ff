"""The TCP server of one node: trio around the sans-I/O codec and ``Node``.

One task per connection reads frames, runs each request in order and writes
the answers in the same order; every request complete in one read is answered
with one write, so pipelined clients pay one system call per batch. A lock
that has to be waited for is the only request that suspends; while it waits
the connection is still read, so a client that goes away stops waiting (and
hands back a lock granted to it) at once.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable

import trio

from protocol.codec import FrameDecoder, ProtocolError, encode_error, encode_ok, parse_request
from protocol.constants import Err

from .commands import CommandError, LockWait, Node
from .config import Config

log = logging.getLogger("msession.server")

READ_SIZE = 65536
SEND_THRESHOLD = 256 * 1024


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``period`` seconds, then counts what it drops.

    Any client can provoke a log line per bad frame; a flood must not fill the
    disk or block the event loop on a full stderr pipe.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, period: float = 10.0):
        self.logger, self.burst, self.period = logger, burst, period
        self._window = -period
        self._count = self._dropped = 0

    def info(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._window >= self.period:
            if self._dropped:
                self.logger.info("%d similar log lines suppressed", self._dropped)
            self._window, self._count, self._dropped = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.info(msg, *args)
        else:
            self._dropped += 1


class Counters:
    def __init__(self):
        self.connections_total = 0
        self.connections_refused = 0
        self.bad_frames = 0
        self.timeouts = 0


class _Conn:
    __slots__ = ("stream", "decoder", "eof", "peer")

    def __init__(self, stream: trio.SocketStream, max_frame: int):
        self.stream = stream
        self.decoder = FrameDecoder(max_frame)
        self.eof = False
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"


class Server:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.node = Node(config, clock)
        self.counters = Counters()
        self.connections = 0
        self.ports: list[tuple[str, int]] = []
        self._log = RateLimitedLog(log)

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled. ``task_status.started`` gets the bound addresses."""
        _raise_file_limit(self.config.max_connections + 256)
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.bind)
        except OSError as exc:
            raise SystemExit(f"msession: cannot listen on {self.config.bind}:{self.config.port}: {exc.strerror}") from None
        self.ports = [ln.socket.getsockname()[:2] for ln in listeners]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._housekeeping)
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.ports)

    async def _housekeeping(self) -> None:
        while True:
            now = self.clock()
            wake = self.node.housekeeping(now)
            await trio.sleep(max(0.01, min(wake - now, 1.0)))

    # -- one connection ---------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.counters.connections_total += 1
        if self.connections >= self.config.max_connections:
            self.counters.connections_refused += 1
            self._log.info("refusing a connection: %d connections open (max_connections)", self.connections)
            await self._send_and_close(stream, encode_error(None, Err.BUSY, "too many connections"))
            return
        self.connections += 1
        conn = _Conn(stream, self.config.max_frame)
        try:
            await self._serve_conn(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_conn(self, conn: _Conn) -> None:
        cfg = self.config
        partial_since: float | None = None  # when the incomplete frame began
        while True:
            if partial_since is None:
                budget = cfg.idle_timeout
            else:
                budget = partial_since + cfg.frame_timeout - trio.current_time()
            data = b""
            if not conn.eof:
                with trio.move_on_after(max(budget, 0)):
                    data = await conn.stream.receive_some(READ_SIZE)
                    if not data:
                        conn.eof = True
                if not data and not conn.eof:
                    self.counters.timeouts += 1
                    if partial_since is None:
                        msg = f"idle for {cfg.idle_timeout:g} s: closing"
                    else:
                        msg = f"frame not completed within {cfg.frame_timeout:g} s: closing"
                    self._log.info("%s: %s", conn.peer, msg)
                    await self._send_and_close(conn.stream, encode_error(None, Err.TIMEOUT, msg))
                    return
                conn.decoder.feed(data)
            answered = await self._run_frames(conn)
            if answered < 0 or conn.eof:
                return
            if not conn.decoder.pending:
                partial_since = None
            elif partial_since is None or answered:
                partial_since = trio.current_time()  # a new frame has begun

    async def _run_frames(self, conn: _Conn) -> int:
        """Answers every complete frame buffered.

        Returns how many frames were answered, or -1 when the connection must close.
        """
        out: list[bytes] = []
        size = answered = 0
        while True:
            try:
                body = conn.decoder.next_frame()
            except ProtocolError as exc:
                self._bad(conn, exc.message)
                out.append(encode_error(None, exc.code, exc.message))
                await self._send_and_close(conn.stream, b"".join(out))
                return -1
            if body is None:
                break
            answered += 1
            try:
                req = parse_request(body)
            except ProtocolError as exc:
                self._bad(conn, exc.message)
                out.append(encode_error(exc.request_id, exc.code, exc.message))
                continue
            try:
                result = self.node.execute(req.cmd, req.args, self.clock())
                if type(result) is LockWait:
                    if out:
                        await self._send(conn, b"".join(out))
                        out.clear()
                        size = 0
                    result = await self._wait_for_lock(conn, result)
                    if result is None:
                        return -1  # the client left while waiting
                answer = encode_ok(req.id, result)
            except CommandError as exc:
                self.node.stats["errors"] += 1
                answer = encode_error(req.id, exc.code, exc.message)
            except Exception as exc:  # a bug must not take the node down
                log.exception("internal error on command %s", req.cmd)
                answer = encode_error(req.id, Err.UNKNOWN, f"internal error: {type(exc).__name__}")
            self.node.stats["commands"] += 1
            out.append(answer)
            size += len(answer)
            if size >= SEND_THRESHOLD:  # do not let a burst of reads pile up answers
                await self._send(conn, b"".join(out))
                out.clear()
                size = 0
        if out:
            await self._send(conn, b"".join(out))
        return answered

    async def _send(self, conn: _Conn, data: bytes) -> None:
        """Sends answers; a client that reads nothing for ``idle_timeout`` is dropped."""
        with trio.move_on_after(self.config.idle_timeout):
            await conn.stream.send_all(data)
            return
        self.counters.timeouts += 1
        self._log.info("%s: not reading its answers for %g s: closing", conn.peer, self.config.idle_timeout)
        raise trio.BrokenResourceError("client does not read")

    async def _wait_for_lock(self, conn: _Conn, lw: LockWait) -> Any:
        """Waits for a queued lock while watching the connection for EOF.

        Returns the key, None if the client went away, or raises LOCKED.
        """
        event = trio.Event()
        lw.waiter.handle = event.set
        left = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal left
                try:
                    while conn.decoder.pending <= self.config.max_frame:
                        data = await conn.stream.receive_some(READ_SIZE)
                        if not data:
                            break
                        conn.decoder.feed(data)
                    else:
                        await trio.sleep_forever()  # enough buffered: stop reading
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                    pass
                left = conn.eof = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            with trio.move_on_after(lw.wait):
                await event.wait()
            nursery.cancel_scope.cancel()
        key = lw.waiter.key
        if left:
            if key:
                self.node.wake(self.node.locks.release(lw.sid, key, self.clock()))
            else:
                self.node.locks.cancel(lw.sid, lw.waiter)
            return None
        if not key:
            self.node.locks.cancel(lw.sid, lw.waiter)
            raise CommandError("LOCKED", f"session still locked after waiting {lw.wait:g} s")
        return key

    def _bad(self, conn: _Conn, message: str) -> None:
        self.counters.bad_frames += 1
        self._log.info("%s: bad frame: %s", conn.peer, message)

    async def _send_and_close(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.move_on_after(1):
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                pass
        await trio.aclose_forcefully(stream)


def _raise_file_limit(wanted: int) -> None:
    """Lets the process hold ``wanted`` descriptors if the hard limit allows."""
    try:
        import resource
    except ImportError:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "max_connections needs about %d file descriptors but the limit is %d: "
            "raise it (ulimit -n) or lower max_connections", wanted, soft,
        )


async def main_async(config: Config, ready: Callable[[list], None] | None = None) -> None:
    """Runs a node until SIGTERM or SIGINT, then shuts down cleanly."""
    server = Server(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(server.run)
            for host, port in ports:
                log.info("msession listening on %s:%d", host, port)
            if ready:
                ready(ports)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
