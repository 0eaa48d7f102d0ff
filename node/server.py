"""The TCP server of one node: trio around the sans-I/O codec and ``Node``.

One task per connection reads frames, runs each request in order and writes
the answers in the same order; every request complete in one read is answered
with one write, so pipelined clients pay one system call per batch. A request
suspends the connection only when it waits: for a lock (while it waits the
connection is still read, so a client that goes away stops waiting and hands
back a lock granted to it at once), or, in a farm, for the member it was
forwarded to or for the node to join the farm. A member's connection is
answered out of order instead, except for a waiting lock.

Timeouts cost nothing per request: each connection has one cancel scope whose
deadline ``node/deadlines.py`` decides (the idle deadline, moved only when it
comes near, or an incomplete frame's deadline); this module only copies it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import time
from typing import Any, Callable, Iterator

import outcome
import trio

from cluster.peer_wire import is_member_hello, parse_fwd
from protocol.client import lock_may_wait
from protocol.codec import Encoder, FrameDecoder, ProtocolError, decode_request
from protocol.constants import Cmd, Err

from .commands import RUN_LOCAL, CommandError, LockWait, Node
from .config import Config
from .deadlines import ConnDeadline
from .logs import RateLimitedLog

log = logging.getLogger("msession.server")

READ_SIZE = 65536
SEND_THRESHOLD = 256 * 1024
YIELD_EVERY = 64  # requests answered in a row before other connections get a turn
DRAIN_POLL = 0.02  # seconds between two looks for connections drain() may close
DRAIN_TIMEOUT = 5.0  # seconds a node stopping on SIGTERM lets requests in progress finish
SHUTDOWN_BUDGET = 9.0  # seconds for leave and drain together (launchers SIGKILL after 10: node/farm.py)


class Counters:
    def __init__(self):
        self.connections_total = 0
        self.connections_refused = 0
        self.bad_frames = 0
        self.timeouts = 0


class _Conn:
    """One client connection: a non-blocking socket and its frame buffer.

    The hot path calls the socket directly and only parks on trio's
    ``wait_readable``/``wait_writable`` (public ``trio.lowlevel`` API), which
    is one scheduler trip per request instead of the several a ``SocketStream``
    takes. Every read starts with a wait, so a client that pipelines without
    end cannot starve the others.
    """

    __slots__ = ("sock", "fd", "decoder", "eof", "peer", "scope", "timer", "cut", "send_lock", "idle", "later")

    def __init__(self, sock: socket.socket, addr: Any, config: Config):
        self.sock = sock
        self.fd = sock.fileno()  # trio waits on the number: no fileno() call per wait
        self.decoder = FrameDecoder(config.max_frame)
        self.eof = False
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.timer = ConnDeadline(config.idle_timeout, config.frame_timeout, trio.current_time())
        self.scope = trio.CancelScope(deadline=self.timer.deadline)  # carries the timer's deadline
        self.cut = False  # an answer was cut off mid-send: nothing more may be sent
        # Set for another member's connection: it matches answers by id, so a
        # request that waits on the farm is answered when ready, out of order,
        # and holds back nothing behind it. Answers then go out under this lock.
        self.send_lock: trio.Lock | None = None
        self.idle = False  # waiting for the next request (nothing of this connection's in progress)
        self.later = 0  # a member's requests being answered out of order (``_answer_later``)

    def sync_deadline(self) -> None:
        if self.scope.deadline != self.timer.deadline:  # moving it costs: only on change
            self.scope.deadline = self.timer.deadline

    @contextlib.contextmanager
    def deadline_lifted(self) -> Iterator[None]:
        """While a request waits with a limit of its own (a lock, a member's
        answer): no connection deadline; after it the idle clock starts again
        (``ConnDeadline.waiting``/``waited``)."""
        self.timer.waiting()
        self.sync_deadline()
        try:
            yield
        finally:
            self.timer.waited(trio.current_time())
            self.sync_deadline()

    async def recv(self) -> bytes:
        """The next bytes from the client; b"" at end of stream."""
        await _wait_readable(self.fd)
        while True:
            try:
                return self.sock.recv(READ_SIZE)
            except BlockingIOError:
                await _wait_readable(self.fd)
            except OSError:  # reset by the peer
                return b""

    async def send(self, data: bytes) -> None:
        if self.send_lock is None:
            sent = self.send_now(data)
            if sent < len(data):
                await self._send(data, sent)
        else:
            async with self.send_lock:
                await self._send(data)

    def send_now(self, data: bytes) -> int:
        """One non-blocking send (the usual case: the whole answer fits in the
        socket buffer); how many bytes went. Only for a connection without
        ``send_lock``; ``_send(data, sent)`` sends the rest."""
        if not data:
            return 0
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ConnectionError(str(exc)) from None

    async def _send(self, data: bytes, start: int = 0) -> None:
        view = memoryview(data)[start:]
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(self.fd)
                except trio.Cancelled:
                    self.cut = view.nbytes < len(data)
                    raise
                continue
            except OSError as exc:
                raise ConnectionError(str(exc)) from None
            view = view[sent:]


_wait_readable = trio.lowlevel.wait_readable
_FWD, _HELLO, _SLOCK = int(Cmd.FWD), int(Cmd.HELLO), int(Cmd.SLOCK)

_LEFT = object()  # the client went away while its request ran elsewhere
_STOPPING = "node is shutting down: retry elsewhere"
MAX_LOCK_MOVES = 3  # times a waiting SLOCK follows its lock to another member before its connection closes with BUSY


class _NotRun:
    """An SLOCK that is not to wait here, nor anywhere through us (the node is
    stopping, or the lock kept moving): the connection closes with a BUSY
    saying so, so the client sends it, and the rest of its batch, elsewhere."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class _Moved:
    """A waiting SLOCK's lock moved to another member with its session."""

    __slots__ = ("wait_left",)

    def __init__(self, wait_left: float):
        self.wait_left = wait_left


def _drain(out: list[bytes]) -> bytes:
    """The answers gathered in ``out`` as one block to send (one send call per
    batch); ``out`` is left empty."""
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    return data


MEMBER_SLACK = 64 * 1024  # bytes a member's connection may exceed max_frame by (FWD's envelope)


class Server:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.node = Node(config, clock)
        self.cluster = None  # set by open_node in a farm: cluster.runtime.Cluster
        self._nursery: trio.Nursery | None = None
        self.counters = Counters()
        self.connections = 0
        self.ports: list[tuple[str, int]] = []
        self._log = RateLimitedLog(log)
        self._encoder = Encoder()
        self._listeners: list[socket.socket] = []
        self._conns: set[_Conn] = set()
        self._remote_waits: set[trio.CancelScope] = set()  # SLOCKs waiting on other members
        self.draining = False
        self.node.info_providers.append(self._info)

    def _info(self) -> dict:
        c = self.counters
        return {
            "connections": self.connections,
            "connections_total": c.connections_total,
            "connections_refused": c.connections_refused,
            "bad_frames": c.bad_frames,
            "timeouts": c.timeouts,
            "max_connections": self.config.max_connections,
        }

    # -- lifecycle -------------------------------------------------------------

    async def listen(self) -> list[tuple[str, int]]:
        """Opens the listening sockets; raises SystemExit with a clear message."""
        _raise_file_limit(self.config.max_connections + 256)
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.bind)
        except OSError as exc:
            raise SystemExit(f"msession: cannot listen on {self.config.bind}:{self.config.port}: {exc.strerror}") from None
        for ln in listeners:  # plain non-blocking sockets from here on
            sock = socket.socket(fileno=ln.socket.detach())
            sock.setblocking(False)
            self._listeners.append(sock)
        self.ports = [sock.getsockname()[:2] for sock in self._listeners]
        return self.ports

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled. ``task_status.started`` gets the bound addresses."""
        if not self._listeners:
            await self.listen()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._housekeeping)
                for sock in self._listeners:
                    nursery.start_soon(self._accept, sock, nursery)
                task_status.started(self.ports)
        finally:
            for sock in self._listeners:
                _close(sock)

    async def drain(self, timeout: float) -> None:
        """Stops serving, gracefully (SIGTERM): a new connection is refused
        with BUSY, and each open one is closed with BUSY as soon as it is
        between requests (nothing of it running, no frame half received), so
        its client gets either the answer to a request or a BUSY saying that
        it did not run. A lock wait, here or through us on another member,
        ends at once: its connection closes with that BUSY after the answers
        before it (the client sends the SLOCK and the rest of its batch
        elsewhere). A request forwarded to another member gets its answer
        first. Returns when every connection is closed, or after ``timeout``
        seconds (the rest are then cut by the caller)."""
        self.draining = True
        for waiter in self.node.locks.all_waiters():  # a lock wait here ends now, with BUSY
            if waiter.handle is not None:
                waiter.handle()
        for scope in self._remote_waits:  # and one through us on another member
            scope.cancel()
        with trio.move_on_after(timeout):
            while self._conns:
                for conn in self._conns:
                    if conn.idle and not conn.later and not conn.decoder.pending:
                        conn.scope.cancel()
                await trio.sleep(DRAIN_POLL)

    async def _housekeeping(self) -> None:
        while True:
            now = self.clock()
            wake = self.node.housekeeping(now)
            if wake <= now:
                await trio.lowlevel.checkpoint()  # more due: let connections run, then go on
                continue
            kicked = trio.Event()
            self.node.kick = kicked.set  # a lease now ends sooner: wake up early
            with trio.move_on_after(max(0.01, min(wake - now, 1.0))):
                await kicked.wait()

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, addr = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self._log.info("cannot accept a connection: %s", exc.strerror)
                        await trio.sleep(0.1)
                        break
                    continue  # the client gave up before we accepted (ECONNABORTED, ...)
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self._handle, sock, addr)

    # -- one connection ---------------------------------------------------------

    async def _handle(self, sock: socket.socket, addr: Any) -> None:
        self.counters.connections_total += 1
        conn = _Conn(sock, addr, self.config)
        if self.draining:
            self.counters.connections_refused += 1
            await self._send_and_close(conn, self._encoder.error(None, Err.BUSY, _STOPPING))
            return
        if self.connections >= self.config.max_connections:
            self.counters.connections_refused += 1
            self._log.info("refusing a connection: %d connections open (max_connections)", self.connections)
            await self._send_and_close(conn, self._encoder.error(None, Err.BUSY, "too many connections"))
            return
        self.connections += 1
        self._conns.add(conn)
        try:
            await self._serve_conn(conn)
        except ConnectionError:
            pass  # the client went away
        finally:
            self.connections -= 1
            self._conns.discard(conn)
            _close(sock)

    async def _serve_conn(self, conn: _Conn) -> None:
        timer = conn.timer
        decoder = conn.decoder
        now = trio.lowlevel.current_clock().current_time  # trio.current_time() without its two wrappers
        with conn.scope:
            while True:
                conn.idle = True
                data = await conn.recv()
                t = now()
                if t >= conn.scope.deadline or (self.draining and conn.scope.cancel_called):
                    # Closed (deadline passed, or drain()) as these bytes came: none of
                    # them runs, and the TIMEOUT or BUSY below says so, rather than
                    # part of them running before the cancellation cuts in.
                    break
                conn.idle = False
                if not data:
                    conn.eof = True
                    return
                decoder.feed(data)
                if timer.received(t, decoder):
                    conn.scope.deadline = timer.deadline
                answered = await self._run_frames(conn)
                if answered < 0 or conn.eof:
                    return
                if timer.answered(now, decoder.pending):
                    conn.scope.deadline = timer.deadline
        # Out of the loop only by its break or a cancellation: the deadline, or drain().
        if self.draining and conn.idle and conn.scope.cancel_called:
            # Closed between requests by drain(): whatever the client sent
            # since did not run, and the BUSY before it says so.
            await self._send_and_close(conn, self._encoder.error(None, Err.BUSY, _STOPPING))
        else:
            self.counters.timeouts += 1
            if conn.cut:
                # The client stopped reading in the middle of an answer: a
                # TIMEOUT frame now would land inside that answer.
                self._log.info("%s: not reading its answers: closing", conn.peer)
                return
            msg = timer.reason()
            self._log.info("%s: %s", conn.peer, msg)
            await self._send_and_close(conn, self._encoder.error(None, Err.TIMEOUT, msg))

    async def _run_frames(self, conn: _Conn) -> int:
        """Answers every complete frame buffered.

        Returns how many frames were answered, or -1 when the connection must close.
        """
        encoder = self._encoder
        ok = encoder.ok
        decoder = conn.decoder
        execute = self.node.execute
        clock = self.clock
        cluster = self.cluster
        out: list[bytes] = []
        size = answered = 0
        while True:
            try:
                body = decoder.next_frame()
            except ProtocolError as exc:
                self._bad(conn, exc.message)
                out.append(encoder.error(None, exc.code, exc.message))
                await self._send_and_close(conn, _drain(out))
                return -1
            if body is None:
                break
            answered += 1
            try:
                rid, cmd, args = decode_request(body)
            except ProtocolError as exc:
                self._bad(conn, exc.message)
                out.append(encoder.error(exc.request_id, exc.code, exc.message))
                continue
            received_cmd, step, hops = cmd, None, 0
            try:
                if cluster is not None:
                    if cmd == _FWD:
                        cmd, args, hops = parse_fwd(args)
                    step = cluster.route(cmd, args, hops)
                if step is not None and conn.send_lock is not None and not lock_may_wait(cmd, args):
                    # (A lock that may wait comes on a link of its own, as Cluster.call sends it: in line.)
                    conn.later += 1  # (before it starts: drain() must see it at once)
                    self._nursery.start_soon(self._answer_later, conn, rid, cmd, args, step)
                    continue
                if step is not None:
                    if out:  # answers so far go out before we wait on another member
                        await conn.send(_drain(out))
                        size = 0
                    result = await self._remote(conn, step, cmd == _SLOCK, args)
                    if result is _LEFT:
                        return -1
                    if type(result) is _NotRun:  # (its answers so far are out)
                        await self._close_not_run(conn, result)
                        return -1
                    if result is RUN_LOCAL:
                        step = None
                if step is None:
                    result = execute(cmd, args, clock())
                    if cmd == _HELLO and cluster is not None and is_member_hello(args):
                        # Forwarded requests carry an envelope: room for it.
                        decoder.max_frame = self.config.max_frame + MEMBER_SLACK
                        conn.send_lock = conn.send_lock or trio.Lock()
                if type(result) is LockWait:
                    size = 0
                    result = await self._lock(conn, result, _drain(out), args, hops)  # answers so far go first
                    if result is None:
                        return -1  # the client left while waiting
                    if type(result) is _NotRun:  # (its answers so far are out)
                        await self._close_not_run(conn, result)
                        return -1
                answer = ok(rid, result)
            except ConnectionError:
                raise
            except Exception as exc:
                answer = self._failed(rid, received_cmd, exc)
            out.append(answer)
            size += len(answer)
            if size >= SEND_THRESHOLD:  # do not let a burst of reads pile up answers
                await conn.send(_drain(out))
                size = 0
            if answered % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()  # a long pipeline must not starve the others
        if out:
            data = _drain(out)
            if conn.send_lock is None:
                sent = conn.send_now(data)  # conn.send(data) without a coroutine when it all goes at once
                if sent < len(data):
                    await conn._send(data, sent)
            else:
                await conn.send(data)
        return answered

    def _failed(self, rid: Any, cmd: int, exc: Exception) -> bytes:
        """The answer to a request that raised: its error, or, for a bug (which
        must not take the node down), UNKNOWN and a rate-limited log line.
        Counted in ``command_errors`` unless ``Node.execute`` (or the member
        that ran it) already counted it."""
        if isinstance(exc, CommandError):
            if not exc.counted:  # refused by the farm's routing (BUSY, UNAVAILABLE, a bad FWD, ...)
                self.node.stats["errors"] += 1
            return self._encoder.error(rid, exc.code, exc.message)
        self.node.stats["errors"] += 1
        self._log.info("internal error on command %s", cmd, exc_info=True)
        return self._encoder.error(rid, Err.UNKNOWN, f"internal error: {type(exc).__name__}")

    async def _answer_later(self, conn: _Conn, rid: Any, cmd: int, args: Any, step: Callable) -> None:
        """A member's request that waits on the farm, answered when ready
        (``conn.later`` was counted up when it was started)."""
        try:
            try:
                result = await step()
                if result is RUN_LOCAL:
                    result = self.node.execute(cmd, args, self.clock())  # never a LockWait: no SLOCK that may wait
                answer = self._encoder.ok(rid, result)
            except Exception as exc:
                answer = self._failed(rid, cmd, exc)
            if not conn.eof and conn.sock.fileno() >= 0:
                await conn.send(answer)
        except (ConnectionError, OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the member went away meanwhile
        finally:
            conn.later -= 1

    async def _remote(self, conn: _Conn, step: Callable, waits: bool, args: Any) -> Any:
        """Runs a request's step on other members. An SLOCK also watches the
        client: if it leaves, the step is cancelled (its own connection
        closes, so the owner drops the waiter) and a lock granted meanwhile is
        released. Every SLOCK, not only one that may wait (``lock_may_wait``):
        a granted key its client never hears of must be released."""
        if not waits:
            return await step()
        left, result = await self._watching(conn, step, lock_may_wait(_SLOCK, args))
        if left:
            if type(result) is outcome.Value and type(result.value) is int:
                self.cluster.release_lock(args, result.value)
            return _LEFT
        if self.draining and (result is None or (type(result) is outcome.Error and isinstance(result.error, trio.Cancelled))):
            return _NotRun(_STOPPING)  # drain() ended the wait: the client asks elsewhere
        return result.unwrap()

    async def _watching(self, conn: _Conn, fn: Callable, waits: bool) -> tuple[bool, Any]:
        """Runs ``fn`` while reading ahead on the connection, whose own
        deadline is lifted meanwhile: (did the client leave, ``fn``'s outcome
        or None). If the client leaves, ``fn`` is cancelled; if it ``waits``
        (a lock wait), drain() cancels it too."""
        result = None
        left = False
        with conn.deadline_lifted():  # the wait has its own limit
            scope = None
            try:
                async with trio.open_nursery() as nursery:
                    if waits:
                        scope = nursery.cancel_scope
                        self._remote_waits.add(scope)  # drain() ends it
                        if self.draining:
                            scope.cancel()

                    async def run() -> None:
                        nonlocal result
                        result = await outcome.acapture(fn)
                        nursery.cancel_scope.cancel()

                    async def watch() -> None:
                        nonlocal left
                        left = await self._watch_eof(conn)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(run)
                    nursery.start_soon(watch)
            finally:
                self._remote_waits.discard(scope)
        return left, result

    async def _watch_eof(self, conn: _Conn) -> bool:
        """Reads ahead while a request waits: True when the client has gone.
        Stops reading (and sleeps) once a frame's worth is buffered."""
        while conn.decoder.pending <= self.config.max_frame:
            data = await conn.recv()
            if not data:
                conn.eof = True
                return True
            conn.decoder.feed(data)
        await trio.sleep_forever()
        return False  # pragma: no cover

    async def _lock(self, conn: _Conn, lw: LockWait, flush: bytes, args: list, hops: int) -> Any:
        """Waits for a queued lock (``_wait_for_lock``); if the lock moves to
        another member with its session meanwhile, asks there for the wait
        left, as a request routed afresh. The key, None if the client left, or
        ``_NotRun`` (the node is stopping, or the lock kept moving)."""
        for moves in range(MAX_LOCK_MOVES + 1):
            result = await self._wait_for_lock(conn, lw, flush)
            if type(result) is not _Moved:
                return result
            if self._stopping():
                return _NotRun(_STOPPING)  # not a wait through a member that goes away
            if moves == MAX_LOCK_MOVES:
                break
            flush = b""
            args = [args[0], max(0, int(result.wait_left * 1000))] + args[2:3]
            step = self.cluster.route(_SLOCK, args, hops) if self.cluster is not None else None
            if step is not None:
                result = await self._remote(conn, step, True, args)
                if result is _LEFT:
                    return None
                if result is not RUN_LOCAL:
                    return result
            result = self.node.execute(_SLOCK, args, self.clock())
            if type(result) is not LockWait:
                return result
            lw = result
        return _NotRun("the session's lock kept moving between members while we waited: retry")

    async def _close_not_run(self, conn: _Conn, not_run: _NotRun) -> None:
        """Closes with a connection-level BUSY: nothing unanswered ran. A
        member's requests being answered out of order finish first (a member
        sends a waiting SLOCK on a link of its own, so there are none today)."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            while conn.later:
                await trio.sleep(DRAIN_POLL)
        await self._send_and_close(conn, self._encoder.error(None, Err.BUSY, not_run.message))

    def _stopping(self) -> bool:
        return self.draining or (self.cluster is not None and self.cluster.leaving)

    async def _wait_for_lock(self, conn: _Conn, lw: LockWait, flush: bytes) -> Any:
        """Sends ``flush`` (earlier answers), then waits for a queued lock while
        watching the connection for EOF.

        Returns the key, None if the client went away, ``_Moved`` if the lock
        moved to another member with its session, ``_NotRun`` if the node
        drains (no waiting on a node that stops), or raises LOCKED. On
        every other way out the waiter leaves the queue, or hands on a lock
        granted to it meanwhile: a lock is never left to a client that will not
        hear of it.

        The connection's own task waits, in one cancel scope: it reads ahead
        (``_watch_eof``) and the grant cancels the scope, whose deadline is the
        wait's limit. No nursery, no second task, no Event.
        """
        waiter = lw.waiter
        scope = trio.CancelScope()
        waiter.handle = scope.cancel  # before any await: a grant must not be missed
        if self.draining:
            scope.cancel()  # no waiting on a node that stops: BUSY below (drain() woke the others)
        left = delivered = False
        try:
            if flush:
                await conn.send(flush)  # under the idle deadline: the client must read
            if not waiter.key:
                scope.deadline = trio.current_time() + lw.wait
                with conn.deadline_lifted(), scope:  # the wait has its own limit (test_a_stalled_loop_...)
                    left = await self._watch_eof(conn)
            if left:
                return None
            if waiter.moved:
                return _Moved(scope.deadline - trio.current_time())
            if not waiter.key and self.draining:
                return _NotRun(_STOPPING)
            if not waiter.key:
                raise CommandError("LOCKED", f"session still locked after waiting {lw.wait:g} s")
            delivered = True
            return waiter.key
        finally:
            waiter.handle = None
            if not delivered:
                if waiter.key:
                    if not self.node.unlock_abandoned(lw.sid, waiter.key) and self.cluster is not None:
                        self.cluster.release_lock([lw.sid], waiter.key)  # it moved on with its session
                else:
                    self.node.locks.cancel(lw.sid, waiter)

    def _bad(self, conn: _Conn, message: str) -> None:
        self.counters.bad_frames += 1
        self._log.info("%s: bad frame: %s", conn.peer, message)

    async def _send_and_close(self, conn: _Conn, data: bytes) -> None:
        """Sends a last error and closes, without letting a reset swallow it.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy our answer before the client reads it; so: send, shut down our
        side, discard what the client still sends (at most 1 s, 4 MiB), close.
        """
        try:
            with trio.move_on_after(1):
                await conn.send(data)
                conn.sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < 4 * 1024 * 1024:
                    chunk = await conn.recv()
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass
        finally:
            _close(conn.sock)


def _close(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()


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


async def main_async(config: Config) -> None:
    """Runs a node until SIGTERM or SIGINT, then shuts down cleanly (a farm
    member first leaves the farm and hands its sessions on)."""
    try:
        await _main(config)
    except BaseExceptionGroup as group:
        exit_ = group.subgroup(lambda e: isinstance(e, SystemExit))
        if exit_ is None:
            raise
        while isinstance(exit_, BaseExceptionGroup):
            exit_ = exit_.exceptions[0]
        raise exit_ from None


async def open_node(config: Config) -> Server:
    """A node as ``msession serve`` runs one, its ports bound: it listens and,
    in a farm (``gossip_port`` >= 0), binds the gossip port
    (``server.cluster``). Outside any nursery, so a busy port is one clear
    line; then ``start_node``."""
    server = Server(config)
    await server.listen()
    if config.gossip_port >= 0:
        from cluster.runtime import Cluster

        cluster = Cluster(config, server.node, server.clock)
        await cluster.open(server.ports[0])
        server.cluster = cluster
    return server


async def start_node(nursery: trio.Nursery, server: Server) -> list[tuple[str, int]]:
    """Starts an ``open_node`` node in ``nursery``: gossip first, then serving.
    Its listening addresses."""
    cluster = server.cluster
    if cluster is not None:
        await nursery.start(cluster.run)
        log.info("gossip on %s:%d as %s", cluster.host, cluster.gossip_port, cluster.name)
    ports = await nursery.start(server.run)
    for host, port in ports:
        log.info("msession listening on %s:%d", host, port)
    return ports


async def _main(config: Config) -> None:
    server = await open_node(config)
    cluster = server.cluster
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await start_node(nursery, server)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                end = trio.current_time() + SHUTDOWN_BUDGET
                if cluster is not None:
                    with trio.move_on_at(end - 1.0):  # (its own plan takes about 2 to 7 s)
                        await cluster.leave()
                await server.drain(min(DRAIN_TIMEOUT, end - trio.current_time()))
                nursery.cancel_scope.cancel()
                break
