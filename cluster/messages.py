"""Gossip wire messages: MessagePack encoding and strict decoding (sans-I/O).

Every message is one MessagePack array whose first two items are the protocol
version and the message kind, then the sender's name and *epoch* (a random
64-bit number a node draws when it starts, so its packets and its state are
told apart from those of an earlier life under the same name)::

    PING      [1, 1, sender, epoch, seq, target, suspicion, updates]
    ACK       [1, 2, sender, epoch, seq, updates]
    NACK      [1, 3, sender, epoch, seq, updates]
    PING_REQ  [1, 4, sender, epoch, seq, target, host, port, suspicion, updates]
    GOSSIP    [1, 5, sender, epoch, updates]
    PUSH_PULL [1, 6, sender, epoch, join, entries]      (TCP, one frame each way)

``suspicion`` is ``nil`` or the incarnation at which the sender suspects the
target, so a suspect that is alive refutes at once. ``updates`` (piggybacked)
and ``entries`` (full state) are arrays of *updates*::

    [state, name, incarnation, epoch, host, port, meta, origin]

``state`` is 0 alive, 1 suspect, 2 dead, 3 left; ``meta`` is a map with string
keys (``nil`` except in alive updates and full state) of at most
``MAX_META`` encoded bytes; ``origin`` is the accuser's name for suspect and
dead updates (the leaver's own for left ones), else ``nil``.

Decoding is strict: anything else (wrong arity, wrong types, out-of-range
numbers, extension types, trailing bytes, another version) raises
``BadMessage`` with a short reason; nothing else escapes.

The requests members send each other on the data port (FWD's envelope, a
member's HELLO) are in ``peer_wire.py``: this module imports nothing of the
node, so the membership and its simulator stay sans-I/O and self-contained.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack


VERSION = 1

PING, ACK, NACK, PING_REQ, GOSSIP, PUSH_PULL = 1, 2, 3, 4, 5, 6
KIND_NAMES = {PING: "ping", ACK: "ack", NACK: "nack", PING_REQ: "ping-req", GOSSIP: "gossip", PUSH_PULL: "push-pull"}

ALIVE, SUSPECT, DEAD, LEFT = 0, 1, 2, 3
STATE_NAMES = ("alive", "suspect", "dead", "left")

MAX_NAME = 128  # characters
MAX_HOST = 255
MAX_META = 512  # encoded bytes
MAX_SEQ = 2**32 - 1
MAX_INCARNATION = 2**63 - 1
MAX_EPOCH = 2**64 - 1


class BadMessage(Exception):
    """A message that is not valid under this version of the protocol."""


@dataclass(frozen=True, slots=True)
class Update:
    state: int
    name: str
    incarnation: int
    epoch: int
    addr: tuple[str, int]
    meta: dict | None
    origin: str | None


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded UDP message. Fields a kind does not have are ``None`` (``seq`` 0)."""

    kind: int
    sender: str
    epoch: int
    seq: int
    target: str | None
    target_addr: tuple[str, int] | None
    suspicion: int | None
    updates: list[Update]


@dataclass(frozen=True, slots=True)
class PushPullMsg:
    sender: str
    epoch: int
    join: bool
    entries: list[Update]


# --------------------------------------------------------------------------
# Encoding


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


UPDATES_OVERHEAD = 3  # the largest array header an updates list may need in a packet


def encode_update(u: Update) -> bytes:
    return _pack([u.state, u.name, u.incarnation, u.epoch, u.addr[0], u.addr[1], u.meta, u.origin])


def encode_with_updates(fields: list, updates: list[bytes]) -> bytes:
    """``fields`` then the already-encoded ``updates`` as the last item, one array."""
    return b"".join(
        [array_header(len(fields) + 1), *map(_pack, fields), array_header(len(updates)), *updates]
    )


def encode_packet(fields: list, take, max_packet: int) -> bytes:
    """Like ``encode_with_updates``, the updates being ``take(space)``: as many
    as fit in the ``space`` bytes left under ``max_packet``."""
    fixed = b"".join(map(_pack, fields))
    space = max_packet - len(fixed) - 1 - UPDATES_OVERHEAD
    updates = take(space) if space > 0 else []
    return b"".join([array_header(len(fields) + 1), fixed, array_header(len(updates)), *updates])


def ping_fields(sender: str, epoch: int, seq: int, target: str, suspicion: int | None) -> list:
    return [VERSION, PING, sender, epoch, seq, target, suspicion]


def ack_fields(kind: int, sender: str, epoch: int, seq: int) -> list:
    return [VERSION, kind, sender, epoch, seq]


def ping_req_fields(sender: str, epoch: int, seq: int, target: str, addr: tuple[str, int], suspicion: int | None) -> list:
    return [VERSION, PING_REQ, sender, epoch, seq, target, addr[0], addr[1], suspicion]


def gossip_fields(sender: str, epoch: int) -> list:
    return [VERSION, GOSSIP, sender, epoch]


def encode_push_pull(sender: str, epoch: int, join: bool, entries: list[bytes]) -> bytes:
    return encode_with_updates([VERSION, PUSH_PULL, sender, epoch, join], entries)


# --------------------------------------------------------------------------
# Decoding


def _no_ext(code, data):
    raise BadMessage("extension types are not allowed")


def _unpack(data: bytes):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadMessage("not bytes")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext)
    except BadMessage:
        raise
    except msgpack.ExtraData:
        raise BadMessage("trailing bytes after the message") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise BadMessage(f"not valid MessagePack ({type(exc).__name__})") from None


def _int(v, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadMessage(f"bad {what}")
    return v


def _str(v, limit: int, what: str) -> str:
    if type(v) is not str or not 0 < len(v) <= limit:
        raise BadMessage(f"bad {what}")
    return v


def _opt_inc(v) -> int | None:
    return None if v is None else _int(v, 0, MAX_INCARNATION, "suspicion")


def _header(msg, kinds: tuple[int, ...]) -> int:
    if not isinstance(msg, list) or len(msg) < 2:
        raise BadMessage("not a message array")
    if msg[0] != VERSION or type(msg[0]) is not int:
        raise BadMessage(f"unknown protocol version {msg[0]!r:.20}")
    kind = msg[1]
    if type(kind) is not int or kind not in kinds:
        raise BadMessage(f"unknown message kind {kind!r:.20}")
    return kind


_ARITY = {PING: 8, ACK: 6, NACK: 6, PING_REQ: 10, GOSSIP: 5, PUSH_PULL: 6}


def decode_update(v) -> Update:
    if not isinstance(v, list) or len(v) != 8:
        raise BadMessage("update is not an array of 8")
    state = _int(v[0], ALIVE, LEFT, "update state")
    name = _str(v[1], MAX_NAME, "update name")
    inc = _int(v[2], 0, MAX_INCARNATION, "incarnation")
    epoch = _int(v[3], 0, MAX_EPOCH, "epoch")
    host = _str(v[4], MAX_HOST, "host")
    port = _int(v[5], 0, 65535, "port")
    meta = v[6]
    if meta is not None:
        if not isinstance(meta, dict):
            raise BadMessage("meta is not a map")
        if len(_pack(meta)) > MAX_META:
            raise BadMessage("meta too large")
    origin = v[7]
    if origin is not None:
        _str(origin, MAX_NAME, "origin")
    return Update(state, name, inc, epoch, (host, port), meta, origin)


def _updates(v) -> list[Update]:
    if not isinstance(v, list):
        raise BadMessage("updates is not an array")
    return [decode_update(u) for u in v]


def decode_packet(data: bytes) -> Packet:
    msg = _unpack(data)
    kind = _header(msg, (PING, ACK, NACK, PING_REQ, GOSSIP))
    if len(msg) != _ARITY[kind]:
        raise BadMessage(f"{KIND_NAMES[kind]} has {len(msg)} items, not {_ARITY[kind]}")
    sender = _str(msg[2], MAX_NAME, "sender")
    epoch = _int(msg[3], 0, MAX_EPOCH, "epoch")
    if kind == GOSSIP:
        return Packet(kind, sender, epoch, 0, None, None, None, _updates(msg[4]))
    seq = _int(msg[4], 0, MAX_SEQ, "seq")
    if kind == PING:
        target = _str(msg[5], MAX_NAME, "target")
        return Packet(kind, sender, epoch, seq, target, None, _opt_inc(msg[6]), _updates(msg[7]))
    if kind == PING_REQ:
        target = _str(msg[5], MAX_NAME, "target")
        addr = (_str(msg[6], MAX_HOST, "host"), _int(msg[7], 0, 65535, "port"))
        return Packet(kind, sender, epoch, seq, target, addr, _opt_inc(msg[8]), _updates(msg[9]))
    return Packet(kind, sender, epoch, seq, None, None, None, _updates(msg[5]))


def decode_push_pull(data: bytes) -> PushPullMsg:
    msg = _unpack(data)
    _header(msg, (PUSH_PULL,))
    if len(msg) != _ARITY[PUSH_PULL]:
        raise BadMessage(f"push-pull has {len(msg)} items, not {_ARITY[PUSH_PULL]}")
    sender = _str(msg[2], MAX_NAME, "sender")
    epoch = _int(msg[3], 0, MAX_EPOCH, "epoch")
    if type(msg[4]) is not bool:
        raise BadMessage("bad join flag")
    return PushPullMsg(sender, epoch, msg[4], _updates(msg[5]))
