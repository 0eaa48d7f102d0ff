"""A node stopping on SIGTERM (``Server.drain``), and how a member link takes
a member that leaves: every client gets either its answer or a BUSY that says
its request did not run (and a TIMEOUT close, the same)."""

import trio

import node.server
from cluster.link import LinkDown, PeerLink
from conftest import start_server
from procs import wait_until
from protocol.client import AsyncClient
from protocol.codec import FrameDecoder, encode_request, parse_response
from protocol.constants import Cmd, Err
from test_server_races import read_answers


async def test_drain_closes_connections_with_busy_once_they_are_between_requests(nursery):
    server = await start_server(nursery)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        await a.lock("s")
    idle = await trio.open_tcp_stream(*addr)
    waiting = await trio.open_tcp_stream(*addr)
    await waiting.send_all(encode_request(1, Cmd.SLOCK, [b"s", 10000]))
    await wait_until(lambda: server.node.locks.waiting() == 1)
    halfway = await trio.open_tcp_stream(*addr)
    ping = encode_request(7, Cmd.PING, [])
    await halfway.send_all(ping[:5])
    await wait_until(lambda: len(server._conns) == 3)
    drained = trio.Event()

    async def drain():
        await server.drain(10)
        drained.set()

    nursery.start_soon(drain)
    # An idle connection gets BUSY without an id, then EOF.
    [busy] = await read_answers(idle, 1)
    assert busy.id is None and not busy.ok and busy.code == int(Err.BUSY)
    assert busy.message.startswith("node is shutting down")
    assert await idle.receive_some(100) == b""
    await idle.aclose()
    # A locker waiting here waits no more: its connection closes the same way
    # (its SLOCK did not run: the client asks elsewhere).
    answers = await read_answers(waiting, 1)
    assert [(x.id, x.code) for x in answers] == [(None, int(Err.BUSY))]
    assert server.node.locks.waiting() == 0
    await waiting.aclose()
    # A new connection is refused.
    late = await trio.open_tcp_stream(*addr)
    [refused] = await read_answers(late, 1)
    assert refused.id is None and refused.message == busy.message
    # Half a frame received: that request is answered before the connection closes.
    await wait_until(lambda: len(server._conns) == 1)
    await trio.sleep(0.2)
    assert not drained.is_set() and len(server._conns) == 1
    await halfway.send_all(ping[5:])
    pong, bye = await read_answers(halfway, 2)
    assert pong.id == 7 and pong.ok and bye.id is None and bye.code == int(Err.BUSY)
    with trio.fail_after(5):
        await drained.wait()
    assert not server._conns


async def test_a_request_sent_as_the_node_drains_is_answered_busy_not_lost(nursery):
    server = await start_server(nursery)
    addr = server.ports[0]
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(encode_request(1, Cmd.PING, []))
    await read_answers(stream, 1)
    nursery.start_soon(server.drain, 10)
    await stream.send_all(encode_request(2, Cmd.CREATE, [b"x"]))  # may cross the node's BUSY
    answers = await read_answers(stream, 1)
    created = server.node.store.get(b"x", server.clock()) is not None
    if answers[0].id is None:  # closed first: the CREATE did not run
        assert not created and answers[0].code == int(Err.BUSY)
    else:  # it ran, was answered, and then the connection closed with BUSY
        assert answers[0].id == 2 and answers[0].ok and created
        [bye] = await read_answers(stream, 1)
        assert bye.id is None and bye.code == int(Err.BUSY)


async def test_a_link_to_a_member_shutting_down_says_the_request_did_not_run(nursery):
    server = await start_server(nursery)
    nursery.start_soon(server.drain, 10)
    await wait_until(lambda: server.draining)
    link = PeerLink(server.ports[0], nursery)
    try:
        await link.call(Cmd.PING, [], 5)
    except LinkDown as exc:
        assert exc.busy and not exc.sent, exc.message
    else:
        raise AssertionError("a draining node answered a new connection")
    finally:
        link.close()


async def test_a_retired_link_answers_what_is_in_flight_then_closes(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as a:
        key = await a.lock("s")
        link = PeerLink(server.ports[0], nursery)
        got = []

        async def lock_over_link():
            got.append(await link.call(Cmd.SLOCK, [b"s", 10000], 15))

        nursery.start_soon(lock_over_link)
        await wait_until(lambda: server.node.locks.waiting() == 1)
        sock = link._sock
        link.retire()  # the member left: no new requests, this one still gets its answer
        try:
            await link.call(Cmd.PING, [], 5)
        except LinkDown as exc:
            assert not exc.sent and exc.busy  # (the caller sends it elsewhere)
        else:
            raise AssertionError("a retired link took a new request")
        await a.unlock("s", key)
        await wait_until(lambda: got)
        assert got[0].ok and got[0].value > 0
        await wait_until(lambda: link._sock is None)  # closed after its last answer
        assert sock.fileno() == -1


async def test_a_batch_arriving_as_the_drain_closes_its_connection_runs_wholly_or_not_at_all(nursery, monkeypatch):
    # The drain looks at every scheduler pass; the batch's bytes are readable
    # in the same pass, so the connection is woken with data just as the drain
    # cancels it (trio orders a pass's tasks at random: some trials race).
    # Each INC that ran must have its answer: none may run unanswered (a
    # client resends what a BUSY says did not run).
    import socket

    monkeypatch.setattr(node.server, "DRAIN_POLL", 0)
    batch = b"".join(encode_request(i, Cmd.INC, [b"s", b"n"]) for i in range(1, 201))
    for _ in range(30):  # bounded
        server = await start_server(nursery)
        async with AsyncClient(*server.ports[0]) as a:
            await a.create("s")
        sock = socket.create_connection(server.ports[0])
        sock.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        async with stream:
            await wait_until(lambda: len(server._conns) == 1 and next(iter(server._conns)).idle)
            assert sock.send(batch) == len(batch)  # no checkpoint between this and the drain's start
            nursery.start_soon(server.drain, 10)
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(1 << 20):
                    data += chunk
        decoder, answers = FrameDecoder(1 << 24), []
        decoder.feed(data)
        while (body := decoder.next_frame()) is not None:
            answers.append(parse_response(body))
        assert answers[-1].id is None and answers[-1].code == int(Err.BUSY)
        ran = int(server.node.store.get(b"s", server.clock()).values().get(b"n", b"0"))
        assert [x.id for x in answers[:-1]] == list(range(1, ran + 1)), f"{ran} INCs ran, answers: {len(answers) - 1}"


class _ShuttingDownNode:
    """A fake node on loopback, in a thread: one connection; HELLO answered,
    then the first request of the next batch answered, then the connection
    closed as a node shutting down closes it (a BUSY with a nil id: the rest
    did not run). Bounded: it gives up after 10 s."""

    def __init__(self):
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from protocol.codec import Encoder, decode_request

        enc = Encoder()
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            decoder = FrameDecoder()

            def next_request():
                while (body := decoder.next_frame()) is None:
                    data = conn.recv(65536)
                    if not data:
                        return None
                    decoder.feed(data)
                return decode_request(body)

            rid, _, _ = next_request()
            conn.sendall(enc.ok(rid, {"version": 1, "server": "fake", "max_frame": 4194304}))
            rid, _, _ = next_request()
            conn.sendall(enc.ok(rid, b"PONG") + enc.error(None, int(Err.BUSY), "node is shutting down: retry elsewhere"))
            conn.shutdown(1)
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_the_blocking_client_takes_a_busy_close_after_some_answers_as_the_rest_not_run():
    from protocol.client import Client, MsessionError

    fake = _ShuttingDownNode()
    try:
        with Client(nodes=[fake.address]) as c:
            first, *rest = c.pipeline().ping().ping().ping().execute(raise_on_error=False)
        assert first is True or first == b"PONG"
        assert [type(r) for r in rest] == [MsessionError, MsessionError] and {r.code for r in rest} == {"BUSY"}
    finally:
        fake.close()


async def test_the_trio_client_takes_a_busy_close_after_some_answers_as_the_rest_not_run():
    from protocol.client import MsessionError

    fake = _ShuttingDownNode()
    try:
        async with AsyncClient(nodes=[fake.address]) as c:
            first, *rest = await c.pipeline().ping().ping().ping().execute(raise_on_error=False)
        assert first is True or first == b"PONG"
        assert [type(r) for r in rest] == [MsessionError, MsessionError] and {r.code for r in rest} == {"BUSY"}
    finally:
        await trio.to_thread.run_sync(fake.close)



async def test_a_batch_arriving_as_the_idle_deadline_passes_runs_wholly_or_not_at_all(nursery, mock_clock):
    # The same race with the idle deadline: the bytes and the deadline come
    # in one scheduler pass. The batch must not run in part and then be
    # closed with TIMEOUT (which clients take for "nothing ran").
    import socket

    mock_clock.rate = 1.0  # real time, until we jump
    server = await start_server(nursery, idle_timeout=30)
    async with AsyncClient(*server.ports[0]) as a:
        await a.create("s")
    batch = b"".join(encode_request(i, Cmd.INC, [b"s", b"n"]) for i in range(1, 201))
    sock = socket.create_connection(server.ports[0])
    sock.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    async with stream:
        await wait_until(lambda: len(server._conns) == 1 and next(iter(server._conns)).idle)
        assert sock.send(batch) == len(batch)
        mock_clock.jump(45)  # past the idle deadline (1.25 x 30 s), no checkpoint between the bytes and it
        decoder, answers = FrameDecoder(1 << 24), []
        with trio.fail_after(10):  # until it closes, or has answered all
            while sum(x.id is not None for x in answers) < 200 and (chunk := await stream.receive_some(1 << 20)):
                decoder.feed(chunk)
                while (body := decoder.next_frame()) is not None:
                    answers.append(parse_response(body))
    ran = int(server.node.store.get(b"s", server.clock()).values().get(b"n", b"0"))
    assert [x.id for x in answers if x.id is not None] == list(range(1, ran + 1)), f"{ran} INCs ran"
    assert ran in (0, 200), ran
    if ran == 0:  # closed, and said why: nothing ran
        assert answers[-1].id is None and answers[-1].code == int(Err.TIMEOUT)


async def test_a_batch_with_a_waiting_lock_answers_up_to_the_lock_then_closes_busy(nursery):
    # [PING, SLOCK (held elsewhere, may wait), CREATE]: the drain ends the wait;
    # the PING's answer comes, then the BUSY, and neither the SLOCK nor the
    # CREATE after it ran.
    server = await start_server(nursery)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        await a.lock("s", lease=30)
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(encode_request(1, Cmd.PING, []) + encode_request(2, Cmd.SLOCK, [b"s", 10000])
                          + encode_request(3, Cmd.CREATE, [b"after"]))
    await wait_until(lambda: server.node.locks.waiting() == 1)
    nursery.start_soon(server.drain, 10)
    answers = await read_answers(stream, 2)
    assert [(x.id, x.ok) for x in answers] == [(1, True), (None, False)] and answers[1].code == int(Err.BUSY)
    assert await stream.receive_some(100) == b""
    assert server.node.store.get(b"after", server.clock()) is None and server.node.locks.waiting() == 0
