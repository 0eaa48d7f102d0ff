"""The connection deadline policy, in virtual time."""

from node.deadlines import ConnDeadline


def test_idle_deadline_moves_only_when_it_comes_near():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    assert t.deadline == 12.5
    t.received(1, frame_complete=True)
    assert t.deadline == 12.5  # still more than 10 s away: untouched
    t.received(3, frame_complete=True)
    assert t.deadline == 15.5
    assert "idle" in t.reason()


def test_an_incomplete_frame_gets_the_frame_deadline_from_when_it_began():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.received(1, frame_complete=False)
    t.answered(1, pending=True)
    assert t.deadline == 3
    t.received(2, frame_complete=False)  # more bytes of the same frame: no extension
    t.answered(2, pending=True)
    assert t.deadline == 3 and "frame not completed" in t.reason()


def test_a_completed_frame_is_answered_under_the_idle_deadline():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.answered(1, pending=True)
    t.received(2.5, frame_complete=True)  # after the frame deadline would have passed
    assert t.deadline == 2.5 + 12.5
    t.answered(2.6, pending=False)
    assert t.deadline == 15.0


def test_each_new_frame_gets_its_own_frame_deadline():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.answered(1, pending=True)
    for now in (1.5, 3.0, 4.5):  # each read completes one frame and starts the next
        t.received(now, frame_complete=True)
        t.answered(now, pending=True)
        assert t.deadline == now + 2


def test_frame_deadline_never_exceeds_the_idle_timeout():
    t = ConnDeadline(idle_timeout=1, frame_timeout=5, now=0)
    t.answered(0, pending=True)
    assert t.deadline == 1


def test_after_a_lock_wait_the_idle_clock_starts_again():
    t = ConnDeadline(idle_timeout=10, frame_timeout=2, now=0)
    t.waited(40)
    assert t.deadline == 52.5
