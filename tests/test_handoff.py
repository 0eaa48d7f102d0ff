"""The rules of sessions changing owner (cluster/handoff.py), without I/O."""

from __future__ import annotations

from cluster import handoff
from cluster.ring import Ring
from node import store as stm


def test_moves_and_batches():
    ring = Ring(["a", "b", "c"])
    sids = [b"s%d" % i for i in range(300)]
    moves = handoff.moves(sids, ring, "a")
    assert set(moves) == {"b", "c"}
    assert sorted(s for group in moves.values() for s in group) == sorted(s for s in sids if ring.owner(s) != "a")
    groups = handoff.batches([(b"x", 40), (b"y", 40), (b"z", 40), (b"big", 500), (b"w", 10)], budget=100)
    assert groups == [[b"x", b"y"], [b"z"], [b"big"], [b"w"]]
    assert handoff.batches([], 100) == []


def test_split_parts_merge_into_the_whole():
    s = stm.Store()
    s.apply(stm.Create(b"S", s.version(1000.0), b"cls", b"d" * 50), 1000.0)
    s.apply(stm.SetVars(b"S", s.version(1000.0), {b"v%d" % i: b"x" * 40 for i in range(20)}), 1000.0)
    state = s.export(s.get(b"S", 1000.0))
    parts = handoff.split(state, budget=200)
    assert len(parts) > 3 and all(sum(handoff._var_cost(n, v) for n, v, _ in p[4]) <= 200 for p in parts[1:])
    for order in (parts, parts[::-1]):
        dst = stm.Store()
        for part in order:
            dst.merge_in(part, 1001.0)
        got = dst.get(b"S", 1001.0)
        assert (got.data, got.classname, got.values()) == (b"d" * 50, b"cls", {b"v%d" % i: b"x" * 40 for i in range(20)})
    assert handoff.split(state, budget=10**6) == [state]


def test_backoff_doubles_to_a_ceiling_until_the_deadline():
    b = handoff.Backoff(now=0.0, limit=1.0, first=0.1, most=0.3)
    delays, now = [], 0.0
    for _ in range(100):  # bounded, whatever Backoff does
        if (d := b.next(now)) is None:
            break
        delays.append(d)
        now += d
    assert delays == [0.1, 0.2, 0.3, 0.3] and now <= 1.0


def test_a_lock_goes_with_the_first_part_of_a_split_session():
    s = stm.Store()
    s.apply(stm.Create(b"S", s.version(1000.0), b"", b""), 1000.0)
    s.apply(stm.SetVars(b"S", s.version(1000.0), {b"v%d" % i: b"x" * 40 for i in range(20)}), 1000.0)
    state = s.export(s.get(b"S", 1000.0)) + [[42, 30000, 1]]
    parts = handoff.split(state, budget=200)
    assert len(parts) > 1
    assert [len(p) for p in parts] == [9] + [8] * (len(parts) - 1) and parts[0][8] == [42, 30000, 1]
    assert handoff.split(state, budget=10**6) == [state]
