import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import (
    ClientProtocol,
    FrameDecoder,
    ProtocolError,
    Encoder,
    encode_frame,
    encode_request,
    decode_request,
    parse_response,
)
from protocol.constants import Cmd, Err

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=50) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.binary(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(st.lists(values, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(objs, data):
    stream = b"".join(encode_frame(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    bodies = []
    prev = 0
    for cut in cuts + [len(stream)]:
        decoder.feed(stream[prev:cut])
        prev = cut
        while (body := decoder.next_frame()) is not None:
            bodies.append(body)
    assert [msgpack.unpackb(b, raw=False, strict_map_key=False) for b in bodies] == objs
    assert decoder.pending == 0


def test_partial_frame_is_pending_not_returned():
    decoder = FrameDecoder()
    frame = encode_frame([1, 2, []])
    decoder.feed(frame[:-1])
    assert decoder.next_frame() is None
    assert decoder.pending == len(frame) - 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == frame[4:]


def test_oversize_frame_is_badlen_before_the_body_arrives():
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed((1025).to_bytes(4, "big"))
    with pytest.raises(ProtocolError) as exc:
        decoder.next_frame()
    assert exc.value.code == Err.BADLEN


def test_many_small_frames_compact_the_buffer():
    decoder = FrameDecoder()
    frame = encode_frame([1, 9, []])
    for _ in range(20000):
        decoder.feed(frame)
        assert decoder.next_frame() == frame[4:]
    assert decoder.pending == 0


def test_decode_request_accepts_str_and_bin_as_bytes():
    body = msgpack.packb([7, Cmd.SETVAL, ["sid", b"name", b"\xff\x00"]], use_bin_type=True)
    assert decode_request(body) == (7, Cmd.SETVAL, [b"sid", b"name", b"\xff\x00"])


def test_decode_request_invalid_utf8_in_str_type_is_kept_as_bytes():
    # 0xa2 = fixstr of length 2, followed by bytes that are not UTF-8.
    body = b"\x93\x01\x03\x91\xa2\xff\xfe"
    assert decode_request(body)[2] == [b"\xff\xfe"]


@pytest.mark.parametrize(
    "obj, rid",
    [
        ({"a": 1}, None),
        ([1, 2], 1),
        ([1, 2, [], 4], 1),
        (["x", 2, []], None),
        ([-1, 2, []], None),
        ([1, "cmd", []], 1),
        ([1, 2, "args"], 1),
        ([1, 2.5, []], 1),
    ],
)
def test_decode_request_rejects_wrong_shapes(obj, rid):
    with pytest.raises(ProtocolError) as exc:
        decode_request(msgpack.packb(obj))
    assert exc.value.code == Err.BADHDR
    assert exc.value.request_id == rid


@given(st.binary(max_size=200))
def test_decode_request_never_raises_anything_but_protocol_error(body):
    try:
        decode_request(body)
    except ProtocolError as exc:
        assert exc.code == Err.BADHDR


def test_client_protocol_numbers_requests_and_parses_answers():
    proto = ClientProtocol()
    rid1, data1 = proto.request(Cmd.PING, [])
    rid2, _ = proto.request(Cmd.COUNT, [])
    assert rid2 == rid1 + 1
    assert decode_request(data1[4:])[1] == Cmd.PING
    answers = Encoder().ok(rid1, b"PONG") + Encoder().error(rid2, Err.NOSESSION, "no such session")
    first, second = proto.feed(answers[:5]) + proto.feed(answers[5:])
    assert first.ok and first.value == b"PONG" and first.id == rid1
    assert not second.ok and second.code == Err.NOSESSION and second.message == "no such session"


def test_parse_response_rejects_garbage():
    with pytest.raises(ProtocolError):
        parse_response(msgpack.packb([1, 5, None]))
    with pytest.raises(ProtocolError):
        parse_response(msgpack.packb([1, 0, "not a list"]))
    with pytest.raises(ProtocolError):
        parse_response(b"\xc1")


def test_request_encoding_is_length_prefixed_msgpack():
    data = encode_request(3, Cmd.GETVAL, [b"s", b"n"])
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert msgpack.unpackb(data[4:]) == [3, 4, [b"s", b"n"]]
