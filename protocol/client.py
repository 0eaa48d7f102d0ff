"""Python clients for msession: ``Client`` (blocking sockets) and ``AsyncClient`` (trio).

Both have the same methods, named after the PHP functions without the
``msession_`` prefix; ``AsyncClient``'s are awaited. Session ids, variable names
and other names are ``str`` (any bytes survive: they are decoded as UTF-8 with
``surrogateescape``); values, session data and plugin answers are ``bytes``.
Arguments may be ``str`` or ``bytes``.

Given several nodes, a client connects to the first that answers and fails
over to the next when a node does not answer. A request that was already sent
when its node failed is retried on the next node only if repeating it is
harmless; ``create``, ``inc``, ``uniq``, ``lock`` and ``unlock`` raise
``MsessionError`` with code ``BADCONN`` instead, since they may have been
applied.

    with Client(port=8086) as c:
        c.create("s1")
        c.set("s1", "user", "alice")
        c.get("s1", "user")            # b'alice'
        with c.pipeline() as p:        # one round trip
            p.inc("s1", "hits"); p.get_array("s1")
            hits, everything = p.execute()
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any, Callable, Iterable, Iterator

import trio

from .codec import ClientProtocol, ProtocolError, Response
from .constants import DEFAULT_MAX_FRAME, DEFAULT_PORT, PROTOCOL_VERSION, Cmd, Ctl, Err, error_name

__all__ = ["Client", "AsyncClient", "MsessionError", "parse_node"]

NOT_IDEMPOTENT = frozenset({Cmd.CREATE, Cmd.INC, Cmd.UNIQ, Cmd.SLOCK, Cmd.SUNLOCK, Cmd.PLUGIN, Cmd.CALL, Cmd.FWD, Cmd.HANDOFF, Cmd.TAKE})
DEFAULT_MAX_ANSWER = 256 * 1024 * 1024  # LIST of a million sessions is ~40 MB
_SEND_LIMIT = 30.0  # seconds a started send may take, even when its caller is cancelled
_CONCURRENT_SEND = 64 * 1024  # batches above this are sent while answers are read


class MsessionError(Exception):
    """An error answer (``code`` is its name, e.g. ``"NOSESSION"``) or a failed connection."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


def parse_node(spec: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host"``, ``"host:port"`` or ``"[v6addr]:port"`` -> ``(host, port)``."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    else:
        host, port = spec, ""
    if not host:
        raise ValueError(f"no host in node address {spec!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in node address {spec!r}") from None


def _nodes(host: str, port: int, nodes: Iterable[str] | None) -> list[tuple[str, int]]:
    if nodes is None:
        return [(host, port)]
    if isinstance(nodes, str):
        nodes = nodes.split(",")
    out = [parse_node(n) for n in nodes if n.strip()]
    if not out:
        raise ValueError("no nodes given")
    return out


# -- argument and result conversion ------------------------------------------------


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _ms(seconds: float | None) -> int:
    return max(0, int(round(seconds * 1000)))


def _ident(v):
    return v


def _none(v):
    return None


def _ids(v):
    return [_s(x) for x in v]


def _str(v):
    return _s(v)


def _map(v):
    return {_s(k): val for k, val in v.items()}


def as_text(v: Any) -> Any:
    """``v`` with every byte string (and str) made printable text, recursively
    through lists and maps (invalid UTF-8 replaced): status maps, JSON output."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(v, list):
        return [as_text(x) for x in v]
    if isinstance(v, dict):
        return {as_text(k): as_text(x) for k, x in v.items()}
    return v


def _true(v):
    return True


class _Commands:
    """The contract's methods; subclasses provide ``_call(cmd, args, convert)``."""

    def _call(self, cmd: int, args: list, convert: Callable[[Any], Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def ping(self):
        return self._call(Cmd.PING, [], _true)

    def count(self):
        return self._call(Cmd.COUNT, [], _ident)

    def info(self):
        """The node's counters: sessions, connections, commands, errors, ..."""
        return self._call(Cmd.INFO, [], _map)

    def status(self):
        """The farm as the asked node sees it: members, their states and the ring."""
        return self._call(Cmd.STATUS, [], as_text)

    def create(self, session, classname=None, data=None):
        args = [_b(session)]
        if classname is not None or data is not None:
            args.append(_b(classname or b""))
        if data is not None:
            args.append(_b(data))
        return self._call(Cmd.CREATE, args, _true)

    def destroy(self, session):
        return self._call(Cmd.DROP, [_b(session)], _true)

    def set(self, session, name, value):
        return self._call(Cmd.SETVAL, [_b(session), _b(name), _b(value)], _true)

    def get(self, session, name, default=None):
        return self._call(Cmd.GETVAL, [_b(session), _b(name)], lambda v: default if v is None else v)

    def get_array(self, session):
        return self._call(Cmd.GETALL, [_b(session)], _map)

    def set_array(self, session, pairs: dict):
        return self._call(Cmd.SETVAL, [_b(session), {_b(k): _b(v) for k, v in pairs.items()}], _none)

    def getdata(self, session):
        return self._call(Cmd.DATAGET, [_b(session)], _ident)

    def setdata(self, session, data):
        return self._call(Cmd.DATASET, [_b(session), _b(data)], _true)

    def inc(self, session, name, delta: int = 1):
        args = [_b(session), _b(name)]
        if delta != 1:
            args.append(int(delta))
        return self._call(Cmd.INC, args, _ident)

    def find(self, name, value):
        return self._call(Cmd.FIND, [_b(name), _b(value)], _ids)

    def list(self):
        return self._call(Cmd.LIST, [], _ids)

    def listvar(self, name):
        return self._call(Cmd.LISTVAR, [_b(name)], _map)

    def lock(self, session, wait: float | None = None, lease: float | None = None):
        """Locks ``session`` and returns the key. Waits up to ``wait`` seconds for
        a holder to unlock (0: fail at once with LOCKED; None: the server's
        ``lock_wait``); the lock's lease is ``lease`` seconds (None: ``lock_lease``)."""
        args: list = [_b(session), None if wait is None else _ms(wait)]
        if lease is not None:
            args.append(_ms(lease))
        return self._call(Cmd.SLOCK, args, _ident)

    def unlock(self, session, key: int):
        return self._call(Cmd.SUNLOCK, [_b(session), int(key)], _ident)

    def timeout(self, session, seconds: int | None = None):
        args = [_b(session)] if seconds is None else [_b(session), int(seconds)]
        return self._call(Cmd.TIMEOUT, args, _ident)

    def uniq(self, num_chars: int = 32, classname=None, data=None):
        args: list = [int(num_chars)]
        if classname is not None or data is not None:
            args.append(_b(classname or b""))
        if data is not None:
            args.append(_b(data))
        return self._call(Cmd.UNIQ, args, _str)

    def randstr(self, num_chars: int):
        return self._call(Cmd.RANDSTR, [int(num_chars)], _str)

    def plugin(self, session, val, param=None):
        args = [_b(session), _b(val)] + ([] if param is None else [_b(param)])
        return self._call(Cmd.PLUGIN, args, _ident)

    def call(self, fn_name, *params):
        if len(params) > 4:
            raise TypeError("call() takes at most 4 parameters")
        return self._call(Cmd.CALL, [_b(fn_name)] + [_b(p) for p in params], _ident)

    def ctl(self, session, which: str | int = "EXIST"):
        code = Ctl[which.upper()] if isinstance(which, str) else Ctl(which)
        return self._call(Cmd.CTL, [_b(session), int(code)], _ident)


class _NotExecuted(Exception):
    """The node refused the connection (BUSY) or closed it (TIMEOUT) before it
    ran any of our requests: they may be sent to another node, whatever they are."""

    def __init__(self, error: MsessionError):
        super().__init__(str(error))
        self.error = error


def _connection_error(resp: Response, answered: bool) -> Exception:
    """The exception for an answer with a nil id: the node is closing the connection."""
    error = MsessionError(error_name(resp.code), resp.message)
    if not answered and error.code in ("BUSY", "TIMEOUT"):
        return _NotExecuted(error)  # answers come in order: none of ours ran
    return error


def _busy_rest(resp: Response, answers: dict[int, Response], ids: Iterable[int]) -> bool:
    """A node that closes a connection with BUSY (it is shutting down) has
    answered everything it ran: after some answers of a batch, each request
    left gets a BUSY answer of its own (it did not run), in ``answers``.
    True if so; False for any other closing error, or when nothing was answered
    (``_connection_error``'s case: the whole batch may go elsewhere)."""
    if not answers or resp.code != Err.BUSY:
        return False
    for rid in ids:
        if rid not in answers:
            answers[rid] = Response(rid, False, None, resp.code, resp.message)
    return True


class _Attempts:
    """After a failed exchange, what next (sans-I/O): the same node again, the
    next node, or an error for the caller.

    A request the node never ran (its connection closed while idle, or broke
    before our bytes went out) goes again, twice at most, to the same node.
    Otherwise each node is tried once, and a request that may have been applied
    (``NOT_IDEMPOTENT``) is not sent again at all.
    """

    SAME, NEXT = "same", "next"

    def __init__(self, requests: list[tuple[int, list]], nodes: int, request_timeout: float):
        self.safe = not any(cmd in NOT_IDEMPOTENT for cmd, _ in requests)
        self.timeout = request_timeout + max(lock_wait(cmd, args) for cmd, args in requests)
        self.nodes_left = nodes
        self.same_node_retries = 2

    def failed(self, exc: Exception) -> str:
        if isinstance(exc, _NotExecuted) and exc.error.code in ("TIMEOUT", "BADCONN") and self.same_node_retries:
            self.same_node_retries -= 1
            return self.SAME
        self.nodes_left -= 1
        if isinstance(exc, _NotExecuted):
            if self.nodes_left <= 0:
                raise exc.error from None
        elif isinstance(exc, MsessionError):
            raise exc
        elif not self.safe:
            raise MsessionError("BADCONN", f"node failed during a request that may have been applied: {exc!r}") from None
        elif self.nodes_left <= 0:
            raise MsessionError("BADCONN", f"request failed on every node: {exc!r}") from None
        return self.NEXT


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read right now (poll: any fd number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The exception to raise for a nursery's group: a real error before a Cancelled."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        else:
            leaves.append(exc)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return (real or leaves)[0]


def _check_size(data: bytes, server_info: dict) -> None:
    limit = server_info.get("max_frame", DEFAULT_MAX_FRAME) + 4
    if len(data) > limit:
        raise MsessionError("BADLEN", f"request of {len(data) - 4} bytes exceeds the node's max_frame of {limit - 4}")


class _ClientBase(_Commands):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        nodes: Iterable[str] | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_answer: int = DEFAULT_MAX_ANSWER,
    ):
        self.nodes = _nodes(host, port, nodes)
        self.request_timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_answer = max_answer
        self._next = 0  # index of the node to try first
        self.server_info: dict = {}

    def _candidates(self) -> Iterator[tuple[int, tuple[str, int]]]:
        """The nodes in the order to try them, the current one first (as it is
        now: another task failing over meanwhile does not reorder them)."""
        start = self._next
        for i in range(len(self.nodes)):
            index = (start + i) % len(self.nodes)
            yield index, self.nodes[index]

    def _failed_over(self, addr: tuple[str, int] | None = None) -> None:
        """The next node becomes the current one; with ``addr`` (the node that
        failed), only if it is still the current one: tasks failing together
        on one connection move on once."""
        if addr is None or self.nodes[self._next] == addr:
            self._next = (self._next + 1) % len(self.nodes)


def _noconnect(errors: list[str]) -> MsessionError:
    return MsessionError("NOCONNECT", "no node answered (" + "; ".join(errors) + ")")


def _result(resp: Response, convert: Callable) -> Any:
    if not resp.ok:
        raise MsessionError(error_name(resp.code), resp.message)
    return convert(resp.value)


def _wait_ms(args: list) -> int | None:
    """SLOCK's wait_ms as the node will read it (None: its default, which may
    wait): an integer, a whole float, or a number written as a string; the
    node refuses anything else (BADARG) without waiting: 0."""
    if len(args) < 2 or args[1] is None:
        return None
    value = args[1]
    if type(value) is int:
        return value
    if type(value) is float:
        return int(value) if value.is_integer() else 0  # (inf and nan are not)
    if type(value) in (bytes, str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0  # booleans, arrays, maps...


def lock_wait(cmd: int, args: list) -> float:
    """Extra seconds a request may legitimately take on the server (an SLOCK's
    wait). Clients and farm members forwarding requests use it."""
    if cmd == Cmd.SLOCK:
        wait = _wait_ms(args)
        return 300.0 if wait is None else max(0, wait) / 1000.0
    return 0.0


class _PipelineBase(_Commands):
    def __init__(self, client):
        self._client = client
        self._queued: list[tuple[int, list, Callable]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._queued = []

    def _requests(self) -> list[tuple[int, list]]:
        return [(cmd, args) for cmd, args, _ in self._queued]

    def _call(self, cmd, args, convert):
        self._queued.append((cmd, args, convert))
        return self

    def _collect(self, responses: list[Response], raise_on_error: bool) -> list:
        out: list[Any] = []
        for resp, (_, _, convert) in zip(responses, self._queued):
            try:
                out.append(_result(resp, convert))
            except MsessionError as exc:
                if raise_on_error:
                    raise
                out.append(exc)
        self._queued = []
        return out


# =============================================================================
# Blocking client


class _SyncConn:
    closed = False  # by the node, with BUSY: not to be used again

    def __init__(self, addr: tuple[str, int], connect_timeout: float, max_answer: int):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.proto = ClientProtocol(max_answer)
        self.server_info: dict = {}  # the node's HELLO answer

    def stale(self) -> bool:
        """True if the node closed this idle connection (EOF or a last error waiting)."""
        return self.closed or _readable(self.sock.fileno())

    def exchange(self, requests: list[tuple[int, list]], timeout: float) -> list[Response]:
        ids, chunks = [], []
        for cmd, args in requests:
            rid, data = self.proto.request(cmd, args)
            ids.append(rid)
            chunks.append(data)
            _check_size(data, self.server_info)
        view = memoryview(b"".join(chunks))
        wanted = set(ids)
        answers: dict[int, Response] = {}
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLOUT)
        # Send and read at once: a node stops reading while its answers pile up
        # unread, so a large pipeline sent before reading would deadlock.
        while len(answers) < len(ids):
            if view:
                try:
                    view = view[self.sock.send(view):]
                except BlockingIOError:
                    pass
                if not view:
                    poller.modify(self.sock, select.POLLIN)
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError(f"no answer within {timeout:g} s")
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("connection closed by the node")
            for resp in self.proto.feed(data):
                if resp.id is None and not resp.ok:
                    if _busy_rest(resp, answers, ids):
                        self.closed = True
                        break
                    raise _connection_error(resp, bool(answers))
                if resp.id in wanted:
                    answers[resp.id] = resp
        return [answers[rid] for rid in ids]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Client(_ClientBase):
    """Blocking client. ``Client(host, port)`` or ``Client(nodes=["h1:8086", "h2:8086"])``."""

    _conn: _SyncConn | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def node(self) -> tuple[str, int] | None:
        """The node this client is connected to, if any."""
        return self._conn.addr if self._conn else None

    def _connect(self) -> _SyncConn:
        errors = []
        for index, addr in self._candidates():
            conn = None
            try:
                conn = _SyncConn(addr, self.connect_timeout, self.max_answer)
                (hello,) = conn.exchange([(Cmd.HELLO, [PROTOCOL_VERSION])], self.connect_timeout)
                self.server_info = conn.server_info = _result(hello, _map)
            except (OSError, ProtocolError, _NotExecuted) as exc:
                if conn is not None:
                    conn.close()
                errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                continue
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._next = index
            self._conn = conn
            return conn
        raise _noconnect(errors)

    def _exchange(self, requests: list[tuple[int, list]]) -> list[Response]:
        attempts = _Attempts(requests, len(self.nodes), self.request_timeout)
        while True:
            if self._conn is not None and self._conn.stale():
                self.close()  # closed by the node while idle: nothing was sent on it
            conn = self._conn or self._connect()
            try:
                return conn.exchange(requests, attempts.timeout)
            except MsessionError:
                raise  # BADLEN before sending: the connection is still fine
            except (OSError, ProtocolError, _NotExecuted) as exc:
                self.close()
                if attempts.failed(exc) == attempts.NEXT:
                    self._failed_over()
            except BaseException:
                self.close()  # e.g. KeyboardInterrupt mid-exchange: the stream is out of step
                raise

    def _call(self, cmd, args, convert):
        (resp,) = self._exchange([(cmd, args)])
        return _result(resp, convert)

    def pipeline(self) -> "Pipeline":
        return Pipeline(self)


class Pipeline(_PipelineBase):
    """Queues calls and sends them in one write: ``execute()`` returns the results."""

    def execute(self, raise_on_error: bool = True) -> list:
        if not self._queued:
            return []
        responses = self._client._exchange(self._requests())
        return self._collect(responses, raise_on_error)


# =============================================================================
# trio client


class _Slot:
    __slots__ = ("response",)

    def __init__(self):
        self.response: Response | None = None


def lock_may_wait(cmd: int, args: list) -> bool:
    """An SLOCK that may wait: it holds back every later answer on its connection
    (so clients and farm members give it a connection of its own)."""
    if cmd != Cmd.SLOCK:
        return False
    wait = _wait_ms(args)
    return wait is None or wait > 0


class _AsyncConn:
    def __init__(self, addr, stream: trio.SocketStream, max_answer: int):
        self.addr = addr
        self.stream = stream
        self.proto = ClientProtocol(max_answer)
        self.send_lock = trio.Lock()
        self.recv_lock = trio.Lock()  # whoever holds it reads for everybody
        self.slots: dict[int, _Slot] = {}
        self.broken = False
        self.closed_with: Response | None = None  # the node's last word (an answer with a nil id)
        self.server_info: dict = {}  # the node's HELLO answer

    def abandon(self) -> None:
        """Marks the connection unusable and closes it at once, so the node sees
        EOF (and drops, for instance, a lock it would grant to nobody)."""
        self.broken = True
        if self.stream.socket.fileno() >= 0:
            self.stream.socket.close()

    async def exchange(self, requests: list[tuple[int, list]]) -> list[Response]:
        slots, chunks = [], []
        for cmd, args in requests:
            rid, data = self.proto.request(cmd, args)
            _check_size(data, self.server_info)
            slots.append((rid, _Slot()))
            chunks.append(data)
        data = b"".join(chunks)
        for rid, slot in slots:
            self.slots[rid] = slot
        phase = "queued"

        async def send() -> None:
            nonlocal phase
            async with self.send_lock:
                if self.broken:
                    raise trio.ClosedResourceError("connection abandoned")
                phase = "sending"
                # Once started, a request is sent whole even if its caller is
                # cancelled: half a frame would break the connection for every
                # task sharing it. Its answer is read and dropped.
                with trio.CancelScope(shield=True):
                    with trio.fail_after(_SEND_LIMIT):
                        await self.stream.send_all(data)
            phase = "sent"

        try:
            if len(data) <= _CONCURRENT_SEND:
                await send()
                await self._collect(slots)
            else:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send)
                        await self._collect(slots)
                except BaseExceptionGroup as group:
                    raise _first_leaf(group) from None
        except BaseException as exc:
            unanswered = [rid for rid, slot in slots if slot.response is None]
            for rid, _ in slots:
                self.slots.pop(rid, None)
            cancelled = isinstance(exc, trio.Cancelled)
            waiting_lock = any(lock_may_wait(cmd, args) for cmd, args in requests) and unanswered
            if not cancelled or phase == "sending" or waiting_lock:
                # Out of step (half a request sent, a broken read), or a lock
                # the node might grant us after we stopped listening.
                self.abandon()
            if phase == "queued" and not cancelled and not isinstance(exc, _NotExecuted):
                # Nothing of ours left: whatever it is, it may go elsewhere.
                raise _NotExecuted(MsessionError("BADCONN", f"connection failed before sending: {exc!r}")) from exc
            raise
        return [slot.response for _, slot in slots]  # type: ignore[misc]

    def stale(self) -> bool:
        """Idle, and closed by the node (EOF or its last TIMEOUT waiting)."""
        return not self.slots and _readable(self.stream.socket.fileno())

    async def _collect(self, slots: list[tuple[int, _Slot]]) -> None:
        for _, slot in slots:
            while slot.response is None:
                async with self.recv_lock:
                    if slot.response is not None:
                        break
                    if self.closed_with is not None:  # read by another task sharing the connection
                        self._closed(slots)
                        break
                    data = await self.stream.receive_some(262144)
                    if not data:
                        raise ConnectionError("connection closed by the node")
                    for resp in self.proto.feed(data):
                        if resp.id is None and not resp.ok:
                            self.closed_with = resp
                            self.broken = True
                            self._closed(slots)
                            break
                        waiting = self.slots.pop(resp.id, None)
                        if waiting is not None:
                            waiting.response = resp

    def _closed(self, slots: list[tuple[int, _Slot]]) -> None:
        """Our requests' fate when the node has closed the connection
        (``closed_with``): BUSY answers for those left after some were
        answered (``_busy_rest``), else ``_connection_error`` raised."""
        resp = self.closed_with
        answers = {rid: slot.response for rid, slot in slots if slot.response is not None}
        if not _busy_rest(resp, answers, [rid for rid, _ in slots]):
            raise _connection_error(resp, bool(answers))
        for rid, slot in slots:
            slot.response = answers[rid]


class AsyncClient(_ClientBase):
    """trio client with ``Client``'s methods (awaited). Tasks may share one:
    their requests are pipelined on one connection. A ``lock()`` that may wait
    goes over a connection of its own, so it never holds back the others.

        async with AsyncClient(port=8086) as c:
            await c.set("s1", "user", "alice")
    """

    _conn: _AsyncConn | None = None
    MAX_IDLE_LOCK_CONNECTIONS = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connecting = trio.Lock()
        self._lock_conns: list[_AsyncConn] = []  # idle connections for waiting locks
        self._generation = 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        self._generation += 1  # lock connections in flight are not pooled again
        conns = [self._conn] + self._lock_conns
        self._conn, self._lock_conns = None, []
        for conn in conns:
            if conn is not None:
                await trio.aclose_forcefully(conn.stream)

    aclose = close

    async def _open(self) -> _AsyncConn:
        """A new connection to the first node that answers, HELLO done."""
        errors = []
        for index, addr in self._candidates():
            stream = None
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(*addr)
                    conn = _AsyncConn(addr, stream, self.max_answer)
                    (hello,) = await conn.exchange([(Cmd.HELLO, [PROTOCOL_VERSION])])
                self.server_info = conn.server_info = _result(hello, _map)
            except (OSError, trio.TooSlowError, ProtocolError, trio.BrokenResourceError, _NotExecuted) as exc:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                errors.append(f"{addr[0]}:{addr[1]}: {exc or type(exc).__name__}")
                continue
            except BaseException:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
            self._next = index
            return conn
        raise _noconnect(errors)

    async def _shared(self) -> _AsyncConn:
        async with self._connecting:
            if self._conn is not None and self._conn.stale():
                self._conn.abandon()  # closed by the node while idle
            if self._conn is None or self._conn.broken:
                old, self._conn = self._conn, None
                if old is not None:
                    await trio.aclose_forcefully(old.stream)
                self._conn = await self._open()
            return self._conn

    async def _lock_conn(self) -> _AsyncConn:
        while self._lock_conns:
            conn = self._lock_conns.pop()
            if not conn.stale():
                return conn
            await trio.aclose_forcefully(conn.stream)
        return await self._open()

    async def _exchange(self, requests: list[tuple[int, list]]) -> list[Response]:
        attempts = _Attempts(requests, len(self.nodes), self.request_timeout)
        # A batch with a lock that may wait goes over a connection of its own:
        # while it waits, its connection answers nothing else.
        own = any(lock_may_wait(cmd, args) for cmd, args in requests)
        while True:
            generation = self._generation
            conn = await (self._lock_conn() if own else self._shared())
            try:
                with trio.fail_after(attempts.timeout):
                    answers = await conn.exchange(requests)
            except MsessionError:
                if own:
                    conn.abandon()
                    await trio.aclose_forcefully(conn.stream)
                raise
            except (OSError, trio.TooSlowError, ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, _NotExecuted) as exc:
                conn.abandon()  # before any await: no other task may pick it up
                if self._conn is conn:
                    self._conn = None
                await trio.aclose_forcefully(conn.stream)
                if attempts.failed(exc) == attempts.NEXT:
                    self._failed_over(conn.addr)
                continue
            except BaseException:
                if own:
                    conn.abandon()
                raise
            if own:
                if conn.broken or generation != self._generation or len(self._lock_conns) >= self.MAX_IDLE_LOCK_CONNECTIONS:
                    await trio.aclose_forcefully(conn.stream)
                else:
                    self._lock_conns.append(conn)
            return answers

    async def _call(self, cmd, args, convert):
        (resp,) = await self._exchange([(cmd, args)])
        return _result(resp, convert)

    def pipeline(self) -> "AsyncPipeline":
        return AsyncPipeline(self)


class AsyncPipeline(_PipelineBase):
    """``Pipeline`` for ``AsyncClient``: ``await p.execute()``."""

    async def execute(self, raise_on_error: bool = True) -> list:
        if not self._queued:
            return []
        responses = await self._client._exchange(self._requests())
        return self._collect(responses, raise_on_error)
