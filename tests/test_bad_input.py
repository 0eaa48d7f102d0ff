"""Hostile and malformed input against a real node.

Every case talks to a real server over loopback: an in-process ``Server``
(``start_server``) driven with trio sockets, or a ``msession serve``
subprocess (``NodeProcess``). After each bad input the test checks

(a) the documented answer: the error code and the request id (``nil`` for
    connection-level errors), or that the node closed the connection; and
(b) that the node is still up and still serving *other* clients: a bystander
    connection opened before the bad input and a fresh connection can both
    PING and read data written before the bad input.

Nothing waits blindly: reads are bounded with ``trio.fail_after`` and a close
is detected by reading until end of stream.
"""

from __future__ import annotations

import math
import socket
import struct
import uuid
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import start_server
from procs import NodeProcess, wait_until
from protocol.client import Client
from protocol.codec import encode_frame, frame
from protocol.constants import DEFAULT_MAX_FRAME, PROTOCOL_VERSION, Cmd, Err

OK, ERR = 1, 0
KEEP = b"keep-sentinel-session-0123456789"  # written before any bad input
KEEP_VAR, KEEP_VALUE, KEEP_DATA = b"k", b"v-before", b"data-before\x00\xff"
UNSUPPORTED = {Cmd.FLUSH, Cmd.SERIALIZE, Cmd.RESTORE, Cmd.EXEC}
IO_TIMEOUT = 5.0


# -----------------------------------------------------------------------------
# A raw wire client (trio) that does not hide anything the node sends.


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Independent framer: complete bodies and the incomplete rest."""
    bodies, pos = [], 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from(">I", data, pos)
        if len(data) - pos - 4 < length:
            break
        bodies.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return bodies, data[pos:]


def unpack_response(body: bytes) -> list:
    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert isinstance(msg, list) and len(msg) == 3, f"malformed response {msg!r}"
    assert msg[1] in (OK, ERR), f"bad status in {msg!r}"
    if msg[1] == ERR:
        payload = msg[2]
        assert isinstance(payload, list) and len(payload) == 2, f"bad error payload {msg!r}"
        assert type(payload[0]) is int and isinstance(payload[1], str), f"bad error payload {msg!r}"
        assert not payload[1].startswith("internal error"), f"node hit an internal error: {msg!r}"
    return msg


class Wire:
    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = b""
        self.closed = False

    @classmethod
    async def open(cls, addr) -> "Wire":
        with trio.fail_after(IO_TIMEOUT):
            return cls(await trio.open_tcp_stream(*addr))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_msg(self, obj: Any) -> None:
        await self.send(encode_frame(obj))

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""  # reset by the peer: counts as closed
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    async def recv(self, timeout: float = IO_TIMEOUT) -> list:
        """The next response; fails if the node closes first."""
        with trio.fail_after(timeout):
            while True:
                bodies, _ = split_frames(self.buf)
                if bodies:
                    body = bodies[0]
                    self.buf = self.buf[4 + len(body) :]
                    return unpack_response(body)
                if not await self._fill():
                    raise AssertionError(f"connection closed while waiting for an answer (left: {self.buf!r})")

    async def recv_n(self, n: int) -> list[list]:
        return [await self.recv() for _ in range(n)]

    async def read_until_close(self, timeout: float = IO_TIMEOUT) -> list[list]:
        """Every response until the node closes the connection."""
        with trio.fail_after(timeout):
            while await self._fill():
                pass
        bodies, rest = split_frames(self.buf)
        assert rest == b"", f"node sent a partial frame before closing: {rest!r}"
        self.buf = b""
        return [unpack_response(b) for b in bodies]

    async def call(self, rid: int, cmd: int, args: list) -> list:
        await self.send_msg([rid, int(cmd), args])
        return await self.recv()

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


def assert_err(resp: list, code: int, rid: int | None) -> None:
    assert resp[1] == ERR, f"expected {Err(code).name}, got {resp!r}"
    assert resp[2][0] == code, f"expected {Err(code).name}, got {Err(resp[2][0]).name}: {resp!r}"
    assert resp[0] == rid, f"expected id {rid!r}, got {resp!r}"


def assert_ok(resp: list, rid: int, value: Any = ...) -> None:
    assert resp[0] == rid and resp[1] == OK, f"expected OK for id {rid}, got {resp!r}"
    if value is not ...:
        assert resp[2] == value, f"expected {value!r}, got {resp!r}"


async def seed(addr) -> None:
    """Writes the data every health check reads back."""
    w = await Wire.open(addr)
    resp = await w.call(1, Cmd.CREATE, [KEEP])
    assert resp[1] == OK or resp[2][0] == Err.DUPSESSION, resp
    assert_ok(await w.call(2, Cmd.SETVAL, [KEEP, KEEP_VAR, KEEP_VALUE]), 2, True)
    assert_ok(await w.call(3, Cmd.DATASET, [KEEP, KEEP_DATA]), 3, True)
    await w.close()


async def check_serving(w: Wire, rid: int = 900) -> None:
    assert_ok(await w.call(rid, Cmd.PING, []), rid, b"PONG")
    assert_ok(await w.call(rid + 1, Cmd.GETVAL, [KEEP, KEEP_VAR]), rid + 1, KEEP_VALUE)
    assert_ok(await w.call(rid + 2, Cmd.DATAGET, [KEEP]), rid + 2, KEEP_DATA)


async def assert_serving(addr, *bystanders: Wire) -> None:
    """The node answers a fresh connection and every bystander connection."""
    for i, b in enumerate(bystanders):
        await check_serving(b, 700 + 10 * i)
    w = await Wire.open(addr)
    await check_serving(w)
    await w.close()


async def start_seeded(nursery, **overrides):
    server = await start_server(nursery, **overrides)
    await seed(server.ports[0])
    return server


# -----------------------------------------------------------------------------
# Targets: an in-process server, or a subprocess shared by this module.


@pytest.fixture(scope="module")
def proc_node():
    """A ``msession serve`` subprocess with a short frame timeout, seeded."""
    node = NodeProcess(env={"MSESSION_FRAME_TIMEOUT": "0.5"})
    try:
        with Client(node.host, node.port) as c:
            assert c.create(KEEP) is True  # a fresh node
            c.set(KEEP, KEEP_VAR, KEEP_VALUE)
            c.setdata(KEEP, KEEP_DATA)
        yield node
    finally:
        assert node.stop() == 0, node.read_log()
        assert "Traceback" not in node.log.decode(errors="replace"), node.log.decode(errors="replace")


@pytest.fixture(params=["inprocess", "subprocess"])
async def target(request, nursery, proc_node):
    """Address of a seeded node: in-process, or the module's subprocess."""
    if request.param == "inprocess":
        server = await start_seeded(nursery)
        return server.ports[0]
    return (proc_node.host, proc_node.port)


@pytest.fixture
async def addr(nursery):
    server = await start_seeded(nursery)
    return server.ports[0]


def uniq_sid(tag: str) -> bytes:
    return f"{tag}-{uuid.uuid4().hex}".encode()


# -----------------------------------------------------------------------------
# Random bytes and random frame bodies (hypothesis, one subprocess node).

KNOWN_CODES = {int(e) for e in Err}
HANDLED = {int(c) for c in Cmd} - {int(c) for c in UNSUPPORTED}


def _uint64(x) -> bool:
    return type(x) is int and 0 <= x <= 2**64 - 1


def classify(body: bytes):
    """What the contract says the answer to one frame body is.

    ("BADHDR", {acceptable ids}) or ("REQ", id, cmd)."""
    try:
        msg = msgpack.unpackb(body, raw=True, strict_map_key=False)
    except msgpack.ExtraData as exc:
        first = exc.unpacked
        rid = first[0] if isinstance(first, list) and first and _uint64(first[0]) else None
        return ("BADHDR", {None, rid})
    except Exception:
        return ("BADHDR", {None})
    if not isinstance(msg, list) or len(msg) != 3:
        rid = msg[0] if isinstance(msg, list) and msg and _uint64(msg[0]) else None
        return ("BADHDR", {rid})
    rid, cmd, args = msg
    if not _uint64(rid):
        return ("BADHDR", {None})
    if type(cmd) is not int or not isinstance(args, list):
        return ("BADHDR", {rid})
    return ("REQ", rid, cmd)


def expected_answers(data: bytes, max_frame: int) -> tuple[list, bool]:
    """The answers due for ``data`` sent then half-closed; True if BADLEN ends it."""
    out, pos = [], 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from(">I", data, pos)
        if length > max_frame:
            return out, True
        if len(data) - pos - 4 < length:
            break
        out.append(classify(data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out, False


def sync_send_and_read_all(addr, data: bytes) -> list[list]:
    """Sends ``data``, half-closes, returns every answer until the node closes."""
    chunks = []
    with socket.create_connection(addr, timeout=IO_TIMEOUT) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node may already have closed (BADLEN)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    bodies, rest = split_frames(b"".join(chunks))
    assert rest == b"", f"partial frame from the node: {rest!r}"
    return [unpack_response(b) for b in bodies]


def sync_check_serving(addr) -> None:
    with Client(*addr) as c:
        assert c.ping() is True
        assert c.get(KEEP, KEEP_VAR) == KEEP_VALUE
        assert c.getdata(KEEP) == KEEP_DATA


def check_random_input(node: NodeProcess, data: bytes, bystander: Client) -> None:
    addr = (node.host, node.port)
    expected, badlen = expected_answers(data, DEFAULT_MAX_FRAME)
    answers = sync_send_and_read_all(addr, data)
    assert len(answers) == len(expected) + badlen, (expected, badlen, answers)
    for exp, resp in zip(expected, answers):
        if exp[0] == "BADHDR":
            assert resp[1] == ERR and resp[2][0] == Err.BADHDR, (exp, resp)
            assert resp[0] in exp[1], (exp, resp)
        else:
            _, rid, cmd = exp
            assert resp[0] == rid, (exp, resp)
            if resp[1] == ERR:
                assert resp[2][0] in KNOWN_CODES, resp
                if cmd not in HANDLED:
                    assert resp[2][0] == Err.UNKNOWN, resp
            else:
                assert cmd in HANDLED, (exp, resp)
    if badlen:
        assert_err(answers[-1], Err.BADLEN, None)
    sync_check_serving(addr)
    assert bystander.ping() is True
    assert bystander.get(KEEP, KEEP_VAR) == KEEP_VALUE


@pytest.fixture(scope="module")
def bystander(proc_node):
    with Client(proc_node.host, proc_node.port) as c:
        c.ping()
        yield c


_RANDOM_SETTINGS = settings(
    max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_RANDOM_SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes(proc_node, bystander, data):
    check_random_input(proc_node, data, bystander)


@_RANDOM_SETTINGS
@given(
    bodies=st.lists(st.binary(max_size=64), max_size=8),
    tail=st.binary(max_size=16),
)
def test_random_frame_bodies(proc_node, bystander, bodies, tail):
    """Well-framed random bodies (mostly BADHDR), optionally a random tail."""
    data = b"".join(frame(b) for b in bodies) + tail
    check_random_input(proc_node, data, bystander)


# -----------------------------------------------------------------------------
# Truncated frames


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00\x00", id="half-header"),
        pytest.param(struct.pack(">I", 100) + b"x" * 50, id="half-body"),
        pytest.param(encode_frame([1, Cmd.PING, []])[:-1], id="all-but-one-byte"),
    ],
)
async def test_truncated_frame_then_close(target, data):
    bystander = await Wire.open(target)
    # Closed outright after half a frame: nothing to answer, nothing breaks.
    w = await Wire.open(target)
    await w.send(data)
    await w.close()
    # Half-closed after half a frame: the node closes without answering.
    w = await Wire.open(target)
    await w.send(data)
    await w.stream.send_eof()
    assert await w.read_until_close() == []
    await w.close()
    await assert_serving(target, bystander)
    await bystander.close()


async def test_complete_frame_then_truncated_one(target):
    w = await Wire.open(target)
    await w.send(encode_frame([5, Cmd.PING, []]) + encode_frame([6, Cmd.PING, []])[:7])
    await w.stream.send_eof()
    answers = await w.read_until_close()
    assert len(answers) == 1
    assert_ok(answers[0], 5, b"PONG")
    await assert_serving(target)


# -----------------------------------------------------------------------------
# Oversize frames


async def test_oversize_frame_gets_badlen_and_close(nursery):
    server = await start_seeded(nursery, max_frame=1024)
    addr = server.ports[0]
    bystander = await Wire.open(addr)
    for data in [
        struct.pack(">I", 1025),  # just over, header only
        struct.pack(">I", 1025) + b"\x00" * 1025,  # just over, with the body
        struct.pack(">I", 0xFFFFFFFF),  # the largest length
        struct.pack(">I", 2**31) + b"junk",
    ]:
        w = await Wire.open(addr)
        await w.send(data)
        answers = await w.read_until_close()
        assert len(answers) == 1, answers
        assert_err(answers[0], Err.BADLEN, None)
        await w.close()
        await assert_serving(addr, bystander)
    await bystander.close()


async def test_frame_of_exactly_max_frame_is_accepted(nursery):
    server = await start_seeded(nursery, max_frame=1024)
    addr = server.ports[0]
    w = await Wire.open(addr)
    # The largest value whose request body fits exactly in max_frame bytes.
    for pad in range(1024, 0, -1):
        body = msgpack.packb([7, Cmd.SETVAL, [KEEP, b"big", b"x" * pad]], use_bin_type=True)
        if len(body) == 1024:
            break
    assert len(body) == 1024
    await w.send(frame(body))
    assert_ok(await w.recv(), 7, True)
    assert_ok(await w.call(8, Cmd.GETVAL, [KEEP, b"big"]), 8, b"x" * pad)
    await assert_serving(addr, w)


async def test_good_requests_answered_before_badlen(target):
    w = await Wire.open(target)
    hello = await w.call(1, Cmd.HELLO, [PROTOCOL_VERSION])
    max_frame = hello[2]["max_frame"]
    await w.send(
        encode_frame([2, Cmd.PING, []])
        + encode_frame([3, Cmd.GETVAL, [KEEP, KEEP_VAR]])
        + struct.pack(">I", max_frame + 1)
    )
    answers = await w.read_until_close()
    assert len(answers) == 3, answers
    assert_ok(answers[0], 2, b"PONG")
    assert_ok(answers[1], 3, KEEP_VALUE)
    assert_err(answers[2], Err.BADLEN, None)
    await assert_serving(target)


# -----------------------------------------------------------------------------
# Valid MessagePack of the wrong shape: BADHDR, the connection stays open.

_p = lambda obj: msgpack.packb(obj, use_bin_type=True)  # noqa: E731

WRONG_SHAPE = [
    ("empty-body", b"", None),
    ("invalid-msgpack", b"\xc1", None),
    ("truncated-msgpack", _p([1, Cmd.PING, []])[:-1], None),
    ("int", _p(5), None),
    ("nil", _p(None), None),
    ("string", _p(b"PING"), None),
    ("map", _p({b"id": 1, b"cmd": Cmd.PING, b"args": []}), None),
    ("empty-array", _p([]), None),
    ("one-element", _p([11]), 11),
    ("two-elements", _p([12, Cmd.PING]), 12),
    ("four-elements", _p([13, Cmd.PING, [], []]), 13),
    ("id-string", _p([b"14", Cmd.PING, []]), None),
    ("id-float", _p([15.0, Cmd.PING, []]), None),
    ("id-bool", _p([True, Cmd.PING, []]), None),
    ("id-nil", _p([None, Cmd.PING, []]), None),
    ("id-negative", _p([-1, Cmd.PING, []]), None),
    ("id-most-negative", _p([-(2**63), Cmd.PING, []]), None),
    ("id-array", _p([[1], Cmd.PING, []]), None),
    ("cmd-string", _p([16, b"PING", []]), 16),
    ("cmd-float", _p([17, float(Cmd.PING), []]), 17),
    ("cmd-bool", _p([18, True, []]), 18),
    ("cmd-nil", _p([19, None, []]), 19),
    ("args-map", _p([20, Cmd.PING, {}]), 20),
    ("args-nil", _p([21, Cmd.PING, None]), 21),
    ("args-string", _p([22, Cmd.PING, b"x"]), 22),
    ("args-int", _p([23, Cmd.PING, 0]), 23),
    ("map-with-array-key", b"\x93\x18\xcd\x04\x02\x91\x81\x91\x01\x02", None),
]


@pytest.mark.parametrize("body,rid", [pytest.param(b, r, id=n) for n, b, r in WRONG_SHAPE])
async def test_wrong_shape_gets_badhdr(target, body, rid):
    bystander = await Wire.open(target)
    w = await Wire.open(target)
    await w.send(frame(body))
    assert_err(await w.recv(), Err.BADHDR, rid)
    # The same connection keeps working.
    assert_ok(await w.call(99, Cmd.PING, []), 99, b"PONG")
    await assert_serving(target, bystander, w)


async def test_trailing_bytes_after_request_get_badhdr(target):
    w = await Wire.open(target)
    await w.send(frame(_p([31, Cmd.PING, []]) + b"\x00"))
    resp = await w.recv()
    assert resp[1] == ERR and resp[2][0] == Err.BADHDR, resp
    assert resp[0] in (None, 31), resp  # "with the id if one could be read"
    await assert_serving(target, w)


async def test_largest_request_id_is_echoed(addr):
    w = await Wire.open(addr)
    assert_ok(await w.call(2**64 - 1, Cmd.PING, []), 2**64 - 1, b"PONG")
    assert_ok(await w.call(0, Cmd.PING, []), 0, b"PONG")


# -----------------------------------------------------------------------------
# Wrong argument types or counts, for every command: BADARG with the id.

S = KEEP
BAD_ARGS: dict[int, list[list]] = {
    Cmd.PING: [[1], [S], [None]],
    Cmd.INFO: [[1], [S], [None]],
    Cmd.STATUS: [[1], [S], [None]],
    Cmd.ROUTES: [[1], [S], [None]],
    Cmd.HELLO: [[], [b"x"], [-1], [1, {}, 3], [None], [1.5], [[1]]],
    Cmd.COUNT: [[1], [None]],
    Cmd.CREATE: [
        [], [S, b"c", b"d", b"x"], [None], [[]], [{}], [1.5], [True], [b""], [b"x" * 257],
        [b"new", []], [b"new", b"", {}], [b"new", b"c" * 1025], [b"new", None],
    ],
    Cmd.DROP: [[], [S, S], [None], [b""], [[S]], [b"x" * 257], [1.5]],
    Cmd.SETVAL: [
        [], [S], [S, b"n", b"v", b"x"], [S, b"notamap"], [S, [b"n", b"v"]], [S, b"n", None],
        [S, None, b"v"], [S, b"", b"v"], [S, {b"": b"v"}], [S, {b"n": [b"v"]}], [S, {b"n": None}],
        [S, {1.5: b"v"}], [None, b"n", b"v"], [b"", b"n", b"v"], [S, b"n" * 1025, b"v"],
        [S, b"n", 1.5], [S, b"n", {}],
    ],
    Cmd.GETVAL: [
        [], [S], [S, KEEP_VAR, None, b"x"], [None, KEEP_VAR], [S, None], [S, b""], [S, [KEEP_VAR]],
        [b"", KEEP_VAR], [S, b"n" * 1025],
    ],
    Cmd.GETALL: [[], [S, S], [None], [b""], [{}]],
    Cmd.FIND: [[], [b"k"], [b"k", b"v", b"x"], [None, b"v"], [b"k", None], [b"", b"v"], [b"k", [b"v"]]],
    Cmd.LIST: [[1], [None]],
    Cmd.LISTVAR: [[], [b"k", b"x"], [None], [b""], [{}]],
    Cmd.INC: [
        [], [S], [S, b"c", 1, 2], [S, b"c", b"abc"], [S, b"c", 1.5], [S, b"c", None], [S, b"c", True],
        [S, None], [S, b""], [None, b"c"], [S, b"c", [1]], [S, b"c", 2**63], [S, b"c", 2**64 - 1],
    ],
    Cmd.DATAGET: [[], [S, S], [None], [b""]],
    Cmd.DATASET: [[], [S], [S, b"d", b"x"], [S, None], [S, []], [None, b"d"], [b"", b"d"], [S, 1.5]],
    Cmd.TIMEOUT: [
        [], [S, 600, 1], [S, b"abc"], [S, 0], [S, -1], [S, 2**40], [S, 365 * 86400 + 1], [S, 2**64 - 1],
        [S, None], [S, 1.5], [S, True], [None], [b""], [S, []],
    ],
    Cmd.CTL: [[], [S, 0, 1], [S, 7], [S, -1], [S, b"BOGUS"], [S, None], [None], [b""], [S, 1.5], [S, []]],
    Cmd.UNIQ: [
        [], [0], [-1], [257], [2**64 - 1], [-(2**63)], [b"abc"], [1.5], [None], [True],
        [32, b"", b"", 1], [32, []], [32, b"", None], [32, b"c" * 1025],
    ],
    Cmd.RANDSTR: [[], [0], [-5], [65537], [10**12], [2**64 - 1], [1, 2], [None], [b"x"], [0.5]],
    Cmd.SLOCK: [
        [], [S, 0, 1000, 1], [S, -1], [S, 300_001], [S, 2**63], [S, 2**64 - 1], [S, 0, 0], [S, 0, -1],
        [S, 0, 3_600_001], [S, b"x"], [S, 1.5], [None], [b""], [S, []], [S, 0, b"x"],
    ],
    Cmd.SUNLOCK: [[], [S], [S, 1, 2], [S, -1], [S, b"abc"], [S, None], [None, 1], [b"", 1], [S, 1.5]],
    Cmd.PLUGIN: [[], [S], [S, b"v", b"p", b"x"], [S, None], [None, b"v"], [b"", b"v"], [S, b"v", []]],
    Cmd.CALL: [[], [b"fn", b"1", b"2", b"3", b"4", b"5"], [None], [b""], [b"fn", None], [[]]],
}


# Between farm members only: a standalone node does not know them (UNKNOWN).
MEMBER_BAD_ARGS: dict[int, list[list]] = {
    Cmd.FWD: [[], [1], [1, Cmd.PING], [-1, Cmd.PING, []], [b"x", Cmd.PING, []], [1, b"x", []], [None, None, None], [1, 2, [], 4], [1, Cmd.PING, None], [1, Cmd.PING, b"x"]],
    Cmd.HANDOFF: [[], [b"x"], [[b"x"]], [[[S]]], [[[S, b"", b"", 1, [], 1.0, 1.0, 0]]], [[[b"", b"", b"", 1, [], 1.0, 1.0, 60]]],
                  [[[S, b"", b"", 1, [[b"n", 1, 1]], 1.0, 1.0, 60]]], [[], []]],
    Cmd.TAKE: [[], [1], [None], [S, S], [[]]],
}


def test_bad_args_table_covers_every_command():
    assert set(BAD_ARGS) | set(MEMBER_BAD_ARGS) == {c for c in Cmd} - UNSUPPORTED


async def _check_bad_args(addr, cmd: int, cases: list[list]) -> None:
    bystander = await Wire.open(addr)
    w = await Wire.open(addr)
    rid = 1000
    for args in cases:
        # The bad request and a PING pipelined behind it: BADARG, then PONG.
        await w.send(encode_frame([rid, int(cmd), args]) + encode_frame([rid + 1, Cmd.PING, []]))
        resp = await w.recv()
        assert resp[1] == ERR, f"{Cmd(cmd).name} {args!r:.200}: expected BADARG, got {resp!r:.300}"
        assert resp[2][0] == Err.BADARG, f"{Cmd(cmd).name} {args!r:.200}: expected BADARG, got {resp!r:.300}"
        assert resp[0] == rid
        assert_ok(await w.recv(), rid + 1, b"PONG")
        rid += 2
    await assert_serving(addr, bystander, w)
    # No bad request changed anything.
    assert_ok(await w.call(1, Cmd.GETALL, [KEEP]), 1, {KEEP_VAR: KEEP_VALUE})
    assert_ok(await w.call(2, Cmd.CTL, [KEEP, 0]), 2, 1)


@pytest.mark.parametrize("cmd", [pytest.param(c, id=Cmd(c).name) for c in BAD_ARGS])
async def test_bad_arguments(addr, cmd):
    await _check_bad_args(addr, cmd, BAD_ARGS[cmd])
    w = await Wire.open(addr)
    assert_ok(await w.call(3, Cmd.COUNT, []), 3, 1)  # nothing was created


async def test_bad_arguments_subprocess(proc_node):
    addr = (proc_node.host, proc_node.port)  # a farm of one: member commands too
    for cmd, cases in (BAD_ARGS | MEMBER_BAD_ARGS).items():
        await _check_bad_args(addr, cmd, cases)


async def test_requests_refused_while_routing_are_counted_as_command_errors(proc_node):
    """A farm member refuses a bad FWD envelope, HANDOFF or TAKE before any
    command runs (cluster routing, not Node.execute): each is one more in
    INFO's command_errors, as every other error answer is."""
    w = await Wire.open((proc_node.host, proc_node.port))

    async def errors() -> int:
        resp = await w.call(1, Cmd.INFO, [])
        return resp[2]["command_errors"]

    before = await errors()
    rid = 10
    for cmd, cases in MEMBER_BAD_ARGS.items():
        for args in cases:
            assert_err(await w.call(rid, cmd, args), Err.BADARG, rid)
            rid += 1
    # An error Node.execute answers is counted once, not again by the server.
    assert_err(await w.call(rid, Cmd.GETVAL, [b"no-such-session", b"x"]), Err.NOSESSION, rid)
    assert await errors() == before + (rid - 10) + 1


@pytest.mark.parametrize("cmd", [pytest.param(c, id=Cmd(c).name) for c in MEMBER_BAD_ARGS])
async def test_member_commands_unknown_to_a_standalone_node(addr, cmd):
    w = await Wire.open(addr)
    assert_err(await w.call(7, cmd, [1, Cmd.PING, []]), Err.UNKNOWN, 7)
    await assert_serving(addr, w)


async def test_unsupported_protocol_version(target):
    w = await Wire.open(target)
    assert_err(await w.call(3, Cmd.HELLO, [PROTOCOL_VERSION + 1]), Err.BADVER, 3)
    assert_err(await w.call(4, Cmd.HELLO, [0]), Err.BADVER, 4)
    assert_ok(await w.call(5, Cmd.HELLO, [PROTOCOL_VERSION]), 5)
    await assert_serving(target, w)


# Numbers at and just past their limits (default configuration).
NUMERIC_LIMITS = [
    # (cmd, args, ok?)
    (Cmd.RANDSTR, [1], True),
    (Cmd.RANDSTR, [65536], True),
    (Cmd.RANDSTR, [65537], False),
    (Cmd.RANDSTR, [-1], False),
    (Cmd.RANDSTR, [2**63 - 1], False),
    (Cmd.UNIQ, [1], True),
    (Cmd.UNIQ, [256], True),
    (Cmd.UNIQ, [257], False),
    (Cmd.UNIQ, [-32], False),
    (Cmd.UNIQ, [2**64 - 1], False),
    (Cmd.TIMEOUT, [KEEP, 1], True),
    (Cmd.TIMEOUT, [KEEP, 365 * 86400], True),
    (Cmd.TIMEOUT, [KEEP, 365 * 86400 + 1], False),
    (Cmd.TIMEOUT, [KEEP, 0], False),
    (Cmd.TIMEOUT, [KEEP, -1440], False),
    (Cmd.TIMEOUT, [KEEP, -(2**63)], False),
    (Cmd.SLOCK, [b"lim-a", 300_000, 1], True),  # free lock: no wait happens
    (Cmd.SLOCK, [b"lim-b", 0, 3_600_000], True),
    (Cmd.SLOCK, [b"lim-c", 300_001], False),
    (Cmd.SLOCK, [b"lim-d", -1], False),
    (Cmd.SLOCK, [b"lim-e", 0, 3_600_001], False),
    (Cmd.SLOCK, [b"lim-f", 0, -1], False),
    (Cmd.SLOCK, [b"lim-g", 2**64 - 1, 2**64 - 1], False),
    (Cmd.SUNLOCK, [b"lim-h", -1], False),
    (Cmd.INC, [KEEP, b"ctr", 2**63 - 1], True),
    (Cmd.INC, [KEEP, b"ctr2", -(2**63)], True),
    (Cmd.INC, [KEEP, b"ctr3", 2**64 - 1], False),
]


@pytest.mark.parametrize(
    "cmd,args,ok", [pytest.param(c, a, o, id=f"{Cmd(c).name}-{a[-1]}") for c, a, o in NUMERIC_LIMITS]
)
async def test_numeric_limits(addr, cmd, args, ok):
    w = await Wire.open(addr)
    resp = await w.call(50, cmd, args)
    if ok:
        assert_ok(resp, 50)
    else:
        assert_err(resp, Err.BADARG, 50)
    await assert_serving(addr, w)


async def test_counter_overflow_is_badarg_and_keeps_value(addr):
    w = await Wire.open(addr)
    assert_ok(await w.call(1, Cmd.INC, [KEEP, b"ctr", 2**63 - 1]), 1, 2**63 - 1)
    assert_err(await w.call(2, Cmd.INC, [KEEP, b"ctr"]), Err.BADARG, 2)
    assert_ok(await w.call(3, Cmd.GETVAL, [KEEP, b"ctr"]), 3, str(2**63 - 1).encode())
    await assert_serving(addr, w)


# -----------------------------------------------------------------------------
# Unknown and unsupported commands


@pytest.mark.parametrize(
    "cmd",
    [0, 1, 999, 1025, 1027, 1099, 1104, 1199, 65536, 2**32, 2**63 - 1, 2**64 - 1, -1, -(2**63)]
    + [pytest.param(int(c), id=c.name) for c in sorted(UNSUPPORTED)],
)
async def test_unknown_command(target, cmd):
    bystander = await Wire.open(target)
    w = await Wire.open(target)
    assert_err(await w.call(42, cmd, []), Err.UNKNOWN, 42)
    assert_err(await w.call(43, cmd, [KEEP, b"x", 1, None]), Err.UNKNOWN, 43)
    await assert_serving(target, bystander, w)


# -----------------------------------------------------------------------------
# Too many connections


async def test_too_many_connections_in_process(nursery):
    server = await start_seeded(nursery, max_connections=20)
    addr = server.ports[0]
    await wait_until(lambda: server.connections == 0)  # the seeding connection is gone
    first = []
    for i in range(20):
        w = await Wire.open(addr)
        assert_ok(await w.call(i, Cmd.PING, []), i, b"PONG")
        first.append(w)
    assert server.connections == 20

    async def refused(results: list) -> None:
        w = await Wire.open(addr)
        results.append(await w.read_until_close())
        await w.close()

    extras: list = []
    async with trio.open_nursery() as n:
        for _ in range(20):
            n.start_soon(refused, extras)
    assert len(extras) == 20
    for answers in extras:
        assert len(answers) == 1, answers
        assert_err(answers[0], Err.BUSY, None)
    assert server.counters.connections_refused == 20

    for i, w in enumerate(first):  # the first 20 are untouched
        await check_serving(w, 100 + 10 * i)

    for w in first[:5]:
        await w.close()
    await wait_until(lambda: server.connections == 15)
    again = []
    for i in range(5):
        w = await Wire.open(addr)
        await check_serving(w, 400 + 10 * i)
        again.append(w)
    w = await Wire.open(addr)  # full again
    answers = await w.read_until_close()
    assert len(answers) == 1
    assert_err(answers[0], Err.BUSY, None)
    for w in first[5:] + again:
        await check_serving(w, 600)


async def _open_until_accepted(addr) -> Wire:
    """Opens connections until the node accepts one (it may not have noticed a close yet)."""
    with trio.fail_after(IO_TIMEOUT):
        while True:
            w = await Wire.open(addr)
            try:
                await w.send_msg([1, Cmd.PING, []])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # refused and closed already: its BUSY answer is still readable
            with trio.fail_after(IO_TIMEOUT):
                while not split_frames(w.buf)[0]:
                    if not await w._fill():
                        break
            answers = [unpack_response(b) for b in split_frames(w.buf)[0]]
            if answers and answers[0][1] == OK:
                w.buf = b""
                assert_ok(answers[0], 1, b"PONG")
                return w
            assert answers and answers[0][2][0] == Err.BUSY and answers[0][0] is None, answers
            await w.close()
            await trio.sleep(0.01)  # back off before asking again


async def test_too_many_connections_subprocess():
    node = NodeProcess("--max-connections", "20")
    try:
        addr = (node.host, node.port)
        first = [await _open_until_accepted(addr)]
        await first[0].call(2, Cmd.CREATE, [KEEP])
        await first[0].call(3, Cmd.SETVAL, [KEEP, KEEP_VAR, KEEP_VALUE])
        await first[0].call(4, Cmd.DATASET, [KEEP, KEEP_DATA])
        for _ in range(19):
            first.append(await _open_until_accepted(addr))
        for _ in range(20):
            w = await Wire.open(addr)
            answers = await w.read_until_close()
            assert len(answers) == 1, answers
            assert_err(answers[0], Err.BUSY, None)
            await w.close()
        for i, w in enumerate(first):
            await check_serving(w, 100 + 10 * i)
        for w in first[:5]:
            await w.close()
        again = [await _open_until_accepted(addr) for _ in range(5)]
        w = await Wire.open(addr)
        answers = await w.read_until_close()
        assert len(answers) == 1
        assert_err(answers[0], Err.BUSY, None)
        for i, w in enumerate(first[5:] + again):
            await check_serving(w, 500 + 10 * i)
    finally:
        assert node.stop() == 0, node.read_log()


# -----------------------------------------------------------------------------
# Stalled and idle clients


async def test_half_frame_then_stall_gets_timeout(nursery):
    server = await start_seeded(nursery, frame_timeout=0.5)
    addr = server.ports[0]
    bystander = await Wire.open(addr)
    w = await Wire.open(addr)
    await w.send(encode_frame([1, Cmd.PING, []]) + encode_frame([2, Cmd.PING, []])[:6])
    assert_ok(await w.recv(), 1, b"PONG")
    started = trio.current_time()
    answers = await w.read_until_close()
    elapsed = trio.current_time() - started
    assert len(answers) == 1, answers
    assert_err(answers[0], Err.TIMEOUT, None)
    assert 0.3 <= elapsed < 3, elapsed
    await assert_serving(addr, bystander)


async def test_slow_drip_frame_gets_timeout(nursery):
    """A frame trickled in a byte at a time must still complete within frame_timeout."""
    server = await start_seeded(nursery, frame_timeout=0.5, idle_timeout=10)
    addr = server.ports[0]
    w = await Wire.open(addr)
    data = encode_frame([1, Cmd.SETVAL, [KEEP, b"slow", b"x" * 100]])
    started = trio.current_time()
    try:
        for byte in data:
            await w.send(bytes([byte]))
            await trio.sleep(0.05)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    answers = await w.read_until_close()
    assert len(answers) == 1, answers
    assert_err(answers[0], Err.TIMEOUT, None)
    assert trio.current_time() - started < 3
    await assert_serving(addr)
    r = await Wire.open(addr)
    assert_ok(await r.call(1, Cmd.GETVAL, [KEEP, b"slow"]), 1, None)  # never applied


async def test_frame_timeout_is_per_frame(nursery):
    """A client streaming pipelined requests whose writes split frames is not a
    staller: each frame completes well within frame_timeout, so none may time
    out, however long the stream lasts."""
    server = await start_seeded(nursery, frame_timeout=0.5)
    addr = server.ports[0]
    w = await Wire.open(addr)
    frames = [encode_frame([i, Cmd.PING, []]) for i in range(10)]
    # Each write ends 2 bytes into the next frame; frames complete within 0.15 s.
    stream = b"".join(frames)
    starts = [sum(len(f) for f in frames[:i]) for i in range(len(frames))]
    cuts = [s + 2 for s in starts[1:]] + [len(stream)]
    chunks, prev = [], 0
    for cut in cuts:
        chunks.append(stream[prev:cut])
        prev = cut
    try:
        for chunk in chunks:
            await w.send(chunk)
            await trio.sleep(0.15)
        await w.stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the node closed the connection: the answers below say why
    answers = await w.read_until_close()
    assert [a[0] for a in answers] == list(range(10)), answers
    for i, a in enumerate(answers):
        assert_ok(a, i, b"PONG")


async def test_idle_connection_is_closed(nursery):
    server = await start_seeded(nursery, idle_timeout=0.5)
    addr = server.ports[0]
    w = await Wire.open(addr)
    assert_ok(await w.call(1, Cmd.PING, []), 1, b"PONG")
    started = trio.current_time()
    answers = await w.read_until_close()
    elapsed = trio.current_time() - started
    assert 0.3 <= elapsed < 3, elapsed
    assert len(answers) == 1, answers
    assert_err(answers[0], Err.TIMEOUT, None)
    # A connection that never sent anything is closed the same way.
    w = await Wire.open(addr)
    answers = await w.read_until_close()
    assert len(answers) == 1 and answers[0][2][0] == Err.TIMEOUT, answers
    await assert_serving(addr)
    await wait_until(lambda: server.connections == 0)


async def test_client_that_never_reads_is_dropped(nursery):
    """A client that pipelines requests for large answers and never reads them
    must not hold its connection (a slot of max_connections) forever: it sends
    no request for longer than idle_timeout, so the node closes it."""
    server = await start_seeded(nursery, idle_timeout=0.5, frame_timeout=0.5)
    addr = server.ports[0]
    await wait_until(lambda: server.connections == 0)
    w = await Wire.open(addr)
    assert_ok(await w.call(1, Cmd.SETVAL, [KEEP, b"big", b"x" * 1_000_000]), 1, True)
    # ~64 MB of answers: far more than the socket buffers hold.
    with trio.move_on_after(2):
        for i in range(64):
            await w.send_msg([10 + i, Cmd.GETVAL, [KEEP, b"big"]])
    # The node keeps serving others meanwhile.
    await assert_serving(addr)
    # And drops the non-reader: idle_timeout is 0.5 s; allow 8 times that.
    with trio.move_on_after(4):
        await wait_until(lambda: server.connections == 0, timeout=5)
    assert server.connections == 0, "a client that never reads still holds its connection"
    # What the node did send is whole answers, then at most one answer cut
    # short: no TIMEOUT frame written into the middle of an answer.
    with trio.fail_after(IO_TIMEOUT):
        while await w._fill():
            pass
    bodies, rest = split_frames(w.buf)
    answers = [unpack_response(b) for b in bodies]
    assert [a[0] for a in answers] == list(range(10, 10 + len(answers)))
    assert all(a[1] == OK and a[2] == b"x" * 1_000_000 for a in answers)
    assert b"closing" not in rest[-200:]
    await w.close()


async def test_half_frame_then_stall_subprocess(proc_node):
    addr = (proc_node.host, proc_node.port)
    bystander = await Wire.open(addr)
    w = await Wire.open(addr)
    await w.send(struct.pack(">I", 50) + b"\x93\x01")
    answers = await w.read_until_close()
    assert len(answers) == 1, answers
    assert_err(answers[0], Err.TIMEOUT, None)
    await assert_serving(addr, bystander)


# -----------------------------------------------------------------------------
# Deep nesting, ext types, floats


def nested_list(depth: int, leaf: Any = b"x") -> Any:
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


async def test_nesting_beyond_the_decoder_limit(target):
    w = await Wire.open(target)
    for body in [
        b"\x91" * 100_000 + b"\xc0",  # 100000 nested arrays
        b"\x81\xc0" * 50_000 + b"\xc0",  # 50000 nested maps
        b"\x93\x01\xcd\x04\x02" + b"\x91" * 50_000 + b"\x90",  # inside args
    ]:
        await w.send(frame(body))
        resp = await w.recv()
        assert resp[1] == ERR and resp[2][0] == Err.BADHDR, resp
        assert resp[0] in (None, 1), resp
    assert_ok(await w.call(5, Cmd.PING, []), 5, b"PONG")
    await assert_serving(target, w)


async def test_nested_values_as_arguments(addr):
    w = await Wire.open(addr)
    deep = nested_list(500)
    deep_map: Any = b"x"
    for _ in range(500):
        deep_map = {b"k": deep_map}
    assert_err(await w.call(1, Cmd.SETVAL, [KEEP, b"n", deep]), Err.BADARG, 1)
    assert_err(await w.call(2, Cmd.SETVAL, [KEEP, {b"n": deep_map}]), Err.BADARG, 2)
    assert_err(await w.call(3, Cmd.CREATE, [deep]), Err.BADARG, 3)
    assert_err(await w.call(4, Cmd.FIND, [b"n", deep_map]), Err.BADARG, 4)
    assert_err(await w.call(5, Cmd.SLOCK, [KEEP, deep]), Err.BADARG, 5)
    # GETVAL returns the default, whatever it is, when the variable is absent.
    resp = await w.call(6, Cmd.GETVAL, [KEEP, b"absent", nested_list(200)])
    assert_ok(resp, 6, nested_list(200))
    await assert_serving(addr, w)


async def test_ext_types_and_floats_as_arguments(addr):
    w = await Wire.open(addr)
    ext = msgpack.ExtType(5, b"payload")
    ts = msgpack.Timestamp(1_000_000_000, 5)
    rid = 0
    bad = [
        [Cmd.SETVAL, [KEEP, b"n", ext]],
        [Cmd.SETVAL, [KEEP, b"n", ts]],
        [Cmd.SETVAL, [KEEP, ext, b"v"]],
        [Cmd.SETVAL, [KEEP, {ext: b"v"}]],
        [Cmd.SETVAL, [KEEP, b"n", 1.5]],
        [Cmd.CREATE, [ext]],
        [Cmd.CREATE, [2.5]],
        [Cmd.DATASET, [KEEP, ts]],
        [Cmd.TIMEOUT, [KEEP, ext]],
        [Cmd.TIMEOUT, [KEEP, 600.5]],
        [Cmd.RANDSTR, [1.5]],
        [Cmd.RANDSTR, [math.nan]],
        [Cmd.RANDSTR, [math.inf]],
        [Cmd.RANDSTR, [-0.0]],
        [Cmd.UNIQ, [-math.inf]],
        [Cmd.UNIQ, [32.000001]],
        [Cmd.INC, [KEEP, b"c", 1e300]],
        [Cmd.INC, [KEEP, b"c", math.nan]],
        [Cmd.SLOCK, [KEEP, 1e20]],
        [Cmd.SUNLOCK, [KEEP, 1e20]],
        [Cmd.CTL, [KEEP, 0.5]],
        [Cmd.CTL, [KEEP, ext]],
    ]
    for cmd, args in bad:
        rid += 1
        resp = await w.call(rid, cmd, args)
        assert resp[1] == ERR and resp[2][0] == Err.BADARG and resp[0] == rid, (Cmd(cmd).name, args, resp)
    # An ext type or float in the header.
    for body, exp_id in [
        (_p([ext, Cmd.PING, []]), None),
        (_p([1.0, Cmd.PING, []]), None),
        (_p([60, ext, []]), 60),
        (_p([61, Cmd.PING, ext]), 61),
        (_p([62, Cmd.PING, 1.5]), 62),
    ]:
        await w.send(frame(body))
        assert_err(await w.recv(), Err.BADHDR, exp_id)
    # An ext value in the default of GETVAL is echoed untouched.
    assert_ok(await w.call(70, Cmd.GETVAL, [KEEP, b"absent", ext]), 70, ext)
    # The variables were never touched.
    assert_ok(await w.call(71, Cmd.GETALL, [KEEP]), 71, {KEEP_VAR: KEEP_VALUE})
    await assert_serving(addr, w)


async def test_integral_floats_are_accepted_as_integers(addr):
    w = await Wire.open(addr)
    assert_ok(await w.call(1, Cmd.TIMEOUT, [KEEP, 600.0]), 1, 600)
    resp = await w.call(2, Cmd.RANDSTR, [8.0])
    assert_ok(resp, 2)
    assert len(resp[2]) == 8
    assert_ok(await w.call(3, Cmd.INC, [KEEP, b"f", 2.0]), 3, 2)
    await assert_serving(addr, w)


# -----------------------------------------------------------------------------
# Invalid UTF-8 in MessagePack str: accepted as bytes, round-trips as bytes.


def _req_str(rid: int, cmd: int, args: list) -> bytes:
    """A request with every byte string sent as MessagePack *str* (even invalid UTF-8)."""
    return frame(msgpack.packb([rid, int(cmd), args], use_bin_type=False))


async def test_invalid_utf8_in_str_round_trips(target):
    w = await Wire.open(target)
    sid = b"utf8-\xff\xfe\x00-" + uuid.uuid4().hex.encode()
    name = b"n\xc3\x28\x00"
    value = b"\xed\xa0\x80\xf8\x88\x80\x80\x80"
    data = b"\xc0\xaf data \xff"
    for rid, cmd, args in [
        (1, Cmd.CREATE, [sid]),
        (2, Cmd.SETVAL, [sid, name, value]),
        (3, Cmd.DATASET, [sid, data]),
        (4, Cmd.INC, [sid, b"ctr\xff"]),
    ]:
        await w.send(_req_str(rid, cmd, args))
        assert_ok(await w.recv(), rid)
    checks = [
        (10, Cmd.GETVAL, [sid, name], value),
        (11, Cmd.GETALL, [sid], {name: value, b"ctr\xff": b"1"}),
        (12, Cmd.DATAGET, [sid], data),
        (13, Cmd.FIND, [name, value], [sid]),
        (14, Cmd.LISTVAR, [name], {sid: value}),
        (15, Cmd.CTL, [sid, 0], 1),
    ]
    for rid, cmd, args, expected in checks:
        # Asked with str-typed strings ...
        await w.send(_req_str(rid, cmd, args))
        assert_ok(await w.recv(), rid, expected)
        # ... and with bin-typed strings: the same bytes, the same answer.
        assert_ok(await w.call(rid + 100, cmd, args), rid + 100, expected)
    await w.send(_req_str(20, Cmd.LIST, []))
    resp = await w.recv()
    assert_ok(resp, 20)
    assert sid in resp[2]
    await w.send(_req_str(21, Cmd.DROP, [sid]))
    assert_ok(await w.recv(), 21, True)
    assert_err(await w.call(22, Cmd.GETALL, [sid]), Err.NOSESSION, 22)
    await assert_serving(target, w)


# -----------------------------------------------------------------------------
# A pipelined batch mixing good and bad requests.


async def test_pipelined_batch_mixing_good_and_bad(target):
    bystander = await Wire.open(target)
    sid = uniq_sid("pipe")
    batch: list[tuple[bytes, tuple]] = [
        (encode_frame([1, Cmd.PING, []]), ("ok", 1, b"PONG")),
        (frame(b"\xc1"), ("err", None, Err.BADHDR)),
        (encode_frame([2, Cmd.CREATE, [sid]]), ("ok", 2, True)),
        (encode_frame([3, 999, []]), ("err", 3, Err.UNKNOWN)),
        (encode_frame([4, Cmd.SETVAL, [sid, b"a", b"41"]]), ("ok", 4, True)),
        (encode_frame([b"x", Cmd.PING, []]), ("err", None, Err.BADHDR)),
        (encode_frame([5, Cmd.INC, [sid, b"a"]]), ("ok", 5, 42)),
        (encode_frame([6, Cmd.INC, [sid]]), ("err", 6, Err.BADARG)),
        (encode_frame([7, Cmd.PING]), ("err", 7, Err.BADHDR)),
        (encode_frame([8, Cmd.GETVAL, [sid, b"a"]]), ("ok", 8, b"42")),
        (encode_frame([9, Cmd.CREATE, [sid]]), ("err", 9, Err.DUPSESSION)),
        (encode_frame([10, Cmd.GETALL, [sid + b"-missing"]]), ("err", 10, Err.NOSESSION)),
        (encode_frame([11, Cmd.RANDSTR, [-1]]), ("err", 11, Err.BADARG)),
        (encode_frame([12, Cmd.FLUSH, []]), ("err", 12, Err.UNKNOWN)),
        (encode_frame([13, Cmd.SETVAL, [sid, b"a", b"x"]]), ("ok", 13, True)),
        (encode_frame([14, Cmd.INC, [sid, b"a"]]), ("err", 14, Err.NOVALUE)),
        (encode_frame([15, Cmd.SLOCK, [sid, 0]]), ("ok", 15, ...)),
        (encode_frame([16, Cmd.SLOCK, [sid, 0]]), ("err", 16, Err.LOCKED)),
        (encode_frame([17, Cmd.SUNLOCK, [sid, 12345]]), ("err", 17, Err.LOCKED)),
        (frame(b""), ("err", None, Err.BADHDR)),
        (encode_frame([11, Cmd.PING, []]), ("ok", 11, b"PONG")),  # a reused id is fine
        (encode_frame([18, Cmd.GETALL, [sid]]), ("ok", 18, {b"a": b"x"})),
        (encode_frame([19, Cmd.DROP, [sid]]), ("ok", 19, True)),
    ]
    w = await Wire.open(target)
    await w.send(b"".join(data for data, _ in batch))
    answers = await w.recv_n(len(batch))
    key = None
    for (_, (kind, rid, what)), resp in zip(batch, answers):
        if kind == "ok":
            assert_ok(resp, rid, what)
            if rid == 15:
                key = resp[2]
        else:
            assert_err(resp, what, rid)
    assert type(key) is int and key != 0
    assert_ok(await w.call(30, Cmd.SUNLOCK, [sid, key]), 30, key)
    await assert_serving(target, bystander, w)
