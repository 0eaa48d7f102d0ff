"""Unit tests of the membership core and its parts (cluster/membership.py,
suspicion.py, awareness.py, broadcast.py), driven by hand: no simulator."""

from __future__ import annotations

import math
import random

import pytest

from cluster import messages as m
from cluster.awareness import Awareness
from cluster.broadcast import BroadcastQueue
from cluster.membership import GossipConfig, Member, Membership, PushPull, SendPacket
from cluster.suspicion import Suspicion, suspicion_bounds

CFG = GossipConfig()


def addr(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i}", 7946)


def cluster(n: int, cfg: GossipConfig = CFG) -> list[Membership]:
    ms = [Membership(f"m{i}", addr(i), {"port": 8086 + i}, cfg, 0.0, random.Random(i)) for i in range(n)]
    view = [x.self_update() for x in ms]
    for x in ms:
        x.install(view, 0.0)
    return ms


def packets(mem: Membership) -> list[tuple[tuple[str, int], m.Packet]]:
    return [(o.dest, m.decode_packet(o.data)) for o in mem.take_outgoing() if isinstance(o, SendPacket)]


def run_alone(mem: Membership, until: float) -> None:
    """Ticks ``mem`` on time until ``until``, dropping everything it sends."""
    while mem.next_wakeup() <= until:
        mem.tick(mem.next_wakeup())
        mem.take_outgoing()


# --------------------------------------------------------------------------
# Parts


def test_suspicion_timeout_shrinks_with_confirmations_as_lifeguard():
    low, high = suspicion_bounds(4, 6, 10, 0.15)
    assert (round(low, 6), round(high, 6)) == (0.6, 3.6)
    assert suspicion_bounds(4, 6, 5, 0.15)[0] == pytest.approx(0.6)  # log10 N floored at 1
    assert suspicion_bounds(4, 6, 1000, 0.15)[0] == pytest.approx(1.8)
    s = Suspicion(3, "a", k=2, min_timeout=low, max_timeout=high, now=10.0)
    assert s.deadline == pytest.approx(13.6)
    assert not s.confirm("a")  # the accuser itself does not confirm
    assert s.confirm("b")
    assert s.deadline == pytest.approx(10 + high - (high - low) * math.log(2) / math.log(3))
    assert s.confirm("c") and s.deadline == pytest.approx(10.6)
    assert s.confirm("d") and s.deadline == pytest.approx(10.6)  # never below min
    assert Suspicion(0, "a", 0, 1.0, 6.0, 0.0).deadline == 1.0  # nobody to confirm: min at once


def test_awareness_is_clamped_and_scales_timeouts():
    a = Awareness(8)
    assert a.apply(-1) == 0 and a.scale(0.1) == 0.1
    assert a.apply(100) == 7 and a.scale(0.1) == pytest.approx(0.8)
    assert a.apply(-2) == 5


def test_broadcast_queue_replaces_orders_and_retires():
    q = BroadcastQueue()
    q.queue("a", b"a" * 10)
    q.queue("b", b"b" * 10)
    first = q.queue("a", b"A" * 10)  # replaces the older news about a
    assert len(q) == 2
    assert q.take(100, limit=2) == [b"A" * 10, b"b" * 10]  # newest first among the least sent
    q.queue("c", b"c" * 10)
    assert q.take(15, limit=2) == [b"c" * 10]  # least sent first, as much as fits
    assert q.pending("a", first)
    assert q.take(100, limit=2) == [b"c" * 10, b"A" * 10, b"b" * 10]
    assert not q.pending("a", first) and len(q) == 0  # each sent twice: retired
    q.queue("d", b"d")
    assert q.peek(100) == [b"d"] and q.peek(100) == [b"d"] and len(q) == 1  # peeking does not count


# --------------------------------------------------------------------------
# The core


def test_constructor_validates_name_and_meta():
    with pytest.raises(ValueError):
        Membership("", addr(1), {}, CFG, 0.0, random.Random(1))
    with pytest.raises(ValueError):
        Membership("a", addr(1), {"k": "v" * 600}, CFG, 0.0, random.Random(1))


def test_join_sends_a_push_pull_to_each_seed_but_itself():
    a = Membership("a", addr(1), {}, CFG, 0.0, random.Random(1))
    a.join([addr(1), addr(2), addr(3), addr(2)], 0.0)
    out = a.take_outgoing()
    assert [(o.dest, o.join) for o in out] == [(addr(2), True), (addr(3), True)]
    assert all(isinstance(o, PushPull) for o in out)
    assert not a.joined
    b = Membership("b", addr(4), {}, CFG, 0.0, random.Random(2))
    b.join([addr(4)], 0.0)
    assert b.joined and b.take_outgoing() == []


def test_a_push_pull_join_makes_both_sides_know_each_other():
    a = Membership("a", addr(1), {"port": 1}, CFG, 0.0, random.Random(1))
    a.join([], 0.0)
    b = Membership("b", addr(2), {"port": 2}, CFG, 0.0, random.Random(2))
    b.join([addr(1)], 0.0)
    (pp,) = b.take_outgoing()
    reply = a.stream_request(pp.data, addr(2), 0.01)
    b.stream_reply(addr(1), reply, 0.02, join=True)
    assert b.joined and a.live_names() == b.live_names() == ["a", "b"]
    assert a.take_events() == [("join", Member("b", addr(2), {"port": 2}, "alive", 0, 0.01))]
    assert [(k, x.name, x.meta) for k, x in b.take_events()] == [("join", "a", {"port": 1})]
    assert a.counters["push_pulls_in"] == 1 and b.counters["push_pulls"] == 1


def test_failed_joins_set_join_error_and_are_retried():
    b = Membership("b", addr(2), {}, CFG, 0.0, random.Random(2))
    b.join([addr(1)], 0.0)
    b.take_outgoing()
    b.stream_reply(addr(1), None, 0.5, join=True)
    assert not b.joined and "no seed answered (10.0.0.1:7946)" in b.join_error
    run_alone(b, 0.5 + CFG.join_retry + 0.01)
    # the retry was sent (and dropped by run_alone); b.counters say so
    assert b.counters["push_pulls"] == 2


def test_probe_without_answer_goes_indirect_then_suspects_then_declares_dead():
    a, b, c, d = cluster(4)
    target = None
    t = 0.0
    for _ in range(1000):  # until the first probe (bounded)
        if target is not None:
            break
        t = a.next_wakeup()
        a.tick(t)
        pings = [(dest, p) for dest, p in packets(a) if p.kind == m.PING]
        if pings:
            target_addr, ping = pings[0]
            target = ping.target
    assert target is not None, "no probe within 1000 wakeups"
    start = t
    a.tick(start + CFG.probe_timeout)
    reqs = [(dest, p) for dest, p in packets(a) if p.kind == m.PING_REQ]
    assert len(reqs) == 2 and all(p.target == target and dest != target_addr for dest, p in reqs)
    assert a.counters["indirect_probes"] == 2
    a.tick(start + CFG.probe_interval)
    assert a.get(target).state == "suspect"
    ev = a.take_events()
    assert ("suspect", target) in [(k, x.name) for k, x in ev]
    # the next ping to it carries the suspicion; nobody confirms in time
    low, high = suspicion_bounds(CFG.suspicion_mult, CFG.suspicion_max_mult, 4, CFG.probe_interval)
    run_alone(a, start + CFG.probe_interval + high - 0.01)
    assert a.get(target).state == "suspect"
    run_alone(a, start + CFG.probe_interval + high + 0.01)
    assert a.get(target).state == "dead"
    assert a.health > 0  # its probes were failing and nacks never came


def test_an_answered_probe_lowers_health_and_suspects_nobody():
    a, b = cluster(2)
    a.awareness.apply(3)
    for _ in range(60):
        t = a.next_wakeup()
        a.tick(t)
        for dest, p in packets(a):
            if p.kind == m.PING:
                b.receive_packet(m.encode_with_updates(m.ping_fields("m0", a.epoch, p.seq, "m1", None), []), addr(0), t)
                (ack,) = b.take_outgoing()
                a.receive_packet(ack.data, addr(1), t + 0.001)
    assert a.get("m1").state == "alive" and a.health < 3
    assert a.counters["probe_failures"] == 0


def test_a_suspected_member_refutes_and_its_ack_carries_the_refutation():
    a, b = cluster(2)
    ping = m.encode_with_updates(m.ping_fields("m0", a.epoch, 9, "m1", 0), [])
    b.receive_packet(ping, addr(0), 1.0)
    assert b.incarnation == 1 and b.counters["refutations"] == 1
    ((dest, ack),) = packets(b)
    assert dest == addr(0) and ack.kind == m.ACK and ack.seq == 9
    assert any(u.name == "m1" and u.state == m.ALIVE and u.incarnation == 1 for u in ack.updates)


def test_a_late_tick_raises_health_and_judges_no_probe():
    a, b, c = cluster(3)
    t = a.next_wakeup()
    a.tick(t)
    a.take_outgoing()
    late = t + 1.0  # our loop stalled a second: nobody answered in our eyes
    a.tick(late)
    assert a.counters["late_ticks"] == 1 and a.health == 1
    assert all(x.state == "alive" for x in a.members())
    assert a.counters["probe_failures"] == 0


def test_probe_interval_stretches_with_health():
    a, b = cluster(2)
    a.tick(a.next_wakeup())
    probes = []
    a.awareness.apply(3)
    t = a.next_wakeup()
    for _ in range(40):
        t = a.next_wakeup()
        a.tick(t)
        if any(p.kind == m.PING for _, p in packets(a)):
            probes.append(t)
        if len(probes) == 2:
            break
        a.awareness.score = 3  # hold it there
    assert probes[1] - probes[0] == pytest.approx(CFG.probe_interval * 4)


def test_leave_broadcasts_left_and_is_done_after_enough_sends():
    a, b, c = cluster(3)
    a.leave(1.0)
    assert not a.leave_done() and a.get("m0").state == "left" and a.get("m0").incarnation == 1
    sent = 0
    while not a.leave_done() and sent < 100:
        a.tick(a.next_wakeup())
        for _, p in packets(a):
            if any(u.name == "m0" and u.state == m.LEFT for u in p.updates):
                sent += 1
                b.receive_packet(m.encode_with_updates(m.gossip_fields("m0", a.epoch), [m.encode_update(u) for u in p.updates]), addr(0), 2.0)
    assert a.leave_done() and sent == CFG.retransmit_mult * 1  # 4 x ceil(log10(3 + 1))
    assert b.get("m0").state == "left" and ("left", "m0") in [(k, x.name) for k, x in b.take_events()]


def test_a_restart_learning_its_old_self_steps_over_it():
    a, b = cluster(2)
    b.receive_packet(m.encode_with_updates(m.gossip_fields("m0", a.epoch), [m.encode_update(m.Update(m.DEAD, "m1", 0, b.epoch, addr(1), None, "m0"))]), addr(0), 1.0)
    assert b.incarnation == 1
    fresh = Membership("m1", addr(1), {}, CFG, 2.0, random.Random(99))
    fresh.join([addr(0)], 2.0)
    a.take_outgoing()
    (pp,) = fresh.take_outgoing()
    reply = a.stream_request(pp.data, addr(1), 2.01)
    fresh.stream_reply(addr(0), reply, 2.02, join=True)
    assert fresh.joined and fresh.conflict is None
    assert fresh.incarnation > a.get("m1").incarnation


def test_members_and_live_names_are_sorted_and_complete():
    ms = cluster(4)
    a = ms[0]
    assert [x.name for x in a.members()] == ["m0", "m1", "m2", "m3"]
    assert a.live_names() == ["m0", "m1", "m2", "m3"]
    assert a.get("m2").meta == {"port": 8088} and a.get("nobody") is None


def test_runs_are_deterministic():
    def trace(seed):
        ms = cluster(3)
        for x in ms:
            x.rng.seed(seed)
        out = []
        for _ in range(30):
            x = min(ms, key=lambda y: y.next_wakeup())
            x.tick(x.next_wakeup())
            out += [(o.dest, o.data) for o in x.take_outgoing()]
        return out

    assert trace(1) == trace(1) and trace(1) != trace(2)


def test_update_meta_spreads_a_new_incarnation():
    a, b = cluster(2)
    a.update_meta({"port": 9999}, 1.0)
    a.tick(a.next_wakeup())
    for dest, p in packets(a):
        if p.updates:
            b.receive_packet(m.encode_with_updates(m.gossip_fields("m0", a.epoch), [m.encode_update(u) for u in p.updates]), addr(0), 1.1)
    assert b.get("m0").meta == {"port": 9999} and b.get("m0").incarnation == 1
    assert [k for k, _ in b.take_events()] == ["update"]
