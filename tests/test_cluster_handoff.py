"""Sessions moving between members: the cases a review found (real farms on loopback).

- a session dropped at its new owner does not come back from an older copy;
- a locked session moves with its lock, and a locker waiting for it on the
  old owner follows it to the new one;
- sessions larger in total than a frame, and one session larger than a frame,
  move whole;
- a request at the frame limit, or with a lock wait written as a string, goes
  through a member that is not the owner like through the owner;
- a handoff looks each moving session up once (in process).
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cluster.ring import Ring
from procs import node_info, wait_for
from protocol.client import Client, MsessionError
from protocol.codec import encode_request
from protocol.constants import Cmd


def ident(value):
    return value


def owned_by(names: list[str], member: str, count: int, tag: str) -> list[str]:
    ring = Ring(names)
    out = [f"{tag}-{i}" for i in range(20000) if ring.owner(f"{tag}-{i}".encode()) == member]
    assert len(out) >= count
    return out[:count]


def test_a_dropped_session_does_not_come_back(farms):
    farm = farms(2, prefix="rz")
    n1, n2 = farm.nodes
    sid = owned_by([n1.name, n2.name], n2.name, 1, "rz")[0].encode()
    now = time.time()
    # A stray copy on the member that does not own it, as a handoff racing a
    # change of view leaves one: the owner fetches it on first use (TAKE).
    state = [sid, b"", b"", 1, [[b"k", b"old", 1]], now, now, 600]
    with Client(nodes=[n1.address]) as c1, Client(nodes=[n2.address]) as c2:
        assert c1._call(Cmd.HANDOFF, [[state]], ident) == 1
        assert c2.get(sid, "k") == b"old"
        assert c2.destroy(sid) is True
        # Neither the giver's memory of what it gave nor a late copy revives it.
        with pytest.raises(MsessionError) as exc:
            c2.get(sid, "k")
        assert exc.value.code == "NOSESSION"
        assert c2._call(Cmd.HANDOFF, [[state]], ident) == 0
        assert c1.ctl(sid) == 0 and c2.ctl(sid) == 0


def test_a_lock_arriving_with_its_session_is_held_once(farms):
    farm = farms(2, prefix="lh")
    n1, n2 = farm.nodes
    sid, bad = (s.encode() for s in owned_by([n1.name, n2.name], n2.name, 2, "lh"))
    now = time.time()
    state = [sid, b"", b"", 1, [[b"k", b"v", 1]], now, now, 600, [4242, 60000, 1]]
    with Client(nodes=[n2.address]) as c:
        assert c._call(Cmd.HANDOFF, [[state]], ident) == 1
        with pytest.raises(MsessionError) as exc:
            c.lock(sid, wait=0)
        assert exc.value.code == "LOCKED"
        assert c.unlock(sid, 4242) == 4242  # the key it was given elsewhere
        # A late copy of the same state (a TAKE's answer and the HANDOFF both
        # arriving) merges the data again but does not lock the session again.
        c._call(Cmd.HANDOFF, [[state]], ident)
        assert c.unlock(sid, c.lock(sid, wait=0))
        for lock in ([0, 1000, 1], [4242, 0, 1], [4242, 1000, 0], [4242, 1000], [b"k", 1000, 1], [4242, 10**12, 1], None):
            with pytest.raises(MsessionError) as exc:
                c._call(Cmd.HANDOFF, [[[bad, b"", b"", 1, [], now, now, 600, lock]]], ident)
            assert exc.value.code == "BADARG", lock
            assert c.ctl(bad) == 0  # nothing merged
        # A batch with one malformed state merges none of them (a sender
        # that is refused keeps them all: never two holders).
        good = [bad, b"", b"", 1, [], now, now, 600, [99, 60000, 1]]
        with pytest.raises(MsessionError) as exc:
            c._call(Cmd.HANDOFF, [[good, [bad, b"", b"", 1, [], now, now, 600, [0, 1, 1]]]], ident)
        assert exc.value.code == "BADARG"
        assert c.ctl(bad) == 0 and c.unlock(bad, c.lock(bad, wait=0))
        assert c.get(sid, "k") == b"v"


def test_a_locked_session_moves_with_its_lock_and_its_waiters_follow(farms):
    farm = farms(2, prefix="lk")
    before = [n.name for n in farm.nodes]
    after = Ring(before + ["lk3"])
    moving = owned_by(before + ["lk3"], "lk3", 5, "lk")
    staying = [f"stay-{i}" for i in range(200) if after.owner(f"stay-{i}".encode()) != "lk3"][:20]
    holders = {n.name: n for n in farm.nodes}
    first, second = farm.nodes
    waited: dict = {}

    def wait_for_lock() -> None:  # queued on the old owner before the move
        with Client(nodes=[second.address], timeout=30) as cw:
            t = time.monotonic()
            try:
                waited["key"] = cw.lock(moving[0], wait=20)
            except MsessionError as exc:
                waited["error"] = exc.code
            waited["seconds"] = time.monotonic() - t

    with Client(nodes=[first.address]) as c:
        for sid in moving + staying:
            c.create(sid)
            c.set(sid, "v", sid)
        key = c.lock(moving[0], wait=0, lease=60)
        assert key
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        try:
            wait_for(lambda: c.info()["lock_waiters"] + node_info(second)["lock_waiters"] == 1, 10,
                     "the second locker to queue")
            joiner = farm.add(name="lk3")
            farm.wait_converged()
            # Handed off, not fetched on demand: nothing has asked for them yet.
            wait_for(lambda: node_info(joiner)["sessions"] == len(moving), 10, "the locked session to move with the rest")
            for name, node in holders.items():
                assert node_info(node)["sessions"] == sum(after.owner(s.encode()) == name for s in staying)
            for node in farm.nodes:
                with Client(nodes=[node.address]) as cn:
                    assert [cn.get(s, "v") for s in moving + staying] == [s.encode() for s in moving + staying]
            # The lock moved too: the new owner holds it for the same key, and
            # the waiter queued on the old owner now waits there.
            with Client(nodes=[joiner.address]) as cj:
                with pytest.raises(MsessionError) as exc:
                    cj.lock(moving[0], wait=0)
                assert exc.value.code == "LOCKED"
                wait_for(lambda: cj.info()["lock_waiters"] == 1, 10, "the waiter to follow the lock")
            assert "key" not in waited and "error" not in waited
            assert c.unlock(moving[0], key) == key  # the holder's key still unlocks it, through any member
        finally:
            waiter.join(30)
    assert "key" in waited, waited
    assert waited["seconds"] < 15

    # A graceful leave hands the session back with the lock the waiter now holds.
    joiner.stop(signal.SIGTERM)
    farm.nodes.remove(joiner)
    farm.wait_converged()
    with Client(nodes=[first.address]) as c:
        assert c.get(moving[0], "v") == moving[0].encode()
        with pytest.raises(MsessionError) as exc:
            c.lock(moving[0], wait=0)
        assert exc.value.code == "LOCKED"
        assert c.unlock(moving[0], waited["key"]) == waited["key"]
        assert c.lock(moving[0], wait=0)


MAX_FRAME = 1024 * 1024


def test_more_than_a_frame_of_sessions_and_a_session_bigger_than_a_frame_move(farms):
    farm = farms(2, "--max-frame", str(MAX_FRAME), prefix="bg")
    names = [n.name for n in farm.nodes] + ["bg3"]
    moving = owned_by(names, "bg3", 60, "bg")
    data = {sid: (sid.encode() * 2000)[:20000] for sid in moving}  # 1.2 MB in all
    big = moving[0]
    big_vars = {f"v{i}": bytes([65 + i % 26]) * 30000 for i in range(60)}  # 1.8 MB in one session
    with Client(nodes=[farm.nodes[0].address]) as c:
        for sid in moving:
            c.setdata(sid, data[sid])
        items = list(big_vars.items())
        for i in range(0, len(items), 20):
            c.set_array(big, dict(items[i:i + 20]))
        joiner = farm.add(name="bg3")
        farm.wait_converged()
        wait_for(lambda: node_info(joiner)["sessions"] == len(moving), 20, "every session to reach the joiner")
        for node in farm.nodes:
            with Client(nodes=[node.address]) as cn:
                assert all(cn.getdata(sid) == data[sid] for sid in moving)
                assert cn.get_array(big) == {k: v for k, v in big_vars.items()}
        assert sum(node_info(n)["sessions"] for n in farm.nodes) == len(moving)


def test_requests_at_the_limits_go_through_any_member(farms):
    farm = farms(2, prefix="fl")
    n1, n2 = farm.nodes
    remote = owned_by([n1.name, n2.name], n2.name, 2, "fl")
    with Client(nodes=[n1.address], timeout=20) as c1:
        c1.create(remote[0])
        # A frame of exactly max_frame, sent to the member that does not own it.
        max_frame = c1.server_info["max_frame"]
        value = b"v" * (max_frame - 200)
        value += b"v" * (max_frame - (len(encode_request(1, Cmd.DATASET, [remote[0].encode(), value])) - 4))
        assert len(encode_request(1, Cmd.DATASET, [remote[0].encode(), value])) - 4 == max_frame
        assert c1._call(Cmd.DATASET, [remote[0].encode(), value], ident) is True
        assert c1.getdata(remote[0]) == value
        # SLOCK's wait as a string, which the node accepts, through a non-owner.
        key = c1._call(Cmd.SLOCK, [remote[1].encode(), b"100"], ident)
        assert type(key) is int and key > 0
        with pytest.raises(MsessionError) as exc:
            c1._call(Cmd.SLOCK, [remote[1].encode(), b"50"], ident)
        assert exc.value.code == "LOCKED"
    log = n1.read_log()
    assert "Traceback" not in log and "internal error" not in log


async def test_a_handoff_looks_each_moving_session_up_once():
    # In process, the other member faked: hand_off takes what it sizes from
    # its sessions() pass and looks a session up again only when it sends it
    # (after awaits); it used to look each up twice before that.
    from cluster.runtime import Cluster
    from conftest import make_config
    from node.server import Server

    config = make_config(name="a", gossip_port=0)
    server = Server(config)
    cluster = Cluster(config, server.node, server.clock)
    store, now = server.node.store, server.clock()
    ring = Ring(["a", "b"])
    sids = [b"s%d" % i for i in range(200)]
    for sid in sids:
        server.node.execute(Cmd.CREATE, [sid, b"", b"x"], now)
    moving = [sid for sid in sids if ring.owner(sid) == "b"]
    sent = []

    async def call(name, cmd, args, timeout, inner=None, alone=False):
        assert (name, cmd) == ("b", Cmd.HANDOFF)
        sent.extend(state[0] for state in args[0])
        return len(args[0])

    looked_up = []
    get = store.get

    def counting_get(sid, now, touch=True):
        looked_up.append(sid)
        return get(sid, now, touch)

    cluster.call = call
    store.get = counting_get
    assert await cluster.hand_off(ring) == len(moving) > 0
    assert sorted(sent) == sorted(moving) and sorted(looked_up) == sorted(moving)
    assert len(store) == len(sids) - len(moving)


async def test_a_locked_session_whose_handoff_fails_keeps_its_lock_here():
    # In process, the other member faked as unreachable: the sessions and
    # their locks (one made here, one that came from elsewhere) are back.
    from cluster.runtime import Cluster
    from conftest import make_config
    from node.commands import CommandError
    from node.server import Server

    config = make_config(name="a", gossip_port=0)
    server = Server(config)
    cluster = Cluster(config, server.node, server.clock)
    node, now = server.node, server.clock()
    ring = Ring(["a", "b"])
    mine, came = [sid for sid in (b"s%d" % i for i in range(200)) if ring.owner(sid) == "b"][:2]
    for sid in (mine, came):
        node.execute(Cmd.CREATE, [sid, b"", b"x"], now)
    key = node.execute(Cmd.SLOCK, [mine, 0, 60000], now)
    assert node.adopt_lock(came, [4242, 60000, 1])
    tried = []

    async def call(name, cmd, args, timeout, inner=None, alone=False):
        tried.extend(state for state in args[0])
        raise CommandError("UNAVAILABLE", "member b could not be reached")

    cluster.call = call
    assert await cluster.hand_off(ring) == 0
    assert sorted(len(state) for state in tried) == [9, 9]  # each went with its lock
    assert len(node.store) == 2
    assert node.locks.holder(mine) == key and node.locks.holder(came) == 4242


def test_lockers_waiting_on_or_through_a_member_that_leaves_wait_on_elsewhere(farms):
    # Two lockers wait through m1, which is SIGTERMed: one for a lock m1
    # holds (it moves to m2 with its session), one for a lock m2 holds (the
    # wait went through m1). Neither gets an error: each is told its SLOCK did
    # not run and asks m2, where it gets the lock once the holder unlocks.
    farm = farms(2, prefix="lw")
    m1, m2 = farm.nodes
    names = [m1.name, m2.name]
    on_m1 = owned_by(names, m1.name, 1, "lw")[0]
    on_m2 = owned_by(names, m2.name, 1, "lw")[0]
    got: dict = {}

    def locker(sid: str) -> None:
        with Client(nodes=[m1.address, m2.address], timeout=30) as c:
            try:
                got[sid] = c.lock(sid, wait=25)
            except MsessionError as exc:
                got[sid] = exc.code

    with Client(nodes=[m2.address]) as holder:
        for sid in (on_m1, on_m2):
            holder.create(sid)  # (a lock moves with its session: an id without one keeps its lock behind)
        keys = {sid: holder.lock(sid, wait=0, lease=60) for sid in (on_m1, on_m2)}
        threads = [threading.Thread(target=locker, args=(sid,)) for sid in (on_m1, on_m2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: node_info(m1)["lock_waiters"] + node_info(m2)["lock_waiters"] == 2, 10,
                     "both lockers to wait")
            assert m1.stop(signal.SIGTERM) == 0  # (within the launcher's 10 s: not killed)
            farm.nodes.remove(m1)
            assert "Traceback" not in m1.read_log(), m1.read_log()
            wait_for(lambda: node_info(m2)["lock_waiters"] == 2, 15, "both lockers to wait on m2")
            assert got == {}
            for sid, key in keys.items():
                assert holder.unlock(sid, key) == key
        finally:
            for t in threads:
                t.join(30)
    assert len(got) == 2 and all(type(v) is int for v in got.values()), got
