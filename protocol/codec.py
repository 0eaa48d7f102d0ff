"""Sans-I/O codec for the msession wire protocol.

Theory of operation
-------------------
A connection carries *frames*: a 4-byte big-endian unsigned length, then that
many bytes holding one MessagePack value. Nothing here touches a socket: bytes
go in through ``feed()``, complete frames or parsed messages come out, and
``encode_*`` functions return the bytes to send. The server and both clients
(and later the inter-node links) are thin loops around these objects.

Requests are ``[id, cmd, args]`` and responses ``[id, status, payload]``
(``payload`` is the result on OK, ``[code, message]`` on ERR). ``PROTOCOL.md``
is the normative description.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from .constants import DEFAULT_MAX_FRAME, HEADER_SIZE, Err, Status

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_unpackb = msgpack.unpackb
_OK = int(Status.OK)  # plain ints pack the same, without msgpack's slower path for int subclasses
_ERR = int(Status.ERR)
MAX_REQUEST_ID = 2**64 - 1


class ProtocolError(Exception):
    """A peer broke the wire protocol. ``code`` is an ``Err`` number."""

    def __init__(self, code: int, message: str, request_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    ``feed(data)`` appends bytes; ``next_frame()`` returns the next complete body
    or ``None``. A length above ``max_frame`` raises ``ProtocolError(BADLEN)``;
    the stream cannot be resynchronised after that, so the caller closes it.
    """

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self._buf: bytes | bytearray = b""  # bytes: the last block fed, read in place
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        buf = self._buf
        if self._pos == len(buf) and type(data) is bytes:
            # Nothing buffered (the usual case): read frames from ``data`` itself,
            # without copying it; bytes are immutable, so nobody changes it.
            self._buf = data
            self._pos = 0
            return
        if type(buf) is bytes:  # frames were read from a received block: keep its rest
            self._buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos and self._pos == len(buf):
            buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(buf):
            del buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        length = _unpack_header(buf, pos)[0]
        if length > self.max_frame:
            raise ProtocolError(
                Err.BADLEN, f"frame of {length} bytes exceeds the limit of {self.max_frame}"
            )
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            return None
        self._pos = end
        if type(buf) is bytes or length < 4096:
            # A slice of bytes is bytes (one copy), and bytes() of it no copy; for
            # a small frame in the bytearray two short copies beat a memoryview.
            return bytes(buf[pos + HEADER_SIZE : end])
        with memoryview(buf) as view:
            return bytes(view[pos + HEADER_SIZE : end])  # one copy

    def has_frame(self) -> bool:
        """Whether a complete frame (or an oversize length) is buffered."""
        available = len(self._buf) - self._pos
        if available < HEADER_SIZE:
            return False
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        return length > self.max_frame or available >= HEADER_SIZE + length

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame waiting in the buffer."""
        return len(self._buf) - self._pos


def frame(body: bytes) -> bytes:
    return _pack_header(len(body)) + body


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_frame(obj: Any) -> bytes:
    return frame(pack(obj))


# --------------------------------------------------------------------------
# Requests (server side parses, client side encodes)


def encode_request(request_id: int, cmd: int, args: list | tuple) -> bytes:
    return encode_frame([request_id, int(cmd), list(args)])


def decode_request(body: bytes) -> tuple[int, int, list]:
    """Parses one frame body as a request: ``(id, cmd, args)``.

    Byte strings arrive as ``bytes`` whether the peer sent MessagePack *str* or
    *bin* (``raw=True``): keys, names and values are binary-safe and no decoding
    error can happen here. Raises ``ProtocolError(BADHDR)``, carrying the request
    id when one could be read, for anything that is not ``[id, cmd, args]``.
    """
    try:
        msg = _unpackb(body, raw=True, strict_map_key=False, use_list=True)
    except msgpack.ExtraData as exc:
        raise ProtocolError(Err.BADHDR, "frame holds more than one MessagePack value", _salvage_id(exc.unpacked)) from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(Err.BADHDR, f"frame is not valid MessagePack ({type(exc).__name__})") from None
    if type(msg) is list and len(msg) == 3:
        rid, cmd, args = msg
        if type(rid) is int and type(cmd) is int and type(args) is list and 0 <= rid <= MAX_REQUEST_ID:
            return rid, cmd, args  # well formed: the common case
    return _bad_request(msg)


def _bad_request(msg: Any) -> tuple[int, int, list]:
    """The checks of a request, in order, for one that failed the quick test."""
    if not isinstance(msg, list) or len(msg) != 3:
        rid = _salvage_id(msg)
        raise ProtocolError(Err.BADHDR, "request must be an array [id, cmd, args]", rid)
    rid, cmd, args = msg
    if type(rid) is not int or not 0 <= rid <= MAX_REQUEST_ID:
        raise ProtocolError(Err.BADHDR, "request id must be an unsigned integer")
    if type(cmd) is not int:
        raise ProtocolError(Err.BADHDR, "command must be an integer", rid)
    if not isinstance(args, list):
        raise ProtocolError(Err.BADHDR, "args must be an array", rid)
    return rid, cmd, args


def _salvage_id(msg: Any) -> int | None:
    if isinstance(msg, list) and msg and type(msg[0]) is int and 0 <= msg[0] <= MAX_REQUEST_ID:
        return msg[0]
    return None


class Encoder:
    """Encodes answers (the server's side) with one reusable ``msgpack.Packer``:
    not thread-safe, so one per thread or event loop."""

    __slots__ = ("_pack",)

    def __init__(self):
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def ok(self, request_id: int | None, result: Any) -> bytes:
        body = self._pack([request_id, _OK, result])
        return _pack_header(len(body)) + body

    def error(self, request_id: int | None, code: int, message: str) -> bytes:
        return frame(self._pack([request_id, _ERR, [int(code), message]]))


# --------------------------------------------------------------------------
# Responses (client side)


@dataclass(slots=True)
class Response:
    id: int | None
    ok: bool
    value: Any = None  # the result when ok
    code: int = 0  # the error code when not ok
    message: str = ""


def parse_response(body: bytes) -> Response:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise ProtocolError(Err.BADHDR, f"response is not valid MessagePack ({type(exc).__name__})") from None
    if not isinstance(msg, list) or len(msg) != 3 or msg[1] not in (Status.OK, Status.ERR):
        raise ProtocolError(Err.BADHDR, "response must be an array [id, status, payload]")
    rid, status, payload = msg
    if status == Status.OK:
        return Response(rid, True, payload)
    if not isinstance(payload, list) or len(payload) != 2 or type(payload[0]) is not int:
        raise ProtocolError(Err.BADHDR, "error payload must be [code, message]")
    message = payload[1] if isinstance(payload[1], str) else str(payload[1])
    return Response(rid, False, None, payload[0], message)


class ClientProtocol:
    """The client half of a connection: numbers requests and matches answers.

    ``request()`` returns ``(id, bytes_to_send)``; ``feed()`` returns the
    responses completed by the bytes received, in arrival order.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self._decoder = FrameDecoder(max_frame)
        self._next_id = 1

    def request(self, cmd: int, args: list | tuple) -> tuple[int, bytes]:
        rid = self._next_id
        self._next_id = rid + 1 if rid < 2**32 - 1 else 1
        return rid, encode_request(rid, cmd, args)

    def feed(self, data: bytes) -> list[Response]:
        self._decoder.feed(data)
        out = []
        while (body := self._decoder.next_frame()) is not None:
            out.append(parse_response(body))
        return out
