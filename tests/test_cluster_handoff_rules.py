"""The rules of cluster/handoff.py that runtime.py follows, with a fake clock
and a fake store: no trio, no sockets."""

from __future__ import annotations

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
    assert not t.previous  # the window closed: forgotten (runtime refreshes its fast path on this)
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
