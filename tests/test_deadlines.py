"""The connection deadline policy, in virtual time."""

import math

from node.deadlines import ConnDeadline
from protocol.codec import FrameDecoder, frame, pack

WHOLE = frame(pack([1, 1026, []]))  # a PING


def buffered(data: bytes) -> FrameDecoder:
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder


def at(t: float):
    """A clock reading ``t``."""
    return lambda: t


def unread() -> float:
    raise AssertionError("the clock was read")


COMPLETE = buffered(WHOLE)  # a whole frame is buffered
PARTIAL = buffered(WHOLE[:-1])  # part of one


def test_idle_deadline_moves_only_when_it_comes_near():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    assert t.deadline == 12.5
    assert t.received(1, COMPLETE) is False
    assert t.deadline == 12.5  # still more than 10 s away: untouched
    assert t.received(3, COMPLETE) is True
    assert t.deadline == 15.5
    assert t.answered(at(3), 0) is False  # nothing incomplete, before or now: unchanged
    assert t.answered(unread, 0) is False  # ... and the clock is not read (every batch takes this path)
    assert "idle" in t.reason()


def test_an_incomplete_frame_gets_the_frame_deadline_from_when_it_began():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.received(1, PARTIAL)
    assert t.answered(at(1), PARTIAL.pending) is True
    assert t.deadline == 3
    assert t.received(2, PARTIAL) is False  # more bytes of the same frame: no extension
    assert t.answered(at(2), PARTIAL.pending) is False
    assert t.deadline == 3 and "frame not completed" in t.reason()


def test_a_completed_frame_is_answered_under_the_idle_deadline():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.answered(at(1), 3)
    assert t.received(2.5, COMPLETE) is True  # after the frame deadline would have passed
    assert t.deadline == 2.5 + 12.5
    assert t.answered(at(2.6), 0) is False  # the frame completed: already under the idle deadline
    assert t.deadline == 15.0


def test_each_new_frame_gets_its_own_frame_deadline():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.answered(at(1), 3)
    for now in (1.5, 3.0, 4.5):  # each read completes one frame and starts the next
        assert t.received(now, COMPLETE) is True
        assert t.answered(at(now), 3) is True
        assert t.deadline == now + 2


def test_frame_deadline_never_exceeds_the_idle_timeout():
    t = ConnDeadline(idle_timeout=1, frame_timeout=5, now=0)
    t.answered(at(0), 3)
    assert t.deadline == 1


def test_no_deadline_while_a_request_waits_then_the_idle_clock_starts_again():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.waiting()
    assert t.deadline == math.inf  # even though the idle deadline (12.5) would fall first
    t.waiting()  # lifting twice keeps the deadline to restore
    t.waited(40)
    assert t.deadline == 52.5


def test_a_short_wait_leaves_a_far_idle_deadline_alone():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.waiting()
    t.waited(1)  # 12.5 is still more than idle_timeout away
    assert t.deadline == 12.5
    t.waited(2)  # no wait began: only the idle rule applies
    assert t.deadline == 12.5
