"""Routing decisions (sans-I/O) and moving sessions between stores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import router
from cluster.ring import Ring
from node import store as stm
from protocol.constants import Cmd

RING = Ring(["a", "b", "c"])


def sid_owned_by(member: str) -> bytes:
    for i in range(10_000):
        sid = b"s%d" % i
        if RING.owner(sid) == member:
            return sid
    raise AssertionError("no id found")


@pytest.mark.parametrize("cmd", sorted(router.KEYED))
def test_keyed_commands_go_to_the_owner(cmd):
    mine, theirs = sid_owned_by("a"), sid_owned_by("b")
    assert router.plan(cmd, [mine, b"x"], 0, RING, "a") == (router.LOCAL, None)
    assert router.plan(cmd, [theirs, b"x"], 0, RING, "a") == (router.FORWARD, "b")
    assert router.plan(cmd, [theirs], 1, RING, "a") == (router.FORWARD, "b")
    # Passed on too often: refused, never served by a member that does not own it.
    assert router.plan(cmd, [theirs], router.MAX_HOPS, RING, "a") == (router.REFUSE, "b")


def test_ids_are_read_as_the_node_reads_them():
    sid = sid_owned_by("c")
    assert router.session_of([sid]) == sid
    assert router.session_of([12345]) == b"12345"  # a number where a string is expected
    for bad in ([], [None], [b""], [1.5], [[b"x"]], None, b"x"):
        assert router.session_of(bad) is None
    # An invalid id runs locally, where the node's checks answer BADARG.
    assert router.plan(Cmd.GETVAL, [None, b"x"], 0, RING, "a") == (router.LOCAL, None)


@pytest.mark.parametrize("cmd", sorted(router.GATHER))
def test_whole_farm_commands_scatter_once(cmd):
    assert router.plan(cmd, [], 0, RING, "a") == (router.SCATTER, None)
    assert router.plan(cmd, [], 1, RING, "a") == (router.LOCAL, None)  # a member's share


@pytest.mark.parametrize("cmd", [Cmd.PING, Cmd.INFO, Cmd.HELLO, Cmd.RANDSTR, Cmd.CALL, 999])
def test_the_rest_runs_where_it_arrives(cmd):
    assert router.plan(cmd, [b"s1"], 0, RING, "a") == (router.LOCAL, None)


def test_a_farm_of_one_and_an_empty_ring_run_everything_locally():
    assert router.plan(Cmd.GETVAL, [b"x", b"y"], 0, Ring(["solo"]), "solo") == (router.LOCAL, None)
    assert router.plan(Cmd.GETVAL, [b"x", b"y"], 0, Ring([]), "solo") == (router.LOCAL, None)


def test_merge_counts_each_session_once():
    assert router.merge(Cmd.COUNT, [1, 2, 3]) == 6
    assert router.merge(Cmd.LIST, [[b"a", b"b"], [b"c"], [b"a"]]) == [b"a", b"b", b"c"]
    assert router.merge(Cmd.FIND, [[], [b"x"]]) == [b"x"]
    assert router.merge(Cmd.LISTVAR, [{b"a": b"1"}, {b"b": b"2"}]) == {b"a": b"1", b"b": b"2"}


# -- export and merge_in: what HANDOFF and TAKE move --------------------------------

NOW = 1_000_000.0


def filled(seed_vars: dict[bytes, bytes], t: float) -> stm.Store:
    s = stm.Store()
    s.apply(stm.Create(b"S", s.version(t), b"cls", b"data"), t)
    if seed_vars:
        s.apply(stm.SetVars(b"S", s.version(t), seed_vars), t)
    return s


def state_of(store: stm.Store) -> tuple:
    s = store.get(b"S", NOW + 10, touch=False)
    return (s.classname, s.data, s.values(), s.timeout)


def test_export_then_merge_into_an_empty_store_is_the_same_session():
    src = filled({b"a": b"1", b"b": b"2"}, NOW)
    dst = stm.Store()
    assert dst.merge_in(src.export(src.get(b"S", NOW)), NOW + 1)
    assert state_of(dst) == state_of(src)
    assert dst.get(b"S", NOW + 1).ctime == NOW
    # Versions made after the merge sort after the merged ones.
    assert dst.version(NOW - 50) > max(v for _, v in dst.get(b"S", NOW + 1).vars.values())


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=3)),
    st.dictionaries(st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=3)),
)
def test_merging_is_order_free_and_idempotent(old_vars, new_vars):
    old = filled(old_vars, NOW)  # the previous owner's copy
    new = filled(new_vars, NOW + 5)  # writes made meanwhile at the new owner, later versions
    one, two = stm.Store(), stm.Store()
    for target, order in ((one, (old, new)), (two, (new, old, old))):
        for source in order:
            target.merge_in(source.export(source.get(b"S", NOW + 5, touch=False)), NOW + 6)
    assert state_of(one) == state_of(two)
    # Per variable the later write wins.
    expect = {**old_vars, **new_vars}
    if old_vars or new_vars:
        assert state_of(one)[2] == expect


def test_an_expired_state_is_not_merged():
    src = filled({b"a": b"1"}, NOW)
    state = src.export(src.get(b"S", NOW))
    dst = stm.Store()
    assert not dst.merge_in(state, NOW + 1440 + 1)
    assert len(dst) == 0


@pytest.mark.parametrize(
    "state",
    [
        [], None, [b"S"], [b"", b"", b"", 1, [], 1.0, 1.0, 60], [b"S", b"", b"", 1, [], 1.0, 1.0, 0],
        [b"S", None, b"", 1, [], 1.0, 1.0, 60], [b"S", b"", b"", 1.5, [], 1.0, 1.0, 60],
        [b"S", b"", b"", 1, [[b"n", 1, 1]], 1.0, 1.0, 60], [b"S", b"", b"", 1, [[b"n"]], 1.0, 1.0, 60],
        [b"S", b"", b"", 1, [], b"x", 1.0, 60], [b"S", b"", b"", 1, 5, 1.0, 1.0, 60],
    ],
)
def test_malformed_states_are_refused_and_change_nothing(state):
    dst = filled({b"a": b"1"}, NOW)
    before = state_of(dst)
    with pytest.raises(ValueError):
        dst.merge_in(state, NOW + 1)
    assert state_of(dst) == before


def test_take_removes_without_hooks():
    fired = []
    hooks = stm.Hooks(on_destroy=[fired.append], on_expire=[fired.append])
    s = stm.Store(hooks=hooks)
    s.apply(stm.Create(b"S", s.version(NOW)), NOW)
    assert s.take(b"S").sid == b"S"
    assert s.take(b"S") is None and len(s) == 0 and fired == []
    assert s.expire(NOW + 10_000) == []  # its expiry bucket no longer names it


def test_routes_table_matches_the_ring(farm):
    """ROUTES from a real farm: every id's owner from the table is the ring's."""
    import hashlib

    from protocol.client import Client
    from protocol.constants import Cmd as C

    with Client(nodes=[farm.addresses[0]]) as c:
        routes = c._call(C.ROUTES, [], lambda v: v)
    names = [m[0] for m in routes["members"]]
    assert len(names) == 3
    owners = routes["owners"]
    assert len(owners) == 2 * routes["partitions"] == 2 * 4096
    ring = Ring(names)
    assert routes["ring"] == ring.id
    addresses = {m[0]: m[1] for m in routes["members"]}
    assert sorted(addresses.values()) == sorted(farm.addresses)
    for i in range(2000):
        sid = b"route-%d" % i
        partition = int.from_bytes(hashlib.md5(sid).digest()[:8], "big") >> 52  # as PROTOCOL.md says
        index = int.from_bytes(owners[2 * partition: 2 * partition + 2], "big")
        assert names[index] == ring.owner(sid)


def test_a_dropped_session_does_not_come_back_with_an_older_copy():
    src = filled({b"a": b"1"}, NOW)
    old_copy = src.export(src.get(b"S", NOW))
    dst = stm.Store()
    assert dst.merge_in(old_copy, NOW + 1)
    dst.apply(stm.Drop(b"S", dst.version(NOW + 2)), NOW + 2)
    assert not dst.merge_in(old_copy, NOW + 3)  # a late handoff or a replayed TAKE
    assert dst.get(b"S", NOW + 3) is None
    # A session created again under the same id is a new one and merges as usual.
    dst.apply(stm.Create(b"S", dst.version(NOW + 4)), NOW + 4)
    newer = stm.Store()
    newer.apply(stm.Create(b"S", newer.version(NOW + 10)), NOW + 10)
    newer.apply(stm.SetVars(b"S", newer.version(NOW + 10), {b"b": b"2"}), NOW + 10)
    assert dst.merge_in(newer.export(newer.get(b"S", NOW + 10)), NOW + 11)
    assert dst.get(b"S", NOW + 11).values() == {b"b": b"2"}
    # Tombstones are forgotten after a while.
    dst.apply(stm.Drop(b"T", dst.version(NOW + 12)), NOW + 12)
    dst.merge_in(newer.export(newer.get(b"S", NOW + 10)), NOW + 12 + stm.TOMBSTONE_KEEP + 1)
    assert b"T" not in dst._dropped
