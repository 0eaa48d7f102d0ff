"""One pipelined connection from this member to another, shared by every
request forwarded there.

Forwarding is on the path of most requests in a farm, so this is leaner than
the general ``AsyncClient``: one raw non-blocking socket, one reader task that
hands each answer to its waiting request by id, and per request one frame
encoded, one ``send`` (usually complete at once) and one event waited on.
Answers to requests that gave up waiting are read and dropped (ids are never
reused while a request waits). A lock that may wait gets a PeerLink of its
own, opened and closed for that request by ``Cluster.call`` in
``cluster/runtime.py``: the owner answers a member's other requests out of
order, but a waiting SLOCK in line, so on the shared link it would hold back
the requests behind it.
"""

from __future__ import annotations

import socket

import trio

from protocol.codec import ClientProtocol, ProtocolError, Response
from protocol.constants import Cmd, Err

from .peer_wire import member_hello

READ_SIZE = 262144
MAX_ANSWER = 256 * 1024 * 1024


class LinkDown(Exception):
    """The member could not be reached, or the connection broke.

    ``sent`` tells whether the request may have reached the member;
    ``busy``: the member closed the connection with BUSY before answering
    it (a member shutting down does so between requests: it did not run)."""

    def __init__(self, message: str, sent: bool, busy: bool = False):
        super().__init__(message)
        self.message = message
        self.sent = sent
        self.busy = busy


class _Slot:
    __slots__ = ("event", "response", "error")

    def __init__(self):
        self.event = trio.Event()
        self.response: Response | None = None
        self.error: LinkDown | None = None


class PeerLink:
    def __init__(self, addr: tuple[str, int], nursery: trio.Nursery, connect_timeout: float = 1.0):
        self.addr = addr
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._proto: ClientProtocol | None = None
        self._pending: dict[int, _Slot] = {}
        self._connecting = trio.Lock()
        self._sending = trio.StrictFIFOLock()
        self.closed = False
        self.retired = False  # closed because the member left: a request refused here goes elsewhere

    async def call(self, cmd: int, args: list, timeout: float) -> Response:
        """Sends one request and waits up to ``timeout`` for its answer."""
        if self.closed:
            raise LinkDown("link closed", sent=False, busy=self.retired)
        with trio.move_on_after(timeout) as scope:
            sock, proto = await self._connected()
            rid, data = proto.request(cmd, args)
            slot = _Slot()
            self._pending[rid] = slot
            try:
                await self._send(sock, data)
                await slot.event.wait()
            finally:
                if self._pending.get(rid) is slot:  # ids restart on a new connection
                    del self._pending[rid]
                if self.closed and not self._pending and self._sock is sock:
                    self._broken(sock, "link closed")  # retired, and this was the last request
        if scope.cancelled_caught:
            raise LinkDown(f"no answer within {timeout:g} s", sent=True)
        if slot.error is not None:
            raise slot.error
        return slot.response  # type: ignore[return-value]

    async def _connected(self) -> tuple[socket.socket, ClientProtocol]:
        if self._sock is not None:
            return self._sock, self._proto  # type: ignore[return-value]
        async with self._connecting:
            if self._sock is None:
                if self.closed:
                    raise LinkDown("link closed", sent=False, busy=self.retired)
                try:
                    with trio.fail_after(self._connect_timeout):
                        stream = await trio.open_tcp_stream(*self.addr)
                except (OSError, trio.TooSlowError) as exc:
                    raise LinkDown(f"cannot connect to {self.addr[0]}:{self.addr[1]}: {exc or 'timeout'}", sent=False) from None
                sock = socket.socket(fileno=stream.socket.detach())
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                proto = ClientProtocol(MAX_ANSWER)
                # Say we are a member (its answer is read and dropped): the
                # member then allows our frames FWD's few bytes of envelope
                # above max_frame. The first bytes on a new socket go out whole.
                _rid, hello = proto.request(Cmd.HELLO, member_hello())
                try:
                    sock.send(hello)
                except OSError as exc:
                    sock.close()
                    raise LinkDown(f"cannot talk to {self.addr[0]}:{self.addr[1]}: {exc}", sent=False) from None
                self._sock, self._proto = sock, proto
                self._nursery.start_soon(self._read, sock, proto)
        return self._sock, self._proto  # type: ignore[return-value]

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        async with self._sending:
            view = memoryview(data)
            started = False
            try:
                while view:
                    try:
                        sent = sock.send(view)
                    except BlockingIOError:
                        # Half a frame out must be finished, whoever gave up waiting.
                        with trio.CancelScope(shield=started):
                            try:
                                await trio.lowlevel.wait_writable(sock)
                            except trio.ClosedResourceError:
                                raise OSError("connection closed") from None
                        continue
                    view = view[sent:]
                    started = True
            except OSError as exc:
                self._broken(sock, f"connection to {self.addr[0]}:{self.addr[1]} broke: {exc}")
                raise LinkDown(str(exc), sent=started) from None

    async def _read(self, sock: socket.socket, proto: ClientProtocol) -> None:
        reason = "connection closed by the member"
        busy = False
        try:
            while True:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    reason = "connection closed"
                    break
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    reason = f"connection broke: {exc}"
                    break
                if not data:
                    break
                try:
                    responses = proto.feed(data)
                except ProtocolError as exc:
                    reason = f"bad answer from the member: {exc.message}"
                    break
                for resp in responses:
                    if resp.id is None:  # the member closes the connection (BUSY, TIMEOUT)
                        reason = f"member closed the connection: {resp.message}"
                        busy = resp.code == Err.BUSY  # after every answer: what is unanswered did not run
                        continue
                    slot = self._pending.get(resp.id)
                    if slot is not None:
                        slot.response = resp
                        slot.event.set()
        finally:
            self._broken(sock, f"{self.addr[0]}:{self.addr[1]}: {reason}", busy)

    def _broken(self, sock: socket.socket, reason: str, busy: bool = False) -> None:
        """Fails every request still waiting and forgets the socket; the next call reconnects."""
        if self._sock is sock:
            self._sock = None
            self._proto = None
            for slot in self._pending.values():
                if slot.response is None and slot.error is None:
                    slot.error = LinkDown(reason, sent=not busy, busy=busy)
                    slot.event.set()
            self._pending.clear()
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def retire(self) -> None:
        """Takes no new request; those in flight get their answers (a member
        that leaves the farm still answers them), then the link closes."""
        self.closed = self.retired = True
        if not self._pending and self._sock is not None:
            self._broken(self._sock, "link closed")

    def close(self) -> None:
        self.closed = True
        if self._sock is not None:
            self._broken(self._sock, "link closed")

