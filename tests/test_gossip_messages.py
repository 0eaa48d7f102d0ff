"""Gossip wire messages: round trips; bad input that must be dropped, counted
and noted without an exception or a change of state; and well-formed hostile
input that must be handled without an exception, whatever it says
(cluster/messages.py and the receiving side of cluster/membership.py)."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cluster import messages as m
from cluster.membership import STEP_OVER_MAX, GossipConfig, Membership, PushPull, SendPacket

ADDRS = {"a": ("10.0.0.1", 7946), "b": ("10.0.0.2", 7946), "c": ("10.0.0.3", 7946)}


def trio_of_members(now: float = 0.0) -> dict[str, Membership]:
    ms = {n: Membership(n, a, {"port": 8086}, GossipConfig(), now, random.Random(i)) for i, (n, a) in enumerate(ADDRS.items())}
    view = [x.self_update() for x in ms.values()]
    for x in ms.values():
        x.install(view, now)
    return ms


def snapshot(mem: Membership):
    return mem.members(), mem.incarnation, mem.health


def alive(name: str, inc: int = 0, epoch: int = 1, meta=None) -> m.Update:
    return m.Update(m.ALIVE, name, inc, epoch, ADDRS.get(name, ("10.9.9.9", 1)), meta or {}, None)


def gossip(sender: str, epoch: int, *updates: m.Update) -> bytes:
    return m.encode_with_updates(m.gossip_fields(sender, epoch), [m.encode_update(u) for u in updates])


# --------------------------------------------------------------------------
# Round trips


def test_every_kind_round_trips():
    u = alive("a", 3, 99, {"port": 1})
    s = m.Update(m.SUSPECT, "b", 4, 5, ADDRS["b"], None, "a")
    ups = [m.encode_update(u), m.encode_update(s)]
    p = m.decode_packet(m.encode_with_updates(m.ping_fields("a", 7, 42, "b", 4), ups))
    assert (p.kind, p.sender, p.epoch, p.seq, p.target, p.suspicion) == (m.PING, "a", 7, 42, "b", 4)
    assert p.updates == [u, s]
    p = m.decode_packet(m.encode_with_updates(m.ack_fields(m.NACK, "c", 1, 9), []))
    assert (p.kind, p.seq, p.updates) == (m.NACK, 9, [])
    p = m.decode_packet(m.encode_with_updates(m.ping_req_fields("a", 1, 2, "c", ADDRS["c"], None), ups[:1]))
    assert (p.kind, p.target, p.target_addr, p.suspicion) == (m.PING_REQ, "c", ADDRS["c"], None)
    pp = m.decode_push_pull(m.encode_push_pull("a", 1, True, ups))
    assert (pp.sender, pp.join, pp.entries) == ("a", True, [u, s])


def test_packets_are_packed_up_to_max_packet():
    ups = [m.encode_update(alive(f"member-{i:03d}", meta={"port": i})) for i in range(100)]
    got = []

    def take(space):
        out, used = [], 0
        for u in ups:
            if used + len(u) <= space:
                out.append(u)
                used += len(u)
        got.extend(out)
        return out

    data = m.encode_packet(m.gossip_fields("a", 1), take, 1400)
    assert len(data) <= 1400 and 20 < len(got) < 100
    assert len(m.decode_packet(data).updates) == len(got)


# --------------------------------------------------------------------------
# Strict decoding


VALID = [
    m.encode_with_updates(m.ping_fields("a", 7, 42, "b", None), [m.encode_update(alive("a"))]),
    m.encode_with_updates(m.ack_fields(m.ACK, "b", 7, 42), []),
    m.encode_with_updates(m.ping_req_fields("a", 1, 2, "c", ADDRS["c"], 3), []),
    gossip("a", 1, alive("c")),
]


@pytest.mark.parametrize("data", VALID)
def test_every_truncation_is_rejected(data):
    m.decode_packet(data)
    for i in range(len(data)):
        with pytest.raises(m.BadMessage):
            m.decode_packet(data[:i])
    with pytest.raises(m.BadMessage):
        m.decode_packet(data + b"\x00")  # trailing bytes


WRONG = [None, True, -1, -(2**63), 1.5, "x" * 300, b"bytes", [], {}, "", msgpack.ExtType(1, b"x")]


@pytest.mark.parametrize("data", VALID)
def test_any_field_of_the_wrong_type_is_rejected(data):
    msg = msgpack.unpackb(data)
    for i in range(len(msg)):
        for bad in WRONG:
            if i == 6 and msg[1] == m.PING and bad is None:
                continue  # a ping's suspicion may be nil
            if i == 8 and msg[1] == m.PING_REQ and bad is None:
                continue
            if i == len(msg) - 1 and bad == []:
                continue  # an empty updates list is fine
            forged = list(msg)
            forged[i] = bad
            with pytest.raises(m.BadMessage):
                m.decode_packet(msgpack.packb(forged, use_bin_type=True))


def test_bad_updates_are_rejected():
    good = [m.ALIVE, "a", 1, 2, "10.0.0.1", 7946, {}, None]
    for i, bad in [(0, 4), (0, -1), (1, ""), (2, -1), (3, -5), (2, 2**64 - 1), (4, 5), (5, 70000), (6, []), (6, {1: 2}), (7, 5)]:
        u = list(good)
        u[i] = bad
        with pytest.raises(m.BadMessage):
            m.decode_packet(msgpack.packb([1, m.GOSSIP, "a", 1, [u]]))
    with pytest.raises(m.BadMessage):  # meta over MAX_META
        m.decode_packet(msgpack.packb([1, m.GOSSIP, "a", 1, [good[:6] + [{"k": "v" * 600}, None]]]))
    with pytest.raises(m.BadMessage):  # wrong arity
        m.decode_packet(msgpack.packb([1, m.GOSSIP, "a", 1, [good[:7]]]))


def test_unknown_versions_and_kinds_are_rejected():
    for msg in ([2, m.GOSSIP, "a", 1, []], [0, m.GOSSIP, "a", 1, []], ["1", m.GOSSIP, "a", 1, []], [1, 99, "a", 1, []]):
        with pytest.raises(m.BadMessage):
            m.decode_packet(msgpack.packb(msg))
    with pytest.raises(m.BadMessage):  # a push-pull is not a packet
        m.decode_packet(m.encode_push_pull("a", 1, False, []))
    with pytest.raises(m.BadMessage):
        m.decode_push_pull(VALID[0])


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_bad_message(data):
    for decode in (m.decode_packet, m.decode_push_pull):
        try:
            decode(data)
        except m.BadMessage:
            pass


# --------------------------------------------------------------------------
# Well-formed but hostile messages: valid structure, edge and random values
# (names of members, of strangers and of the receiver itself; the members'
# real epochs or others; incarnations up to the largest; any address;
# metas up to MAX_META), one in ten broken in one field. They reach the
# membership's handling, not only the decoder's rejections.

EPOCHS = {n: x.epoch for n, x in trio_of_members().items()}  # seeded: the same in every trio
STRANGER = ("10.0.0.99", 7946)


def _ints(hi: int):
    """0 to ``hi``, its edges often."""
    return st.one_of(st.sampled_from([0, 1, 2, hi - 1, hi]), st.integers(0, hi))


NAMES = st.one_of(st.sampled_from(["a", "b", "c", "x", "n" * m.MAX_NAME]), st.text(min_size=1, max_size=m.MAX_NAME))
EPOCH = st.one_of(st.sampled_from(sorted(EPOCHS.values())), _ints(m.MAX_EPOCH))
INCARNATION = st.one_of(_ints(m.MAX_INCARNATION), st.sampled_from([STEP_OVER_MAX, STEP_OVER_MAX + 1]))
ADDR = st.one_of(
    st.sampled_from([*ADDRS.values(), STRANGER, ("10.0.0.1", 1), ("h", 0)]),
    st.tuples(st.text(min_size=1, max_size=40), st.integers(0, 65535)),
)
_meta_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=30), st.binary(max_size=30)
)
META = st.one_of(
    st.none(),
    st.just({"port": 8086}),
    st.dictionaries(st.text(max_size=10), _meta_value, max_size=5),
    st.builds(lambda n: {"pad": "p" * n}, st.sampled_from([m.MAX_META - 9, m.MAX_META - 8])),  # 511, 512 bytes: at the limit
)
UPDATES = st.lists(
    st.builds(m.Update, st.integers(m.ALIVE, m.LEFT), NAMES, INCARNATION, EPOCH, ADDR, META, st.one_of(st.none(), NAMES)),
    max_size=4,
)
SUSPICION = st.one_of(st.none(), INCARNATION)


def _fields(kind: int, sender: str, epoch: int, draw) -> list:
    if kind == m.GOSSIP:
        return m.gossip_fields(sender, epoch)
    seq = draw(_ints(m.MAX_SEQ))
    if kind == m.PING:
        return m.ping_fields(sender, epoch, seq, draw(NAMES), draw(SUSPICION))
    if kind == m.PING_REQ:
        return m.ping_req_fields(sender, epoch, seq, draw(NAMES), draw(ADDR), draw(SUSPICION))
    return m.ack_fields(kind, sender, epoch, seq)


@st.composite
def hostile(draw, push_pull: bool = False, drawn: bool = False):
    """A well-formed message (``bytes``) with hostile values, or one broken in one field.
    With ``drawn``: ``(bytes, the updates drawn, whether a field was broken)``."""
    sender, epoch, updates = draw(NAMES), draw(EPOCH), draw(UPDATES)
    encoded = [m.encode_update(u) for u in updates]
    if push_pull:
        data = m.encode_push_pull(sender, epoch, draw(st.booleans()), encoded)
    else:
        kind = draw(st.sampled_from([m.PING, m.ACK, m.NACK, m.PING_REQ, m.GOSSIP]))
        data = m.encode_with_updates(_fields(kind, sender, epoch, draw), encoded)
    if draw(st.integers(0, 9)) == 0:  # one in ten: one field (or an update's) of the wrong type
        msg = msgpack.unpackb(data)
        where = msg
        if msg[-1] and draw(st.booleans()):
            where = msg[-1][draw(st.integers(0, len(msg[-1]) - 1))]
        where[draw(st.integers(0, len(where) - 1))] = draw(st.sampled_from(WRONG))
        data = msgpack.packb(msg, use_bin_type=True)
        return (data, updates, True) if drawn else data
    return (data, updates, False) if drawn else data


def _decoded(decode, data: bytes):
    """The decoded message, or None when ``decode`` rejects it."""
    try:
        return decode(data)
    except m.BadMessage:
        return None


def _decodes(decode, data: bytes) -> bool:
    return _decoded(decode, data) is not None


@settings(max_examples=300)
@given(hostile(drawn=True), hostile(push_pull=True, drawn=True))
def test_hostile_messages_decode_exactly_or_raise_bad_message(packet, push_pull):
    for decode, (data, updates, broken), other in (
        (m.decode_packet, packet, m.decode_push_pull),
        (m.decode_push_pull, push_pull, m.decode_packet),
    ):
        try:
            msg = decode(data)
        except m.BadMessage:
            assert broken  # every well-formed message decodes, whatever its values
            event("broken")
            continue
        event("well-formed" if not broken else "broken, yet decodes")
        ups = msg.entries if decode is m.decode_push_pull else msg.updates
        if not broken:  # what decodes is what was encoded: exactly the updates drawn
            # (compared encoded: a NaN in a meta is never equal to itself)
            assert [m.encode_update(u) for u in ups] == [m.encode_update(u) for u in updates]
        # and encoding the decoded updates gives the same bytes
        assert data.endswith(b"".join(m.encode_update(u) for u in ups))
        assert not _decodes(other, data)  # a packet is never a push-pull, nor the reverse


# --------------------------------------------------------------------------
# The receiving side: counted, noted, state unchanged, nothing raised


def bad_packets():
    yield b""
    yield b"\xc1"
    yield msgpack.packb([2, m.GOSSIP, "b", 1, []])  # unknown version
    yield msgpack.packb({"not": "an array"})
    yield VALID[0][:-3]
    yield msgpack.packb([1, m.GOSSIP, "b", 1, [[m.DEAD, "a", 2**64 - 1, 1, "h", 1, None, None]]])
    yield msgpack.packb([1, m.GOSSIP, "b", 1, [[m.DEAD, "c", 5, 1, "h", 1, None, None], "junk"]])


def test_bad_packets_are_counted_and_change_nothing():
    ms = trio_of_members()
    a = ms["a"]
    before = snapshot(a)
    for i, data in enumerate(bad_packets()):
        a.receive_packet(data, ADDRS["b"], 1.0)
        assert a.counters["bad_packets"] == i + 1
    assert a.counters["bad_version"] == 1
    assert snapshot(a) == before and not a.take_events()
    notes = a.take_notes()
    assert len(notes) == i + 1 and all("dropped a bad packet" in n for n in notes)
    assert a.take_outgoing() == []


def test_oversize_packets_are_dropped_before_decoding():
    a = trio_of_members()["a"]
    a.receive_packet(b"\x90" * 1401, ADDRS["b"], 1.0)
    assert a.counters["oversize"] == 1 and a.counters["bad_packets"] == 0
    assert a.counters["bytes_in"] == 1401


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_packets_and_streams_never_raise_nor_change_state(data):
    ms = trio_of_members()
    a = ms["a"]
    before = snapshot(a)
    a.receive_packet(data, ADDRS["b"], 1.0)
    assert a.stream_request(data, ADDRS["c"], 1.0) == b""
    a.stream_reply(ADDRS["c"], data, 1.0, join=False)
    assert a.counters["internal_errors"] == 0
    assert a.counters["bad_packets"] + a.counters["oversize"] == 3
    assert snapshot(a) == before and not a.take_events()


EVENT_KINDS = {"join", "alive", "suspect", "dead", "left", "update", "conflict"}


def check_member(a: Membership, before_inc: int) -> None:
    """What hostile input must never do to a joined member."""
    me = a.get("a")
    assert me.state == "alive" and a.conflict is None  # joined: a name clash is reported, not taken on
    # refutations stay encodable, with room for more: one message raises our
    # incarnation by one per update it carries (accusations at our own), or
    # steps over an earlier life of ours, but never past STEP_OVER_MAX
    assert before_inc <= a.incarnation <= max(before_inc, STEP_OVER_MAX + 1) + 5, a.incarnation
    states = {x.name: x.state for x in a.members()}
    assert set(a.live_names()) == {n for n, st_ in states.items() if st_ in ("alive", "suspect")}
    assert a._live == len(a.live_names())  # the count suspicion timeouts are scaled by
    for kind, _member in a.take_events():
        assert kind in EVENT_KINDS
    for out in a.take_outgoing():  # whatever it sends, every member can decode
        if isinstance(out, SendPacket):
            assert len(out.data) <= a.config.max_packet
            m.decode_packet(out.data)
        else:
            assert isinstance(out, PushPull)
            m.decode_push_pull(out.data)


@st.composite
def hostile_traffic(draw):
    """A run of packets and push-pulls for member a, each from a source that
    matches its sender or not, a little later each; a few random bytes too."""
    items = []
    for _ in range(draw(st.integers(1, 8))):
        how = draw(st.sampled_from(["packet", "packet", "packet", "request", "reply", "bytes"]))
        push_pull = how in ("request", "reply")
        data = draw(st.binary(max_size=200) if how == "bytes" else hostile(push_pull=push_pull))
        msg = _decoded(m.decode_push_pull if push_pull else m.decode_packet, data)
        real = STRANGER if msg is None else ADDRS.get(msg.sender, STRANGER)  # where its sender is
        src = draw(st.sampled_from([real, real, STRANGER, ADDRS["a"]]))
        items.append((how, data, src, draw(st.floats(0, 1.0)), draw(st.booleans())))
    return items


@settings(max_examples=300, deadline=None)
@given(hostile_traffic())
def test_hostile_messages_are_handled_or_counted_and_never_raise(traffic):
    a = trio_of_members()["a"]
    now = 0.0
    expected = dict.fromkeys(("packets_in", "bad_packets", "oversize", "push_pulls_in"), 0)
    for how, data, src, dt, join in traffic:
        now += dt
        before_inc = a.incarnation
        decode = m.decode_packet if how in ("packet", "bytes") else m.decode_push_pull
        limit = a.config.max_packet if decode is m.decode_packet else a.config.max_stream
        good = len(data) <= limit and _decodes(decode, data)
        event(f"{how}: " + ("well-formed" if good else "too large" if len(data) > limit else "broken"))
        if len(data) > limit:
            expected["oversize"] += 1
        elif not good:
            expected["bad_packets"] += 1
        if how in ("packet", "bytes"):
            expected["packets_in"] += 1
            a.receive_packet(data, src, now)
        elif how == "request":
            reply = a.stream_request(data, src, now)
            if good:
                expected["push_pulls_in"] += 1
                assert m.decode_push_pull(reply).sender == "a"
            else:
                assert reply == b""
        else:
            a.stream_reply(src, data, now, join=join)
        a.tick(now)  # its timers (probes, suspicions) run on whatever state the message left
        assert a.counters["internal_errors"] == 0, a.take_notes()
        check_member(a, before_inc)
    assert {k: a.counters[k] for k in expected} == expected, a.take_notes()


def test_a_refutation_never_goes_past_the_largest_incarnation():
    # found by the fuzz test above: anybody's ping suspecting us at the largest
    # incarnation made us refute to 2**63, so every member dropped every packet
    # carrying our alive as "bad incarnation". Above STEP_OVER_MAX it is forged,
    # not refuted; the ack still carries our alive, at our incarnation
    a = trio_of_members()["a"]
    a.receive_packet(m.encode_with_updates(m.ping_fields("x", 5, 1, "a", m.MAX_INCARNATION), []), STRANGER, 1.0)
    assert a.incarnation == 0 and a.counters["forged_incarnations"] == 1 and a.counters["refutations"] == 0
    acks = []
    for out in a.take_outgoing():
        if isinstance(out, SendPacket):
            acks.append(m.decode_packet(out.data))
        else:
            m.decode_push_pull(out.data)
    (ack,) = acks
    assert ack.kind == m.ACK and [(u.name, u.state, u.incarnation) for u in ack.updates] == [("a", m.ALIVE, 0)]


def about(state: int, name: str, inc: int, epoch: int, origin: str | None = "b") -> m.Update:
    return m.Update(state, name, inc, epoch, ADDRS[name], {} if state == m.ALIVE else None, None if state == m.ALIVE else origin)


def own_alive(a: Membership) -> list[int]:
    """The incarnations of a's alive updates in everything it sends."""
    incs = []
    for out in a.take_outgoing():
        if isinstance(out, SendPacket):
            incs += [u.incarnation for u in m.decode_packet(out.data).updates if u.name == "a" and u.state == m.ALIVE]
    return incs


def test_alive_news_of_us_in_our_own_epoch_above_our_incarnation_is_forged_and_ignored():
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    n = 0
    for inc in (1, 2, 1000, STEP_OVER_MAX, m.MAX_INCARNATION):  # a ratchet, step by step, and jumps
        a.receive_packet(gossip("b", b.epoch, about(m.ALIVE, "a", inc, a.epoch)), ADDRS["b"], 1.0)
        n += 1
        assert a.incarnation == 0 and a.counters["forged_incarnations"] == n
    assert a.counters["refutations"] == 0 and a.health == 0 and a.get("a").state == "alive"
    assert all("we never issued it" in note for note in a.take_notes())
    a.tick(a.next_wakeup())
    assert set(own_alive(a)) <= {0}


def test_an_accusation_of_us_in_our_own_epoch_above_our_incarnation_is_stepped_over_up_to_step_over_max():
    # anybody may send alive news, so the others may hold a forged alive of ours above
    # our incarnation; their accusations then repeat it, and we must refute above it
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    for state in (m.SUSPECT, m.DEAD, m.LEFT):
        for step in (1, 2, 1000):
            inc = a.incarnation + step
            a.receive_packet(gossip("b", b.epoch, about(state, "a", inc, a.epoch)), ADDRS["b"], 1.0)
            assert a.incarnation == inc + 1 and a.get("a").state == "alive"
    a.tick(a.next_wakeup())
    assert max(own_alive(a)) == a.incarnation  # gossiped
    refuted = a.counters["refutations"]
    assert refuted == 9 and a.counters["forged_incarnations"] == 0
    # the same through a push-pull (dead entries about us are not merged as suspicions)
    inc = a.incarnation + 7
    a.stream_request(m.encode_push_pull("b", b.epoch, False, [m.encode_update(about(m.DEAD, "a", inc, a.epoch))]), ADDRS["b"], 1.0)
    assert a.incarnation == inc + 1 and a.counters["refutations"] == refuted + 1
    # above STEP_OVER_MAX: forged, ignored and counted
    before = a.incarnation
    for state in (m.SUSPECT, m.DEAD, m.LEFT):
        for inc in (STEP_OVER_MAX + 1, m.MAX_INCARNATION):
            a.receive_packet(gossip("b", b.epoch, about(state, "a", inc, a.epoch)), ADDRS["b"], 1.0)
    assert a.incarnation == before and a.counters["forged_incarnations"] == 6
    assert a.counters["refutations"] == refuted + 1
    # at STEP_OVER_MAX: stepped over, still 2**62 incarnations of room for refuting
    a.receive_packet(gossip("b", b.epoch, about(m.SUSPECT, "a", STEP_OVER_MAX, a.epoch)), ADDRS["b"], 1.0)
    assert a.incarnation == STEP_OVER_MAX + 1 and m.MAX_INCARNATION - a.incarnation >= 2**62 - 1
    a.tick(a.next_wakeup())
    for out in a.take_outgoing():  # whatever it sends, every member can decode
        m.decode_packet(out.data) if isinstance(out, SendPacket) else m.decode_push_pull(out.data)


def test_an_accusation_at_our_incarnation_is_still_refuted():
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    # suspect, then dead, at the incarnation we hold: one above each
    a.receive_packet(gossip("b", b.epoch, about(m.SUSPECT, "a", 0, a.epoch)), ADDRS["b"], 1.0)
    assert a.incarnation == 1 and a.counters["refutations"] == 1
    a.receive_packet(gossip("b", b.epoch, about(m.DEAD, "a", 1, a.epoch)), ADDRS["b"], 1.1)
    assert a.incarnation == 2 and a.counters["refutations"] == 2
    # an old accusation, one we already refuted: stale
    a.receive_packet(gossip("b", b.epoch, about(m.SUSPECT, "a", 1, a.epoch)), ADDRS["b"], 1.2)
    assert a.incarnation == 2 and a.counters["stale_messages"] == 1
    # a ping suspecting us at ours: refuted, its ack carries the refutation; below ours: our alive as it is
    a.take_outgoing()
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 7, "a", 2), []), ADDRS["b"], 1.3)
    assert a.incarnation == 3 and own_alive(a)[0] == 3
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 8, "a", 1), []), ADDRS["b"], 1.4)
    assert a.incarnation == 3 and set(own_alive(a)) == {3}
    assert a.counters["forged_incarnations"] == 0 and a.counters["refutations"] == 3
    # and b, holding a suspect at 0, takes the refutation
    b.receive_packet(gossip("c", ms["c"].epoch, about(m.SUSPECT, "a", 0, a.epoch, "c")), ADDRS["c"], 1.0)
    assert b.get("a").state == "suspect"
    b.receive_packet(gossip("a", a.epoch, a.self_update()), ADDRS["a"], 1.5)
    assert b.get("a").state == "alive" and b.get("a").incarnation == 3


def test_a_ping_suspecting_us_above_our_incarnation_is_stepped_over_up_to_step_over_max():
    # a ping's suspicion carries no epoch: an earlier life of ours the pinger still
    # suspects (a restart), or a forged alive of ours it adopted; refuted above it
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 7, "a", 5), []), ADDRS["b"], 1.0)
    assert a.incarnation == 6 and a.counters["refutations"] == 1 and a.counters["forged_incarnations"] == 0
    out = a.take_outgoing()
    assert not [o for o in out if isinstance(o, PushPull)]  # b is known: no exchange needed
    (ack,) = [m.decode_packet(o.data) for o in out if isinstance(o, SendPacket) and m.decode_packet(o.data).kind == m.ACK]
    assert ("a", m.ALIVE, 6) in [(u.name, u.state, u.incarnation) for u in ack.updates]
    # above STEP_OVER_MAX: forged, ignored and counted; the ack still carries our alive
    for inc in (STEP_OVER_MAX + 1, m.MAX_INCARNATION):
        a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 8, "a", inc), []), ADDRS["b"], 1.1)
    assert a.incarnation == 6 and a.counters["forged_incarnations"] == 2 and a.counters["refutations"] == 1
    assert set(own_alive(a)) == {6}
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 9, "a", STEP_OVER_MAX), []), ADDRS["b"], 1.2)
    assert a.incarnation == STEP_OVER_MAX + 1


def test_a_member_that_has_not_joined_refutes_a_ping_suspecting_an_earlier_life():
    # restarted, its seeds silent: the members that still suspect its earlier life at 3
    # ping it; it refutes at once, joined or not, and its ack carries the refutation
    a = Membership("a", ADDRS["a"], {}, GossipConfig(), 0.0, random.Random(9))
    a.join([("10.200.0.1", 7946)], 0.0)
    a.take_outgoing()
    assert not a.joined
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", 77, 7, "a", 3), []), ADDRS["b"], 1.0)
    assert a.incarnation == 4 and a.counters["refutations"] == 1
    assert 4 in own_alive(a)


def test_an_earlier_life_is_stepped_over_only_up_to_step_over_max():
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    for inc in (m.MAX_INCARNATION, STEP_OVER_MAX + 1):
        a.receive_packet(gossip("b", b.epoch, about(m.DEAD, "a", inc, 12345)), ADDRS["b"], 1.0)
        assert a.incarnation == 0
    assert a.counters["forged_incarnations"] == 2
    a.receive_packet(gossip("b", b.epoch, about(m.DEAD, "a", 41, 12345)), ADDRS["b"], 1.0)
    assert a.incarnation == 42
    a.receive_packet(gossip("b", b.epoch, about(m.ALIVE, "a", STEP_OVER_MAX, 12345)), ADDRS["b"], 1.0)
    assert a.incarnation == STEP_OVER_MAX + 1 and a.counters["refutations"] == 2
    assert m.MAX_INCARNATION - a.incarnation >= 2**62 - 1  # room for refuting, always


def test_no_path_raises_an_incarnation_past_the_largest():
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    a._me.incarnation = m.MAX_INCARNATION  # out of reach in practice: 2**62 refutations past STEP_OVER_MAX
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", b.epoch, 7, "a", m.MAX_INCARNATION), []), ADDRS["b"], 1.0)
    a.receive_packet(gossip("b", b.epoch, about(m.SUSPECT, "a", m.MAX_INCARNATION, a.epoch)), ADDRS["b"], 1.0)
    meta = a.get("a").meta
    a.update_meta({"port": 1}, 1.0)
    assert a.incarnation == m.MAX_INCARNATION and a.counters["refutations"] == 0
    assert a.get("a").meta == meta and a.self_update().meta == meta  # refused: the meta stays too
    assert any("cannot refute" in n for n in a.take_notes())
    a.leave(1.1)
    assert a.get("a").state == "left" and a.incarnation == m.MAX_INCARNATION
    a.tick(a.next_wakeup())
    for out in a.take_outgoing():  # whatever it sends, every member can decode
        m.decode_packet(out.data) if isinstance(out, SendPacket) else m.decode_push_pull(out.data)
    # the others take the leave at the same incarnation: left beats alive
    b.receive_packet(gossip("c", ms["c"].epoch, about(m.ALIVE, "a", m.MAX_INCARNATION, a.epoch)), ADDRS["c"], 1.2)
    assert b.get("a").incarnation == m.MAX_INCARNATION
    b.receive_packet(gossip("a", a.epoch, a.self_update()), ADDRS["a"], 1.3)
    assert b.get("a").state == "left"


def test_bad_push_pull_is_refused_and_counted():
    a = trio_of_members()["a"]
    before = snapshot(a)
    assert a.stream_request(b"\x00garbage", ADDRS["c"], 1.0) == b""
    a.stream_reply(ADDRS["c"], msgpack.packb([1, m.PUSH_PULL, "c", 1, "yes", []]), 1.0, join=False)
    a.stream_reply(ADDRS["c"], b"x" * (GossipConfig().max_stream + 1), 1.0, join=False)
    assert a.counters["bad_packets"] == 2 and a.counters["oversize"] == 1
    assert snapshot(a) == before


def test_strangers_may_ping_and_introduce_themselves_but_not_accuse():
    ms = trio_of_members()
    a = ms["a"]
    stranger = ("10.0.0.99", 7946)
    # a suspicion of b from somebody we do not know: ignored
    accuse = m.Update(m.SUSPECT, "b", 0, ms["b"].epoch, ADDRS["b"], None, "x")
    a.receive_packet(gossip("x", 5, accuse), stranger, 1.0)
    assert a.get("b").state == "alive" and a.counters["unknown_sender"] == 1
    # a ping-req from a stranger: dropped, no ping sent on its behalf
    a.receive_packet(m.encode_with_updates(m.ping_req_fields("x", 5, 1, "b", ADDRS["b"], None), []), stranger, 1.0)
    assert a.take_outgoing() == [] and a.counters["unknown_sender"] == 2
    # an ack from a stranger: dropped
    a.receive_packet(m.encode_with_updates(m.ack_fields(m.ACK, "x", 5, 1), []), stranger, 1.0)
    assert a.counters["unknown_sender"] == 3
    # a ping from a stranger introducing itself: answered, and it is known from now on
    hello = m.Update(m.ALIVE, "x", 0, 5, stranger, {}, None)
    a.receive_packet(m.encode_with_updates(m.ping_fields("x", 5, 77, "a", None), [m.encode_update(hello)]), stranger, 1.0)
    out = a.take_outgoing()
    acks = [o for o in out if hasattr(o, "data") and o.dest == stranger and not hasattr(o, "join")]
    assert acks and m.decode_packet(acks[0].data).kind == m.ACK and m.decode_packet(acks[0].data).seq == 77
    assert a.get("x").state == "alive"
    assert [k for k, _ in a.take_events()] == ["join"]


def test_a_ping_from_a_stranger_without_introduction_starts_a_full_sync():
    a = trio_of_members()["a"]
    stranger = ("10.0.0.99", 7946)
    a.receive_packet(m.encode_with_updates(m.ping_fields("x", 5, 77, "a", None), []), stranger, 1.0)
    kinds = sorted(type(o).__name__ for o in a.take_outgoing())
    assert kinds == ["PushPull", "SendPacket"]  # the ack, and a push-pull to learn who it is
    a.receive_packet(m.encode_with_updates(m.ping_fields("x", 5, 78, "a", None), []), stranger, 1.05)
    assert [type(o).__name__ for o in a.take_outgoing()] == ["SendPacket"]  # rate-limited


def test_replayed_old_packets_are_stale():
    ms = trio_of_members()
    a, b = ms["a"], ms["b"]
    # c suspects b at incarnation 0; b refutes (incarnation 1) and a learns it
    suspect_b = gossip("c", ms["c"].epoch, m.Update(m.SUSPECT, "b", 0, b.epoch, ADDRS["b"], None, "c"))
    a.receive_packet(suspect_b, ADDRS["c"], 1.0)
    assert a.get("b").state == "suspect"
    b.receive_packet(suspect_b, ADDRS["c"], 1.0)
    assert b.incarnation == 1 and b.counters["refutations"] == 1
    refutation = gossip("b", b.epoch, b.self_update())
    a.receive_packet(refutation, ADDRS["b"], 1.1)
    assert a.get("b").state == "alive" and a.get("b").incarnation == 1
    a.take_events()
    before = snapshot(a)
    stale = a.counters["stale_messages"]
    a.receive_packet(suspect_b, ADDRS["c"], 2.0)  # the replay
    assert a.counters["stale_messages"] == stale + 1
    assert snapshot(a) == before and not a.take_events()
    # and an old ack matches no probe we are waiting for
    a.receive_packet(m.encode_with_updates(m.ack_fields(m.ACK, "b", b.epoch, 12345), []), ADDRS["b"], 2.0)
    assert a.counters["stale_messages"] == stale + 2


def test_a_ping_for_somebody_else_is_not_answered():
    a = trio_of_members()["a"]
    a.receive_packet(m.encode_with_updates(m.ping_fields("b", 1, 5, "zed", None), []), ADDRS["b"], 1.0)
    assert a.counters["wrong_target"] == 1 and a.take_outgoing() == []
