import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.hlc import HLC, wall_ms
from node.store import Create, Drop, Hooks, IncVar, SetData, SetTimeout, SetVars, Store, StoreError


def make(timeout=100, hooks=None):
    return Store(default_timeout=timeout, hooks=hooks)


def create(store, sid, now=0.0, **kw):
    return store.apply(Create(sid, store.version(now), **kw), now)


def test_create_get_drop():
    s = make()
    assert create(s, b"a", classname=b"cart", data=b"d") is True
    sess = s.get(b"a", 1.0)
    assert (sess.classname, sess.data, sess.ctime, sess.atime) == (b"cart", b"d", 0.0, 1.0)
    with pytest.raises(StoreError) as exc:
        create(s, b"a")
    assert exc.value.name == "DUPSESSION"
    assert s.apply(Drop(b"a", s.version(2.0)), 2.0) is True
    assert s.apply(Drop(b"a", s.version(2.0)), 2.0) is True  # missing: not an error
    assert s.get(b"a", 3.0) is None


def test_setvars_needs_a_session_setdata_creates_one():
    s = make()
    with pytest.raises(StoreError) as exc:
        s.apply(SetVars(b"x", s.version(0), {b"k": b"v"}), 0)
    assert exc.value.name == "NOSESSION"
    s.apply(SetData(b"x", s.version(0), b"blob"), 0)
    assert s.get(b"x", 0).data == b"blob"


def test_inc_counts_missing_as_zero_and_refuses_non_integers():
    s = make()
    create(s, b"a")
    assert s.apply(IncVar(b"a", s.version(0), b"n"), 0) == 1
    assert s.apply(IncVar(b"a", s.version(0), b"n", 41), 0) == 42
    assert s.get(b"a", 0).values() == {b"n": b"42"}
    s.apply(SetVars(b"a", s.version(0), {b"t": b"abc"}), 0)
    with pytest.raises(StoreError) as exc:
        s.apply(IncVar(b"a", s.version(0), b"t"), 0)
    assert exc.value.name == "NOVALUE"
    s.apply(SetVars(b"a", s.version(0), {b"big": str(2**63 - 1).encode()}), 0)
    with pytest.raises(StoreError) as exc:
        s.apply(IncVar(b"a", s.version(0), b"big"), 0)
    assert exc.value.name == "BADARG"


def test_older_versions_lose_per_variable():
    s = make()
    create(s, b"a")
    v1, v2 = s.version(1), s.version(2)
    s.apply(SetVars(b"a", v2, {b"x": b"new"}), 2)
    s.apply(SetVars(b"a", v1, {b"x": b"old", b"y": b"only-old"}), 2)
    assert s.get(b"a", 2).values() == {b"x": b"new", b"y": b"only-old"}
    s.apply(SetData(b"a", v2, b"new"), 2)
    s.apply(SetData(b"a", v1, b"old"), 2)
    assert s.get(b"a", 2).data == b"new"


updates = st.lists(
    st.tuples(
        st.sampled_from(["vars", "data"]),
        st.dictionaries(st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=3), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=6,
)


@given(updates, st.permutations(range(6)))
def test_replicas_applying_the_same_updates_in_any_order_agree(ups, perm):
    stamped = []
    for version, (kind, pairs) in enumerate(ups, start=1):
        if kind == "vars":
            stamped.append(SetVars(b"s", version, pairs))
        else:
            stamped.append(SetData(b"s", version, b"".join(pairs.values())))
    order = [i for i in perm if i < len(stamped)]
    states = []
    for sequence in (stamped, [stamped[i] for i in order]):
        r = make()
        r.apply(Create(b"s", 0), 0)
        for u in sequence:
            r.apply(u, 0)
        sess = r.get(b"s", 0)
        states.append((sess.vars, sess.data))
    assert states[0] == states[1]


def test_hlc_is_monotonic_and_follows_wall_time():
    clock = HLC()
    a = clock.tick(1000.0)
    b = clock.tick(999.0)  # the wall clock stepped back
    c = clock.tick(1000.5)
    assert a < b < c
    assert wall_ms(c) == 1000500
    assert clock.observe(c + 100, 0.0) > c + 100


# -- expiry --------------------------------------------------------------


def test_idle_session_expires_and_access_extends_it():
    s = make(timeout=10)
    create(s, b"a", now=0.0)
    create(s, b"b", now=0.0)
    assert s.get(b"a", 9.0) is not None  # touch: a now expires at 19
    assert [x.sid for x in s.expire(10.0)] == [b"b"]
    assert s.count(18.9) == 1
    assert [x.sid for x in s.expire(19.0)] == [b"a"]
    assert s.count(19.0) == 0
    assert s.expired_total == 2


def test_read_after_deadline_sees_nothing_even_before_expire_runs():
    expired = []
    s = make(timeout=10, hooks=Hooks(on_expire=[lambda x: expired.append(x.sid)]))
    create(s, b"a")
    assert s.get(b"a", 10.0) is None
    assert expired == [b"a"]
    assert s.expire(100.0) == []
    assert expired == [b"a"]


def test_timeout_change_rebuckets():
    s = make(timeout=10)
    create(s, b"a")
    assert s.apply(SetTimeout(b"a", s.version(5), 100), 5.0) == 100
    assert s.expire(50.0) == []
    assert [x.sid for x in s.expire(105.0)] == [b"a"]


def test_ctime_survives_and_recreated_session_is_new():
    s = make(timeout=10)
    create(s, b"a", now=0.0)
    s.apply(Drop(b"a", s.version(1)), 1.0)
    create(s, b"a", now=2.0)
    assert s.get(b"a", 3.0).ctime == 2.0
    assert [x.sid for x in s.expire(11.9)] == []
    assert [x.sid for x in s.expire(13.0)] == [b"a"]


def test_expire_work_is_proportional_to_what_expires():
    """A million sessions, of which a thousand are due: expire() looks at those only."""
    s = make(timeout=1000)
    n = 1_000_000
    for i in range(n - 1000):
        s.apply(Create(b"%d" % i, i), 0.0)
    for i in range(n - 1000, n):
        s.apply(Create(b"%d" % i, i, timeout=10), 0.0)
    assert len(s) == n
    assert s.expire(9.0) == []
    examined = []

    scans = []

    class CountingDict(dict):
        def pop(self, key, *default):
            examined.append(key)
            return super().pop(key, *default)

    def scanning(name):
        def method(self, *args):
            scans.append(name)
            return getattr(dict, name)(self, *args)

        return method

    for name in ("__iter__", "values", "items", "keys"):
        setattr(CountingDict, name, scanning(name))

    s._sessions = CountingDict(s._sessions)
    gone = s.expire(10.0)
    assert len(gone) == 1000 and len(examined) == 1000 and scans == []
    assert len(s) == n - 1000
    assert s.next_expiry() == 1000.0


def test_hook_errors_do_not_lose_sessions():
    def boom(session):
        raise RuntimeError("plugin bug")

    s = make(hooks=Hooks(on_create=[boom]))
    create(s, b"a")
    assert s.get(b"a", 0.0) is not None
    assert s.hook_errors == 1


def test_new_id_has_the_length_and_is_unused():
    s = make()
    ids = {s.new_id(32, 0.0) for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and i.isalnum() for i in ids)
    # With every one-character id taken, no id can be found.
    from node.store import ID_ALPHABET

    for ch in ID_ALPHABET:
        create(s, ch.encode())
    with pytest.raises(StoreError):
        s.new_id(1, 0.0)


def test_expire_in_batches_leaves_the_rest_due():
    s = make(timeout=10)
    for i in range(25):
        create(s, b"%d" % i)
    assert len(s.expire(10.0, limit=10)) == 10
    assert len(s) == 15 and s.next_expiry() == 10.0
    assert len(s.expire(10.0, limit=10)) == 10
    assert len(s.expire(10.0, limit=10)) == 5
    assert len(s) == 0 and s.next_expiry() is None
    assert s.expired_total == 25


def test_housekeeping_runs_again_at_once_while_a_mass_expiry_lasts():
    from node.commands import EXPIRE_BATCH, Node
    from node.config import Config

    node = Node(Config(session_timeout=10), clock=lambda: 0.0)
    for i in range(EXPIRE_BATCH + 5):
        node.store.apply(Create(b"%d" % i, i), 0.0)
    assert node.housekeeping(20.0) == 20.0  # more due: call again now
    assert len(node.store) == 5
    assert node.housekeeping(20.0) > 20.0
    assert len(node.store) == 0


def test_count_and_listing_skip_due_sessions_without_reaping_them():
    s = make(timeout=10)
    create(s, b"a")
    create(s, b"b", now=5.0)
    assert s.count(10.0) == 1  # a is due
    assert [x.sid for x in s.sessions(10.0)] == [b"b"]
    assert len(s) == 2  # left for the reaper
    assert [x.sid for x in s.expire(10.0)] == [b"a"]


def test_count_agrees_with_listing_within_the_second_a_deadline_falls_in():
    """A deadline inside a second (10.3 sits in the bucket of second 11): at
    10.5 the session is gone for the listing, so it is for the count too."""
    s = make(timeout=10)
    create(s, b"a", now=0.3)  # deadline 10.3
    create(s, b"b", now=5.0)  # deadline 15.0
    for now in (10.2, 10.3, 10.5, 10.5, 10.9, 11.0, 14.5, 15.0):
        assert s.count(now) == len(list(s.sessions(now))), now
    assert s.count(10.5) == 1 and s.count(15.0) == 0
    assert len(s) == 2  # nothing reaped: left for the reaper


_store_op = st.tuples(
    st.sampled_from(["create", "get", "peek", "drop", "timeout", "merge", "take", "expire", "count"]),
    st.sampled_from([b"a", b"b", b"c"]),
    st.integers(1, 3),  # a timeout
    # times in tenths of a second, sometimes earlier than the last one (a wall clock steps back)
    st.integers(0, 60).map(lambda t: t / 10),
)


@given(st.lists(_store_op, max_size=60))
def test_count_always_agrees_with_the_listing(ops):
    """Whatever happened before, at any time the count is the number of
    sessions the listing gives (the ones LIST, FIND and LISTVAR answer from)."""
    s, other = make(timeout=2), make(timeout=2)
    for kind, sid, timeout, now in ops:
        if kind == "create" and s.get(sid, now, touch=False) is None:
            s.apply(Create(sid, s.version(now), timeout=timeout), now)
        elif kind in ("get", "peek"):
            s.get(sid, now, touch=kind == "get")
        elif kind == "drop":
            s.apply(Drop(sid, s.version(now)), now)
        elif kind == "timeout" and s.get(sid, now, touch=False) is not None:
            s.apply(SetTimeout(sid, s.version(now), timeout), now)
        elif kind == "merge":  # a copy from elsewhere, last accessed a while ago
            if other.get(sid, now, touch=False) is None:
                other.apply(Create(sid, other.version(now), timeout=timeout), max(0.0, now - timeout + 0.25))
            s.merge_in(other.export(other._sessions[sid]), now)
        elif kind == "take":
            s.take(sid)
        elif kind == "expire":
            s.expire(now, limit=1)
        assert s.count(now) == len(list(s.sessions(now))), (kind, sid, now)


def test_count_follows_deadlines_that_move_within_the_second_it_looks_at():
    s = make(timeout=3)
    create(s, b"a", now=4.3)  # deadline 7.3, in second 8
    create(s, b"b", now=4.3)
    assert s.count(7.1) == 2  # second 8 is the one 7.1 falls in
    s.get(b"a", 4.5)  # the wall clock stepped back: a's deadline is 7.5, still in second 8
    # a copy of b accessed later, with a shorter timeout: its deadline moves earlier, to 7.2
    assert s.merge_in([b"b", b"", b"", 1, [], 4.3, 5.2, 2], 7.1)
    create(s, b"c", now=5.1, timeout=2)  # a newcomer in second 8 (deadline 7.1)
    for now in (7.25, 7.4, 7.6):
        assert s.count(now) == len(list(s.sessions(now))), now
    assert s.count(7.6) == 0
