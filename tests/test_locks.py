import node.locks
import pytest

from node.locks import MAX_KEY, LockTable, Waiter
from node.store import StoreError


def held(lease: float, *waiter_leases: float) -> tuple[LockTable, int, list[Waiter]]:
    """A table where b"s" is locked at time 0 for ``lease`` seconds, with one
    queued waiter per given lease: (table, holder's key, waiters in order)."""
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, lease)
    waiters = [Waiter(w) for w in waiter_leases]
    for w in waiters:
        t.enqueue(b"s", w)
    return t, key, waiters


def test_free_lock_is_granted_with_a_nonzero_key():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    assert 0 < key <= MAX_KEY
    assert t.holder(b"s") == key
    assert t.try_acquire(b"s", 0.0, 30) == 0


def test_waiters_are_granted_in_fifo_order():
    t, key, waiters = held(30, 30, 30, 30)
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
    t, key, (w,) = held(5, 7)
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
    t, key, (w1, w2) = held(30, 30, 30)
    t.cancel(b"s", w1)
    assert t.release(b"s", key, 1.0) == [w2]
    assert w1.key == 0


def test_node_wakes_housekeeping_when_a_waiter_depends_on_a_lease():
    """A waiter behind a short lease must not wait for the next regular
    housekeeping: the node asks the I/O layer to run it sooner."""
    from node.commands import LockWait, Node
    from node.config import Config

    mono = [100.0]
    node = Node(Config(), clock=lambda: 0.0, lock_clock=lambda: mono[0])
    kicks = []
    node.kick = lambda: kicks.append(mono[0])
    assert node.housekeeping(0.0) == 1.0  # nothing due: a second from now
    node.execute(11, [b"s", 0, 200], 0.0)  # lock with a 0.2 s lease, nobody waiting
    assert kicks == []
    wait = node.execute(11, [b"s", 5000], 0.0)  # a waiter now depends on that lease
    assert isinstance(wait, LockWait) and kicks == [100.0]
    assert abs(node.housekeeping(0.0) - 0.2) < 1e-9
    mono[0] = 100.2
    node.housekeeping(0.2)  # the lease ends: the waiter gets the lock
    assert wait.waiter.key and node.locks.holder(b"s") == wait.waiter.key


def test_node_counts_commands_and_errors():
    import pytest

    from node.commands import CommandError, Node
    from node.config import Config

    node = Node(Config(), clock=lambda: 0.0)
    node.execute(5, [b"s"], 0.0)
    for cmd, args in ((5, [b"s"]), (5, []), (999, [])):
        with pytest.raises(CommandError):
            node.execute(cmd, args, 0.0)  # DUPSESSION, BADARG, UNKNOWN
    assert node.stats == {"commands": 4, "errors": 3}


def test_keys_are_53_bit_nonzero_and_unrepeated():
    t = LockTable()
    keys = [t.try_acquire(str(i).encode(), 0.0, 30) for i in range(1000)]  # several blocks of drawn keys
    assert all(0 < k <= MAX_KEY for k in keys) and len(set(keys)) == len(keys)
    assert max(keys).bit_length() > 48  # drawn over the whole range


def test_quick_argument_paths_answer_as_the_full_checks():
    from node.commands import CommandError, Node
    from node.config import Config

    node = Node(Config(max_id_len=4, max_name_len=3), clock=lambda: 0.0)
    node.execute(5, [b"s"], 0.0)

    def err(cmd, args):
        with pytest.raises(CommandError) as info:
            node.execute(cmd, args, 0.0)
        return info.value.name, info.value.message

    # A bad name is reported before a bad value in the same pair, and pairs in order.
    assert err(3, [b"s", {b"okay": 1.5}]) == ("BADARG", "variable name is longer than 3 bytes")
    assert err(3, [b"s", {b"a": b"1", b"": None}]) == ("BADARG", "variable name must not be empty")
    assert err(3, [b"s", {b"a": None, b"": b"1"}]) == ("BADARG", "value must be a string, not nil")
    assert err(3, [b"toolong", {b"a": b"1"}]) == ("BADARG", "session id is longer than 4 bytes")
    assert node.execute(3, [b"s", {b"a": b"1", 7: 8}], 0.0) is True  # numbers stand for their decimal form
    assert node.execute(7, [b"s"], 0.0) == {b"a": b"1", b"7": b"8"}
    assert err(13, [b"s", 0]) == ("BADARG", "timeout must be between 1 and 31536000, not 0")
    assert err(13, [b"s", True]) == ("BADARG", "timeout must be an integer, not boolean")
    assert node.execute(13, [b"s", b"60"], 0.0) == 60
    assert err(11, [b"s", -1]) == ("BADARG", "wait_ms must be between 0 and 300000, not -1")
    assert err(11, [b"s", 0, 0]) == ("BADARG", "lease_ms must be positive")
    key = node.execute(11, [b"s", 0, 1000.0], 0.0)  # a whole float is accepted
    assert err(12, [b"s", -1]) == ("BADARG", "key must be between 0 and 18446744073709551615, not -1")
    assert err(12, [b"s", True])[0] == "BADARG"  # a boolean is not a key
    assert node.execute(12, [b"s", str(key).encode()], 0.0) == key


def test_lease_heap_does_not_grow_with_lock_unlock_cycles():
    """SLOCK/SUNLOCK pairs, alone or with waiters queued, leave no stale lease
    entries behind (they used to pile up until their lease ended)."""
    t = LockTable()
    for i in range(1000):
        key = t.try_acquire(b"s", float(i), 30)
        t.release(b"s", key, i + 0.5)
    assert len(t._leases) == 0 and len(t) == 0
    key = t.try_acquire(b"s", 0.0, 30)
    for i in range(1000):
        w = Waiter(30)
        t.enqueue(b"s", w)
        (granted,) = t.release(b"s", key, float(i))
        key = granted.key
    assert len(t._leases) == 1


def test_a_lease_extended_by_passing_on_ends_at_its_own_deadline():
    t, key, (w1, w2) = held(10, 10, 3)
    assert t.release(b"s", key, 5.0) == [w1]  # w1's lease ends at 15
    assert t.next_deadline() <= 15.0
    assert t.expire(10.0) == [] and t.holder(b"s") == w1.key  # the first lease's deadline: not w1's
    assert t.next_deadline() == 15.0
    assert t.expire(14.9) == [] and t.holder(b"s") == w1.key
    assert t.expire(15.0) == [w2] and t.lease_expiries == 1
    assert t.next_deadline() == 18.0  # a shorter lease than the entry's: its own entry
    assert t.expire(18.0) == [] and t.holder(b"s") == 0 and t.lease_expiries == 2


def test_lock_table_matches_a_plain_model():
    """Random acquire/enqueue/cancel/release/expire on a few sids, against a
    model that scans every lock for ended leases."""
    import random

    rnd = random.Random(1)
    for _ in range(200):
        t = LockTable()
        model: dict[bytes, list] = {}  # sid -> [key, deadline, [waiters]]
        now = 0.0
        for _ in range(200):
            now += rnd.choice((0.0, 0.5, 1.0, 3.0))
            expected = {}  # id(waiter) -> sid, granted by the model's expiry
            for s in list(model):
                m = model[s]
                if m[1] <= now:
                    if m[2]:
                        w = m[2].pop(0)
                        expected[id(w)] = s
                        m[1] = now + w.lease
                    else:
                        del model[s]
            got = t.expire(now)
            assert sorted(map(id, got)) == sorted(expected)
            for w in got:
                s = expected[id(w)]
                assert w.key and t.holder(s) == w.key
                model[s][0] = w.key
            assert {s: m[0] for s, m in model.items()} == {s: t.holder(s) for s in t._locks}
            nd = t.next_deadline()
            if model:
                assert nd is not None and nd <= min(m[1] for m in model.values())
            sid = rnd.choice((b"a", b"b", b"c"))
            op = rnd.random()
            if op < 0.3:
                lease = rnd.choice((1.0, 2.0, 5.0))
                key = t.try_acquire(sid, now, lease)
                if sid in model:
                    assert key == 0
                else:
                    assert key
                    model[sid] = [key, now + lease, []]
            elif op < 0.55 and sid in model:
                w = Waiter(rnd.choice((1.0, 2.0, 5.0)))
                t.enqueue(sid, w)
                model[sid][2].append(w)
            elif op < 0.65 and sid in model and model[sid][2]:
                w = rnd.choice(model[sid][2])
                t.cancel(sid, w)
                model[sid][2].remove(w)
            elif op < 0.9 and sid in model:
                m = model[sid]
                granted = t.release(sid, m[0], now)
                if m[2]:
                    w = m[2].pop(0)
                    assert granted == [w] and w.key == t.holder(sid)
                    m[0], m[1] = w.key, now + w.lease
                else:
                    assert granted == [] and t.holder(sid) == 0
                    del model[sid]
            elif op < 0.95 and sid in model:
                with pytest.raises(StoreError):  # a wrong key changes nothing
                    t.release(sid, model[sid][0] ^ 1, now)
            for s, m in model.items():  # every live lock has its entry, never later than its lease
                lock = t._locks[s]
                assert lock.entry is not None and lock.entry in t._leases and lock.entry[0] <= m[1]
        # Drain: every lease ends, and each waiter's lease ends after its grant (none is lost).
        for _ in range(1000):  # bounded: each round ends at least one lease
            if not model:
                break
            now = min(m[1] for m in model.values())
            for w in t.expire(now):
                s = next(s for s, m in model.items() if m[2] and m[2][0] is w)
                model[s][2].pop(0)
                model[s][0], model[s][1] = w.key, now + w.lease
            for s in [s for s, m in model.items() if m[1] <= now and not m[2]]:
                del model[s]
            assert {s: m[0] for s, m in model.items()} == {s: t.holder(s) for s in t._locks}
        assert len(t) == 0


def test_locks_freed_out_of_order_leave_a_bounded_heap():
    # Two sessions locked and unlocked alternately (lock a, lock b, unlock a,
    # unlock b): a's entry is never the heap's last when it is freed.
    t = LockTable()
    for i in range(10_000):
        ka = t.try_acquire(b"a", float(i), 30)
        kb = t.try_acquire(b"b", float(i), 30)
        assert t.release(b"a", ka, float(i)) == []
        assert t.release(b"b", kb, float(i)) == []
    assert len(t._leases) <= 64 + 2
    key = t.try_acquire(b"a", 1e6, 30)  # and leases still end on time
    assert t.expire(1e6 + 29.9) == [] and t.holder(b"a") == key
    t.expire(1e6 + 30)
    assert t.holder(b"a") == 0


def test_a_compaction_during_expire_loses_no_lease(monkeypatch):
    # expire() frees Y (no waiter) and then meets Z's entry, whose lease was
    # passed on and extended: it pushes Z's entry again. A compaction of the
    # heap triggered by freeing Y must not make that push go to a dropped list.
    monkeypatch.setattr(node.locks, "_COMPACT_SLACK", -(10**9))  # compact on every free
    t = LockTable()
    t.try_acquire(b"Y", 0.0, 9)
    kz = t.try_acquire(b"Z", 0.0, 10)
    w = Waiter(100)
    t.enqueue(b"Z", w)
    assert t.release(b"Z", kz, 5.0) == [w]  # W holds Z until 105; Z's entry still says 10
    t.expire(50.0)  # Y's lease ends (compaction), Z's entry comes up and is pushed again
    assert t.holder(b"Y") == 0 and t.holder(b"Z") == w.key
    t.expire(105.0)
    assert t.holder(b"Z") == 0, "W's lease ended"



WAITS = [None, 0, 1, 250, -1, 300_000, 300_001, 2**63, 1.0, 0.5, 1.5, float("inf"), float("-inf"), float("nan"),
         True, False, b"100", b"0", b"x", b" 7", "100", [], {}, b""]


@pytest.mark.parametrize("wait", WAITS, ids=repr)
def test_the_clients_rule_of_an_slock_that_may_wait_is_the_nodes(wait):
    """protocol.client.lock_may_wait decides, for clients and farm members, that
    an SLOCK gets a connection of its own (it may hold back later answers) and
    that a member's forwarded SLOCK is answered in line; it must agree with what
    the node does with the same arguments when the lock is taken: wait (a
    LockWait) or answer at once. (It crashed on inf: OverflowError.)"""
    import msgpack

    from node.commands import CommandError, LockWait, Node
    from node.config import Config
    from protocol.client import lock_may_wait, lock_wait
    from protocol.constants import Cmd

    n = Node(Config(), clock=lambda: 0.0, lock_clock=lambda: 0.0)
    assert type(n.execute(Cmd.SLOCK, [b"s"], 0.0)) is int  # taken
    args = [b"s"] if wait is None else [b"s", wait]
    on_the_wire = msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=True)  # (a str arrives as bytes)
    try:
        waits = type(n.execute(Cmd.SLOCK, on_the_wire, 0.0)) is LockWait
    except CommandError:
        waits = False
    may = lock_may_wait(Cmd.SLOCK, args)
    assert may == waits or (may and wait in (300_001, 2**63)), (wait, may, waits)
    assert lock_wait(Cmd.SLOCK, args) >= 0


# -- a lock moving with its session (give_up on the old owner, adopt on the new)


def test_a_lock_given_up_leaves_with_its_key_lease_left_and_moves_and_its_waiters_marked_moved():
    t, key, waiters = held(30, 10, 10)
    wire, moved = t.give_up(b"s", 12.5)
    assert wire == [key, 17500, 1]
    assert moved == waiters and all(w.moved and not w.key for w in waiters)
    assert t.holder(b"s") == 0 and len(t) == 0 and t.waiting() == 0
    assert t.give_up(b"s", 13.0) == (None, [])
    assert t.expire(100.0) == []  # its lease entry is gone with it: nothing to end, nothing granted
    assert t.try_acquire(b"s", 13.0, 30)  # free here now


def test_an_adopted_lock_is_held_by_the_same_key_for_the_lease_left():
    old = LockTable()
    key = old.try_acquire(b"s", 0.0, 30)
    wire, _ = old.give_up(b"s", 10.0)
    new = LockTable()
    assert new.adopt(b"s", *wire, now=500.0)
    assert new.holder(b"s") == key and new.try_acquire(b"s", 500.0, 30) == 0
    assert new.adopt(b"s", *wire, now=501.0)  # the same lock again: no change
    assert new.next_deadline() == 520.0
    assert new.expire(519.9) == [] and new.holder(b"s") == key
    assert new.expire(520.0) == [] and new.holder(b"s") == 0  # the lease it had left, from arrival


def test_the_holder_unlocks_an_adopted_lock_and_its_waiters_get_it_in_order():
    t = LockTable()
    assert t.adopt(b"s", 1234, 30000, 1, now=0.0)
    waiters = [Waiter(5), Waiter(5)]
    for w in waiters:
        t.enqueue(b"s", w)
    with pytest.raises(StoreError):
        t.release(b"s", 999, 1.0)
    assert t.release(b"s", 1234, 1.0) == [waiters[0]]
    assert t.holder(b"s") == waiters[0].key != 1234


def test_a_lock_held_here_by_another_key_is_kept():
    t = LockTable()
    mine = t.try_acquire(b"s", 0.0, 30)
    assert not t.adopt(b"s", mine + 1 if mine < MAX_KEY else 1, 30000, 1, now=1.0)
    assert t.holder(b"s") == mine


@pytest.mark.parametrize("end", ["release", "expire", "pass_on", "give_up"])
def test_a_late_copy_of_a_lock_that_ended_here_does_not_lock_again(end):
    t = LockTable()
    assert t.adopt(b"s", 77, 30000, 1, now=0.0)
    if end == "release":
        t.release(b"s", 77, 1.0)
    elif end == "expire":
        t.expire(30.0)
    elif end == "pass_on":
        w = Waiter(5)
        t.enqueue(b"s", w)
        t.release(b"s", 77, 1.0)
        t.release(b"s", w.key, 2.0)
    else:
        t.give_up(b"s", 1.0)
    assert not t.adopt(b"s", 77, 30000, 1, now=40.0)  # (a TAKE's copy and the HANDOFF's, say)
    assert t.holder(b"s") == 0
    assert t.adopt(b"s", 77, 30000, 1, now=40.0 + node.locks.ENDED_KEEP)  # forgotten after ENDED_KEEP


def test_a_lock_that_moves_on_and_comes_back_is_taken_again():
    a, b, c = LockTable(), LockTable(), LockTable()
    key = a.try_acquire(b"s", 0.0, 60)
    to_b, _ = a.give_up(b"s", 1.0)
    assert b.adopt(b"s", *to_b, now=1.0)
    to_c, _ = b.give_up(b"s", 2.0)
    assert c.adopt(b"s", *to_c, now=2.0)
    back_to_b, _ = c.give_up(b"s", 3.0)  # (c left the farm again)
    assert not b.adopt(b"s", *to_b, now=3.0)  # a late copy of the first move: refused
    assert b.adopt(b"s", *back_to_b, now=3.0) and b.holder(b"s") == key
    back_to_a, _ = b.give_up(b"s", 4.0)
    assert a.adopt(b"s", *back_to_a, now=4.0) and a.holder(b"s") == key


def test_our_own_lock_back_from_a_failed_handoff_keeps_its_deadline():
    t = LockTable()
    key = t.try_acquire(b"s", 0.0, 30)
    wire, _ = t.give_up(b"s", 10.0)
    assert not t.adopt(b"s", *wire, now=20.0)  # not as a copy from elsewhere
    assert t.adopt(b"s", *wire, now=20.0, returned=True)
    assert t.holder(b"s") == key and t.next_deadline() == 30.0  # not 20 + the 20 s it had left
    assert t.expire(30.0) == [] and t.holder(b"s") == 0
    wire, _ = t.give_up(b"s", 31.0)
    assert wire is None
    key = t.try_acquire(b"s", 40.0, 30)
    wire, _ = t.give_up(b"s", 41.0)
    assert not t.adopt(b"s", *wire, now=71.0, returned=True)  # its lease ended meanwhile
    assert t.holder(b"s") == 0


def test_ended_keys_are_forgotten_oldest_first():
    t = LockTable()
    for i in range(1, 101):
        t.adopt(b"s%d" % i, i, 1000, 1, now=float(i))
        t.release(b"s%d" % i, i, float(i))
    t.adopt(b"x", 1000, 1000, 1, now=100.0 + node.locks.ENDED_KEEP)
    t.release(b"x", 1000, 100.0 + node.locks.ENDED_KEEP)
    assert len(t._ended) == 1


def test_a_lock_arriving_with_a_longer_lease_than_ours_is_cut_to_our_maximum():
    from node.commands import Node
    from conftest import make_config

    t = [100.0]
    n = Node(make_config(lock_lease=5.0, max_lock_lease=10.0), clock=lambda: 1e9, lock_clock=lambda: t[0])
    assert n.adopt_lock(b"s", [5, 3_600_000, 1])  # a member whose max_lock_lease is an hour
    assert n.locks.next_deadline() == 110.0
    with pytest.raises(ValueError):
        n.adopt_lock(b"s", [5, 2**32, 1])
