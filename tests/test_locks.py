import pytest

from node.locks import MAX_KEY, LockTable, Waiter
from node.store import StoreError


def test_free_lock_is_granted_with_a_nonzero_key():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    assert 0 < key <= MAX_KEY
    assert t.holder(b"s") == key
    assert t.try_acquire(b"s", 0.0, 30) == 0


def test_waiters_are_granted_in_fifo_order():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    waiters = [Waiter(30) for _ in range(3)]
    for w in waiters:
        t.enqueue(b"s", w)
    granted = t.release(b"s", key, 1.0)
    assert granted == [waiters[0]] and waiters[0].key and not waiters[1].key
    assert t.holder(b"s") == waiters[0].key
    assert t.release(b"s", waiters[0].key, 2.0) == [waiters[1]]
    assert t.release(b"s", waiters[1].key, 3.0) == [waiters[2]]
    assert t.release(b"s", waiters[2].key, 4.0) == []
    assert t.holder(b"s") == 0 and len(t) == 0


def test_wrong_key_fails_and_keeps_the_lock():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    with pytest.raises(StoreError) as exc:
        t.release(b"s", key + 1, 1.0)
    assert exc.value.name == "LOCKED"
    assert t.holder(b"s") == key


def test_unlocking_a_free_lock_is_nowlock():
    with pytest.raises(StoreError) as exc:
        LockTable().release(b"s", 1, 0.0)
    assert exc.value.name == "NOWLOCK"


def test_lease_runs_out_and_passes_the_lock_on():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 5)
    w = Waiter(7)
    t.enqueue(b"s", w)
    assert t.expire(4.9) == []
    assert t.holder(b"s") == key
    assert t.expire(5.0) == [w]
    assert t.holder(b"s") == w.key != key
    assert t.next_deadline() == 12.0
    assert t.expire(12.0) == []
    assert t.holder(b"s") == 0
    assert t.lease_expiries == 2


def test_a_released_and_retaken_lock_is_not_expired_by_the_old_lease():
    t = LockTable()
    k1 = t.try_acquire(b"s", 0.0, 5)
    t.release(b"s", k1, 1.0)
    k2 = t.try_acquire(b"s", 2.0, 5)
    assert t.expire(5.0) == []  # the first lease's deadline
    assert t.holder(b"s") == k2
    t.expire(7.0)
    assert t.holder(b"s") == 0


def test_cancelled_waiter_is_skipped():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    w1, w2 = Waiter(30), Waiter(30)
    t.enqueue(b"s", w1)
    t.enqueue(b"s", w2)
    t.cancel(b"s", w1)
    assert t.release(b"s", key, 1.0) == [w2]
    assert w1.key == 0
