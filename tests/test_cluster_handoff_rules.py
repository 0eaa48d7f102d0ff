"""The rules of cluster/handoff.py that runtime.py follows, with a fake clock
and a fake store: no trio, no sockets."""

from __future__ import annotations

import math

import pytest

from cluster import handoff
from cluster.ring import PARTITIONS, Ring, partition_of
from protocol.constants import Cmd

OLD, NEW = Ring(["a", "b"]), Ring(["a", "b", "c"])


def taken_over(now: float = 100.0) -> handoff.Takeovers:
    t = handoff.Takeovers()
    t.ring_changed(OLD, NEW, "c", holding=True, now=now)
    return t


def sid_in(partitions, tag: str) -> bytes:
    """A session id whose partition is one of ``partitions``."""
    for i in range(100_000):
        sid = b"%s-%d" % (tag.encode(), i)
        if partition_of(sid) in partitions:
            return sid
    raise AssertionError("no such id")


TAKEN = set(taken_over().previous)
SID = sid_in(TAKEN, "taken")
PREVIOUS = OLD.owner(SID)
OTHER = sid_in(set(range(PARTITIONS)) - TAKEN, "kept")


def never(sid: bytes) -> bool:
    raise AssertionError(f"the store was asked about {sid!r}")


def test_takeovers_name_the_previous_owner_for_the_window():
    t = handoff.Takeovers()
    assert not t.active(0.0)
    t.ring_changed(OLD, NEW, "c", holding=True, now=100.0)
    expected = {p: OLD.owners[p] for p in range(PARTITIONS) if NEW.owners[p] == "c" and OLD.owners[p] != "c"}
    assert expected and set(expected.values()) == {"a", "b"}
    assert {p: t.previous_owner(p, 100.0) for p in range(PARTITIONS) if t.previous_owner(p, 100.0)} == expected
    assert t.active(100.0 + handoff.TAKE_WINDOW)
    assert t.previous_owner(next(iter(expected)), 100.0 + handoff.TAKE_WINDOW + 1) is None
    assert not t.active(100.0 + handoff.TAKE_WINDOW + 1)


def test_takeovers_tell_when_their_window_closes():
    t = handoff.Takeovers()
    assert t.closes_at() == math.inf  # nothing taken over: no wake-up
    t.ring_changed(OLD, NEW, "c", holding=True, now=100.0)
    closes = t.closes_at()
    assert 100.0 + handoff.TAKE_WINDOW < closes < 100.0 + handoff.TAKE_WINDOW + 1e-9
    assert t.active(math.nextafter(closes, 0.0)) and not t.active(closes)
    assert t.closes_at() == math.inf  # seen closed
    t.ring_changed(NEW, NEW, "c", holding=True, now=200.0)  # nothing gained: still none
    assert t.closes_at() == math.inf


def test_the_fast_path_needs_readiness_a_ring_of_us_alone_and_no_takeover():
    alone = Ring(["a"])
    assert handoff.fast_path(True, alone, "a", False)
    assert handoff.fast_path(True, Ring([]), "a", False)
    assert not handoff.fast_path(False, alone, "a", False)
    assert not handoff.fast_path(True, OLD, "a", False)
    assert not handoff.fast_path(True, Ring(["b"]), "a", False)
    assert not handoff.fast_path(True, alone, "a", True)


def test_a_member_that_just_joined_takes_over_from_the_others():
    t = handoff.Takeovers()
    t.ring_changed(Ring(["c"]), NEW, "c", holding=False, now=0.0)
    mine = NEW.partitions_of("c")
    assert mine and {p: t.previous_owner(p, 1.0) for p in mine} == {p: OLD.owners[p] for p in mine}
    # The farm's first member, holding sessions, took nothing over when others came.
    first = handoff.Takeovers()
    first.ring_changed(Ring(["a"]), NEW, "a", holding=True, now=0.0)
    assert not first.active(1.0)


def test_a_session_we_lack_in_a_partition_taken_over_is_asked_for_first():
    assert PREVIOUS in ("a", "b") and NEW.owner(SID) == "c"
    asked = []

    def held(sid):
        asked.append(sid)
        return False

    assert taken_over().take_first(Cmd.GETVAL, [SID, b"k"], 101.0, held) == (SID, PREVIOUS)
    assert asked == [SID]


def test_a_session_we_hold_is_served_here():
    assert taken_over().take_first(Cmd.SETVAL, [SID, b"k", b"v"], 101.0, lambda sid: True) is None


def test_the_store_is_not_asked_outside_taken_partitions_or_the_window():
    t = taken_over()
    assert t.take_first(Cmd.GETVAL, [OTHER, b"k"], 101.0, never) is None
    late = 100.0 + handoff.TAKE_WINDOW + 0.001
    assert t.take_first(Cmd.GETVAL, [SID, b"k"], late, never) is None
    assert not t.previous  # the window closed: forgotten
    assert handoff.Takeovers().take_first(Cmd.GETVAL, [SID], 0.0, never) is None


def test_the_window_is_inclusive_of_its_last_instant():
    assert taken_over().take_first(Cmd.GETVAL, [SID], 100.0 + handoff.TAKE_WINDOW, lambda s: False) == (SID, PREVIOUS)


@pytest.mark.parametrize("cmd, args", [
    (Cmd.PING, [SID]), (Cmd.COUNT, []), (Cmd.LIST, [SID]), (Cmd.HELLO, [SID]),  # names no session
    (Cmd.GETVAL, []), (Cmd.GETVAL, [b""]), (Cmd.GETVAL, [None]), (Cmd.GETVAL, [1.5]), (Cmd.GETVAL, SID),
])
def test_a_request_naming_no_session_takes_nothing(cmd, args):
    assert taken_over().take_first(cmd, args, 101.0, never) is None


def test_every_keyed_command_and_an_integer_id_count():
    numeric = next(i for i in range(100_000) if partition_of(str(i).encode()) in TAKEN)
    t = taken_over()
    assert t.take_first(Cmd.INC, [numeric, b"n", 1], 101.0, lambda s: False) == (str(numeric).encode(), OLD.owner(str(numeric).encode()))
    for cmd in (Cmd.CTL, Cmd.CREATE, Cmd.DROP, Cmd.GETALL, Cmd.SLOCK, Cmd.SUNLOCK, Cmd.TIMEOUT, Cmd.DATAGET, Cmd.DATASET, Cmd.PLUGIN):
        assert t.take_first(cmd, [SID], 101.0, lambda s: False) == (SID, PREVIOUS), cmd


# -- whom to ask for a session (TAKE) ---------------------------------------------------------


@pytest.mark.parametrize("state", ["alive", "suspect", "left"])
def test_the_previous_owner_is_asked_first_while_it_may_answer(state):
    first, then = handoff.take_order("b", state, ["a", "b", "c", "d"], "c")
    assert (first, then) == ("b", ["a", "d"])


@pytest.mark.parametrize("state", [None, "dead"])
def test_a_dead_or_unknown_previous_owner_is_not_asked(state):
    assert handoff.take_order("b", state, ["a", "b", "c", "d"], "c") == (None, ["a", "d"])
    # (It is not in the ring any more either: the rest are asked all the same.)
    assert handoff.take_order("b", state, ["a", "c", "d"], "c") == (None, ["a", "d"])


def test_alone_with_the_previous_owner_there_is_no_one_else():
    assert handoff.take_order("a", "alive", ("a", "c"), "c") == ("a", [])
    assert handoff.take_order("a", "dead", ["c"], "c") == (None, [])


def test_given_states_are_kept_for_their_time_then_forgotten():
    g = handoff.Given(keep=10.0)
    g.add(b"x", ["x-state"], 100.0)
    g.add(b"y", ["y-state"], 105.0)
    assert g.get(b"x", 109.999) == ["x-state"] and g.get(b"y", 109.999) == ["y-state"]
    assert g.get(b"x", 110.0) is None and g.get(b"zz", 100.0) is None
    g.add(b"z", ["z-state"], 112.0)  # forgets x (past keeping), keeps y
    assert len(g) == 2 and g.get(b"y", 112.0) == ["y-state"]
    g.add(b"y", ["y-again"], 114.0)  # given again: the later state, kept from now
    g.add(b"w", ["w-state"], 123.0)  # z is past keeping; y (114) is not
    assert len(g) == 2 and g.get(b"y", 123.0) == ["y-again"] and g.get(b"z", 121.0) is None
    assert handoff.Given().keep == handoff.GIVEN_KEEP


def test_many_given_states_do_not_pile_up():
    g = handoff.Given(keep=1.0)
    for i in range(10_000):
        g.add(b"s%d" % i, [i], i * 0.01)
    assert len(g) == 100  # one second's worth


# -- HANDOFF requests -----------------------------------------------------------------------


def state(sid: bytes, variables: int, size: int) -> list:
    return [sid, b"", b"", 0, [[b"v%d" % i, b"x" * size, 1] for i in range(variables)], 1.0, 1.0, 60]


def test_the_budget_is_half_a_frame():
    assert handoff.handoff_budget(4 * 1024 * 1024) == 2 * 1024 * 1024
    assert handoff.handoff_budget(1025) == 512


def test_a_batch_goes_in_one_request_and_a_lone_big_session_in_parts():
    small = [state(b"a", 1, 10), state(b"b", 1, 10)]
    assert handoff.handoff_requests(small, 100) == [small]
    lone = [state(b"c", 1, 10)]
    assert handoff.handoff_requests(lone, 100) == [lone]
    big = state(b"big", 10, 50)
    parts = handoff.handoff_requests([big], 200)
    assert len(parts) == 5 and all(len(request) == 1 for request in parts)  # 68 bytes a variable: 2 a part
    assert [v for request in parts for v in request[0][4]] == big[4]
    assert all(request[0][0] == b"big" for request in parts)


# -- joining and leaving --------------------------------------------------------------------


def test_a_member_with_seeds_warns_then_serves_alone():
    warn_at, alone_at = handoff.join_deadlines(50.0)
    assert (warn_at, alone_at) == (50.0 + handoff.SEED_WARNING, 50.0 + handoff.JOIN_GRACE)
    assert 50.0 < warn_at < alone_at


def test_a_leave_waits_for_its_announcement_at_most_so_long():
    plan = handoff.Leave(10.0)
    now, waits = 10.0, []
    while (wait := plan.announcing(now, announced=False)) is not None:
        assert 0 < wait <= handoff.LEAVE_POLL
        waits.append(wait)
        now += wait
        assert len(waits) < 1000
    assert now == pytest.approx(10.0 + handoff.LEAVE_ANNOUNCE)
    assert plan.handoff_until == pytest.approx(now + handoff.LEAVE_HANDOFF)


def test_a_heard_leave_hands_off_at_once_and_for_so_long():
    plan = handoff.Leave(10.0)
    with pytest.raises(RuntimeError):
        plan.hand_off(10.0, 2, 5)  # not before the announcement
    assert plan.announcing(10.5, announced=True) is None
    assert plan.handoff_until == 10.5 + handoff.LEAVE_HANDOFF
    assert plan.announcing(11.0, announced=True) is None and plan.handoff_until == 10.5 + handoff.LEAVE_HANDOFF
    assert plan.hand_off(10.5, others=2, held=5)
    assert plan.hand_off(10.5 + handoff.LEAVE_HANDOFF - 0.001, others=1, held=1)
    assert not plan.hand_off(10.5 + handoff.LEAVE_HANDOFF, others=2, held=5)  # out of time
    assert not plan.hand_off(11.0, others=0, held=5)  # no one to hand them to
    assert not plan.hand_off(11.0, others=2, held=0)  # nothing left
    assert plan.pause(3) == handoff.LEAVE_RETRY and plan.pause(0) == 0


def test_the_timings_fit_together():
    # A client's request rides out a TAKE that waits on a view behind ours;
    # a leave's rounds fit its time several times over.
    assert handoff.TAKE_TIMEOUT < handoff.SETTLE_TIME < handoff.TAKE_WINDOW
    assert handoff.SEED_WARNING < handoff.JOIN_GRACE
    assert handoff.LEAVE_POLL < handoff.LEAVE_ANNOUNCE and 3 * handoff.LEAVE_RETRY < handoff.LEAVE_HANDOFF
