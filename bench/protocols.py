"""The two client codecs of the load generator.

Both turn a workload operation into request bytes and turn received bytes into
reply values, sans I/O, with the same amount of work a real client does:

- ``MsessionCodec`` uses the project's own ``protocol.codec`` (``encode_request``,
  ``FrameDecoder``, ``parse_response``), i.e. MessagePack in C plus a little Python;
- ``RespCodec`` is hand-written RESP2 (``%``-formatting to encode, an incremental
  parser that materializes bulk strings and arrays).

A reply is its value, ``None`` for nil, or ``ERROR`` for an error reply.
"""

from __future__ import annotations

from protocol.codec import FrameDecoder, encode_request, parse_response
from protocol.constants import Cmd

from .workload import (
    COUNTER_VAR, DATA_GET, DATA_SET, N_BLOBS, N_VALUES, SETTABLE_VARS, VAR_GET, VAR_GETALL, VAR_SET,
    Workload,
)


class _Error:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ERROR"


ERROR = _Error()


class CodecError(Exception):
    """The server sent something that is not the protocol."""


# ----------------------------------------------------------------------------
# msession


class MsessionCodec:
    system = "msession"

    def __init__(self, wl: Workload):
        self.sids = wl.sids
        self.blobs = wl.blobs
        self.values = wl.values
        self.decoder = FrameDecoder()
        self.rid = 0

    def request(self, kind: int, s: int, a: int) -> bytes:
        self.rid = rid = self.rid + 1
        sid = self.sids[s]
        if kind == DATA_GET:
            return encode_request(rid, Cmd.DATAGET, [sid])
        if kind == VAR_GET:
            return encode_request(rid, Cmd.GETVAL, [sid, SETTABLE_VARS[a & 3]])
        if kind == VAR_GETALL:
            return encode_request(rid, Cmd.GETALL, [sid])
        if kind == DATA_SET:
            return encode_request(rid, Cmd.DATASET, [sid, self.blobs[a % N_BLOBS]])
        if kind == VAR_SET:
            return encode_request(rid, Cmd.SETVAL, [sid, SETTABLE_VARS[a & 3], self.values[a % N_VALUES]])
        return encode_request(rid, Cmd.INC, [sid, COUNTER_VAR])

    def ping(self) -> bytes:
        self.rid += 1
        return encode_request(self.rid, Cmd.PING, [])

    def feed(self, data: bytes) -> list:
        dec = self.decoder
        dec.feed(data)
        out = []
        try:
            while (body := dec.next_frame()) is not None:
                resp = parse_response(body)
                out.append(resp.value if resp.ok else ERROR)
        except Exception as exc:  # ProtocolError or worse: the stream is lost
            raise CodecError(f"msession: {exc}") from None
        return out

    # -- preloading ----------------------------------------------------------

    def preload_requests(self, wl: Workload, i: int) -> list[bytes]:
        sid = wl.sids[i]
        self.rid += 2
        return [
            encode_request(self.rid - 1, Cmd.DATASET, [sid, wl.initial_data(i)]),
            encode_request(self.rid, Cmd.SETVAL, [sid, wl.initial_vars(i)]),
        ]

    def reset_requests(self) -> list[bytes]:
        return []  # DATASET and SETVAL overwrite everything a phase changes

    def count_request(self) -> bytes:
        self.rid += 1
        return encode_request(self.rid, Cmd.COUNT, [])

    def expected_count(self, wl: Workload) -> int:
        return wl.n_sessions


# ----------------------------------------------------------------------------
# redis (RESP2)


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


def _resp1(a: bytes) -> bytes:
    return b"*1\r\n$%d\r\n%b\r\n" % (len(a), a)


def _resp2(a: bytes, b: bytes) -> bytes:
    return b"*2\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(a), a, len(b), b)


def _resp3(a: bytes, b: bytes, c: bytes) -> bytes:
    return b"*3\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(a), a, len(b), b, len(c), c)


def _resp4(a: bytes, b: bytes, c: bytes, d: bytes) -> bytes:
    return b"*4\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(a), a, len(b), b, len(c), c, len(d), d,
    )


class RespCodec:
    """Keys: ``s:<sid>`` holds the data blob (a string), ``v:<sid>`` the variables (a hash)."""

    system = "redis"

    def __init__(self, wl: Workload):
        self.dkeys = [b"s:" + sid for sid in wl.sids]
        self.vkeys = [b"v:" + sid for sid in wl.sids]
        self.blobs = wl.blobs
        self.values = wl.values
        self.buf = bytearray()

    def request(self, kind: int, s: int, a: int) -> bytes:
        if kind == DATA_GET:
            return _resp2(b"GET", self.dkeys[s])
        if kind == VAR_GET:
            return _resp3(b"HGET", self.vkeys[s], SETTABLE_VARS[a & 3])
        if kind == VAR_GETALL:
            return _resp2(b"HGETALL", self.vkeys[s])
        if kind == DATA_SET:
            return _resp3(b"SET", self.dkeys[s], self.blobs[a % N_BLOBS])
        if kind == VAR_SET:
            return _resp4(b"HSET", self.vkeys[s], SETTABLE_VARS[a & 3], self.values[a % N_VALUES])
        return _resp4(b"HINCRBY", self.vkeys[s], COUNTER_VAR, b"1")

    def ping(self) -> bytes:
        return _resp1(b"PING")

    def feed(self, data: bytes) -> list:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        out = []
        parse = self._parse
        while pos < n:
            r = parse(buf, pos, n)
            if r is None:
                break
            pos, value = r
            out.append(value)
        if pos:
            del buf[:pos]
        return out

    def _parse(self, buf: bytearray, pos: int, n: int):
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None
        t = buf[pos]
        if t == 36:  # $ bulk string
            length = int(buf[pos + 1 : nl])
            if length < 0:
                return nl + 2, None
            start = nl + 2
            end = start + length
            if end + 2 > n:
                return None
            return end + 2, bytes(buf[start:end])
        if t == 58:  # : integer
            return nl + 2, int(buf[pos + 1 : nl])
        if t == 43:  # + simple string
            return nl + 2, bytes(buf[pos + 1 : nl])
        if t == 45:  # - error
            return nl + 2, ERROR
        if t == 42:  # * array
            count = int(buf[pos + 1 : nl])
            if count < 0:
                return nl + 2, None
            p = nl + 2
            items = []
            for _ in range(count):
                r = self._parse(buf, p, n)
                if r is None:
                    return None
                p, v = r
                items.append(v)
            return p, items
        raise CodecError(f"redis: unexpected reply type byte {t!r}")

    # -- preloading ----------------------------------------------------------

    def preload_requests(self, wl: Workload, i: int) -> list[bytes]:
        hset = [b"HSET", self.vkeys[i]]
        for k, v in wl.initial_vars(i).items():
            hset += [k, v]
        return [_resp3(b"SET", self.dkeys[i], wl.initial_data(i)), resp(*hset)]

    def reset_requests(self) -> list[bytes]:
        return [_resp1(b"FLUSHALL")]

    def count_request(self) -> bytes:
        return _resp1(b"DBSIZE")

    def expected_count(self, wl: Workload) -> int:
        return 2 * wl.n_sessions


CODECS = {"msession": MsessionCodec, "redis": RespCodec}
