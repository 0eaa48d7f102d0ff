"""Lock grants and deadlines at the edges of the server's I/O (found in review)."""

import socket

import trio

import node.server
from conftest import start_server
from protocol.client import AsyncClient
from protocol.codec import FrameDecoder, encode_request, parse_response
from protocol.constants import Cmd
from procs import wait_until


async def read_answers(stream, n, timeout=10.0):
    decoder, out = FrameDecoder(64 * 1024 * 1024), []
    with trio.fail_after(timeout):
        while len(out) < n:
            data = await stream.receive_some(1 << 20)
            assert data, f"closed after {len(out)} answers"
            decoder.feed(data)
            while (body := decoder.next_frame()) is not None:
                out.append(parse_response(body))
    return out


async def test_a_lock_granted_while_earlier_answers_flush_is_not_lost(nursery, monkeypatch):
    """B pipelines big reads and an SLOCK, and stops reading; the lock is
    granted to B while the node is still flushing B's earlier answers; B
    disconnects. The lock must go back, not stay with the departed B."""
    monkeypatch.setattr(node.server, "SEND_THRESHOLD", 10**9)  # one flush, before SLOCK waits
    server = await start_server(nursery)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        await a.create("s")
        await a.set("s", "big", b"x" * 200_000)
        key = await a.lock("s")
        with socket.socket() as b:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            b.connect(addr)
            batch = b"".join(encode_request(i, Cmd.GETVAL, [b"s", b"big"]) for i in range(40))
            b.sendall(batch + encode_request(99, Cmd.SLOCK, [b"s", 10000]))
            await wait_until(lambda: server.node.locks._locks[b"s"].waiters)
            await a.unlock("s", key)  # granted to B, whose flush is stuck
        # B has disconnected.
        await wait_until(lambda: server.node.locks.holder(b"s") == 0)
        assert await a.lock("s", wait=0) > 0


async def test_deadline_after_a_lock_wait_uses_the_time_after_the_wait(nursery):
    server = await start_server(nursery, frame_timeout=0.5)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        key = await a.lock("s")
        async with await trio.open_tcp_stream(*addr) as stream:
            nxt = encode_request(3, Cmd.PING, [])
            await stream.send_all(encode_request(1, Cmd.SLOCK, [b"s", 5000]) + encode_request(2, Cmd.PING, []) + nxt[:3])
            await wait_until(lambda: server.node.locks._locks[b"s"].waiters)
            await trio.sleep(1.0)  # the waiter waits longer than frame_timeout (the case under test)
            await a.unlock("s", key)
            first = await read_answers(stream, 2)
            assert first[0].ok and first[1].value == b"PONG"
            await stream.send_all(nxt[3:])  # completes the frame well within 0.5 s of the grant
            (third,) = await read_answers(stream, 1)
            assert third.ok and third.id == 3, third


async def test_slow_reader_of_a_complete_frame_gets_the_whole_answer(nursery):
    """A request that arrived in two reads is complete: answering it runs under
    the idle deadline, not the (short) frame deadline."""
    server = await start_server(nursery, frame_timeout=0.5, idle_timeout=30)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        await a.setdata("s", b"y" * 3_500_000)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(addr)
    async with trio.SocketStream(trio.socket.from_stdlib_socket(sock)) as stream:
        req = encode_request(1, Cmd.DATAGET, [b"s"])
        await stream.send_all(req[:5])
        await trio.sleep(0.1)  # the request arrives in two reads (the case under test)
        await stream.send_all(req[5:])
        await trio.sleep(1.5)  # read nothing for three frame timeouts (the case under test)
        (answer,) = await read_answers(stream, 1)
        assert answer.ok and len(answer.value) == 3_500_000


async def test_a_stalled_loop_past_a_lock_wait_still_answers_locked(nursery, mock_clock):
    """The idle deadline falls after a waiting SLOCK's end, and the event loop
    stalls past both (a GC pause, a busy node): the wait's own limit must
    answer (LOCKED), not the idle timeout, and the connection goes on."""
    server = await start_server(nursery, idle_timeout=8)
    addr = server.ports[0]
    async with AsyncClient(*addr) as a:
        await a.lock("s")
        async with await trio.open_tcp_stream(*addr) as stream:
            await stream.send_all(encode_request(1, Cmd.SLOCK, [b"s", 7990]))  # ends before the idle deadline
            for _ in range(100_000):  # the mock clock stands still: checkpoints until the SLOCK waits
                if server.node.locks._locks[b"s"].waiters:
                    break
                await trio.sleep(0)
            assert server.node.locks._locks[b"s"].waiters
            mock_clock.jump(20)  # past the wait's end and the idle deadline at once
            (answer,) = await read_answers(stream, 1)
            assert not answer.ok and answer.code == 5, answer  # LOCKED
            await stream.send_all(encode_request(2, Cmd.PING, []))
            (pong,) = await read_answers(stream, 1)
            assert pong.ok and pong.value == b"PONG"
