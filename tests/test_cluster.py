"""A real farm of three nodes on loopback: every contract function through every
node, on sessions owned by each node; whole-farm commands count each session
once; errors relay unchanged; locks across nodes; bad gossip input.

One module-scoped farm (with the ``stats`` plugin) serves every test here; none
of them kills a node. Destructive tests are in ``test_cluster_failures.py``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
import uuid

import msgpack
import pytest

from cluster import messages as gm
from cluster.ring import ring_for
from procs import Farm, node_info, wait_for
from protocol.client import Client, MsessionError
from protocol.codec import ClientProtocol
from protocol.constants import PROTOCOL_VERSION, Cmd


# -- helpers shared with test_cluster_failures.py --------------------------------


def live_names(farm: Farm) -> list[str]:
    return [n.name for n in farm.nodes if n.proc.poll() is None]


def live_nodes(farm: Farm) -> list:
    return [n for n in farm.nodes if n.proc.poll() is None]


def sids_owned(names: list[str], tag: str, per_owner: int = 1) -> dict[str, list[str]]:
    """``per_owner`` fresh session ids owned by each member of the ring of ``names``."""
    ring = ring_for(names)
    out: dict[str, list[str]] = {n: [] for n in names}
    for i in range(100_000):
        sid = f"{tag}-{uuid.uuid4().hex[:12]}"
        owner = ring.owner(sid.encode())
        if len(out[owner]) < per_owner:
            out[owner].append(sid)
        if all(len(v) >= per_owner for v in out.values()):
            return out
    raise AssertionError("could not find ids for every owner")  # pragma: no cover


def outcome(fn, *args, **kwargs):
    """A call's answer, or ("error", code): comparable across nodes."""
    try:
        return ("ok", fn(*args, **kwargs))
    except MsessionError as exc:
        return ("error", exc.code)


def info_sessions(farm: Farm) -> dict[str, int]:
    out = {}
    for node in live_nodes(farm):
        out[node.name] = node_info(node)["sessions"]
    return out


def contract_run(c: Client, sid: str, other: str) -> list:
    """Every keyed contract function on ``sid`` (fresh) through client ``c``;
    ``other`` is a fresh id that is never created. Answers normalised so that
    the same farm gives the same list through any node."""
    r = []
    r.append(outcome(c.create, sid, "cls", "initial"))
    r.append(outcome(c.create, sid))  # DUPSESSION
    r.append(outcome(c.ctl, sid, "EXIST"))
    r.append(outcome(c.ctl, other, "EXIST"))
    r.append(outcome(c.getdata, sid))
    r.append(outcome(c.set, sid, "a", "1"))
    r.append(outcome(c.get, sid, "a"))
    r.append(outcome(c.get, sid, "missing"))
    r.append(outcome(c.set_array, sid, {"b": "2", "c": "three"}))
    r.append(outcome(c.get_array, sid))
    r.append(outcome(c.setdata, sid, b"\x00blob\xff"))
    r.append(outcome(c.getdata, sid))
    r.append(outcome(c.inc, sid, "n"))
    r.append(outcome(c.inc, sid, "n", 41))
    r.append(outcome(c.inc, sid, "c"))  # NOVALUE: not an integer
    r.append(outcome(c.timeout, sid, 600))
    r.append(outcome(c.timeout, sid))
    ttl = outcome(c.ctl, sid, "TTL")
    r.append(("ok", 590 <= ttl[1] <= 600) if ttl[0] == "ok" else ttl)
    for which in ("AGE", "TLA", "CTIME", "NOW"):
        got = outcome(c.ctl, sid, which)
        r.append((got[0], type(got[1]).__name__))
    touch = outcome(c.ctl, sid, "TOUCH")
    r.append((touch[0], type(touch[1]).__name__))
    key = outcome(c.lock, sid, wait=0, lease=30)
    r.append((key[0], type(key[1]).__name__))
    r.append(outcome(c.lock, sid, wait=0))  # LOCKED
    r.append(outcome(c.unlock, sid, key[1] + 1 if key[0] == "ok" else 1))  # wrong key
    unlocked = outcome(c.unlock, sid, key[1] if key[0] == "ok" else 1)
    r.append((unlocked[0], type(unlocked[1]).__name__))
    r.append(outcome(c.unlock, sid, 12345))  # not locked any more
    r.append(outcome(c.plugin, sid, "size"))
    info = outcome(c.plugin, sid, "info")
    r.append(("ok", json.loads(info[1])["classname"]) if info[0] == "ok" else info)
    r.append(outcome(c.plugin, sid, "no-such-val"))  # NOFN from the owner's plugin
    # Errors on a session that does not exist, from its owner.
    for fn, args in ((c.get, ("a",)), (c.set, ("a", "1")), (c.get_array, ()), (c.getdata, ()),
                     (c.inc, ("n",)), (c.destroy, ()), (c.timeout, ()), (c.lock, ()), (c.plugin, ("size",))):
        kw = {"wait": 0} if fn == c.lock else {}
        got = outcome(fn, other, *args, **kw)
        r.append((fn.__name__, (got[0], type(got[1]).__name__) if fn == c.lock else got))
    # Bad arguments the owner checks (a keyed request is forwarded as is).
    for cmd, args in ((Cmd.GETVAL, [sid.encode()]), (Cmd.INC, [sid.encode(), b"n", b"x"]),
                      (Cmd.TIMEOUT, [sid.encode(), 0]), (Cmd.SLOCK, [sid.encode(), -1]),
                      (Cmd.CTL, [sid.encode(), 99]), (Cmd.SETVAL, [sid.encode(), b"", b"v"])):
        r.append((cmd.name, outcome(c._call, cmd, args, lambda v: v)))
    r.append(outcome(c.get_array, sid))  # nothing above changed it
    return r


# -- the farm ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def farm():
    f = Farm(3, "--plugin", "stats", prefix="c")
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def clients(farm):
    cs = {n.name: Client(nodes=[n.address], timeout=10) for n in farm.nodes}
    try:
        yield cs
    finally:
        for c in cs.values():
            c.close()


# -- 1. every contract function through every node ---------------------------------


def test_every_keyed_function_same_answer_through_every_node(farm, clients):
    names = live_names(farm)
    owned = sids_owned(names, "kf", per_owner=len(names))
    expected = None
    for owner, sids in owned.items():
        answers = {}
        for entry, sid in zip(names, sids):  # a fresh session per (owner, entry node)
            answers[entry] = contract_run(clients[entry], sid, f"{sid}-absent")
        for entry, got in answers.items():
            assert got == answers[owner], f"session owned by {owner}: through {entry} {got} != through the owner {answers[owner]}"
        if expected is None:
            expected = answers[owner]
        assert answers[owner] == expected  # the same whatever node owns it
        # Every node reads every one of these sessions the same way.
        for sid in sids:
            views = {e: clients[e].get_array(sid) for e in names}
            assert len({json.dumps({k: v.hex() for k, v in sorted(x.items())}) for x in views.values()}) == 1, views
    # The answers themselves, once (so the list above is not all errors).
    by = dict(zip(range(len(expected)), expected))
    assert by[0] == ("ok", True) and by[1] == ("error", "DUPSESSION")
    assert by[2] == ("ok", 1) and by[3] == ("ok", 0)
    assert by[6] == ("ok", b"1") and by[7] == ("ok", None)
    assert by[9] == ("ok", {"a": b"1", "b": b"2", "c": b"three"})
    assert by[11] == ("ok", b"\x00blob\xff")
    assert by[12] == ("ok", 1) and by[13] == ("ok", 42) and by[14] == ("error", "NOVALUE")
    assert ("error", "LOCKED") in expected
    assert ("get", ("error", "NOSESSION")) in expected and ("inc", ("error", "NOSESSION")) in expected
    assert ("GETVAL", ("error", "BADARG")) in expected and ("INC", ("error", "BADARG")) in expected
    assert ("error", "NOFN") in expected


def test_destroy_through_every_node(farm, clients):
    names = live_names(farm)
    owned = sids_owned(names, "del", per_owner=len(names))
    for owner, sids in owned.items():
        for entry, sid in zip(names, sids):
            clients[owner].create(sid)
            assert clients[entry].destroy(sid) is True
            for e in names:
                assert clients[e].ctl(sid, "EXIST") == 0
            assert clients[entry].destroy(sid) is True  # as the old daemon: destroying nothing is fine


def test_unkeyed_functions_through_every_node(farm, clients):
    names = live_names(farm)
    statuses = {}
    for name in names:
        c = clients[name]
        assert c.ping() is True
        s = c.randstr(17)
        assert isinstance(s, str) and len(s) == 17
        info = c.info()
        assert isinstance(info["sessions"], int) and info["cluster_members"] == 3
        statuses[name] = c.status()
        assert statuses[name]["name"] == name
        classes = json.loads(c.call("classes"))  # CALL runs on the node asked
        assert isinstance(classes, dict)
        assert set(json.loads(c.call("stats"))) >= {"created", "live"}
        assert outcome(c.call, "no_such_function") == ("error", "NOFN")
        assert outcome(c.randstr, 0) == ("error", "BADARG")
    rings = {s["ring"] for s in statuses.values()}
    assert len(rings) == 1, statuses
    for s in statuses.values():
        assert {m["name"]: m["state"] for m in s["members"]} == dict.fromkeys(names, "alive")
        assert sum(m["partitions"] for m in s["members"]) == s["partitions"]


def test_whole_farm_commands_count_each_session_once(farm, clients):
    names = live_names(farm)
    tag = uuid.uuid4().hex[:8]
    owned = sids_owned(names, f"wf{tag}", per_owner=7)
    mine = [sid for sids in owned.values() for sid in sids]
    for i, sid in enumerate(mine):  # created through a node that is not always the owner
        c = clients[names[i % len(names)]]
        c.create(sid)
        c.set(sid, f"tag{tag}", "yes" if i % 2 == 0 else "no")
    with_yes = {sid for i, sid in enumerate(mine) if i % 2 == 0}
    counts, lists = {}, {}
    for name in names:
        c = clients[name]
        counts[name] = c.count()
        lists[name] = c.list()
        assert set(c.find(f"tag{tag}", "yes")) == with_yes
        assert len(c.find(f"tag{tag}", "yes")) == len(with_yes)
        lv = c.listvar(f"tag{tag}")
        assert lv == {sid: (b"yes" if sid in with_yes else b"no") for sid in mine}
        assert c.find(f"tag{tag}", "nobody") == []
    local = info_sessions(farm)
    assert len(set(counts.values())) == 1, counts
    total = counts[names[0]]
    assert sum(local.values()) == total, (local, counts)  # each session lives on one node
    for name in names:
        assert len(lists[name]) == len(set(lists[name])) == total, name
        assert set(lists[name]) == set(lists[names[0]])
        assert set(mine) <= set(lists[name])
    # Every member holds the sessions the ring gives it.
    ring = ring_for(names)
    for sid in mine:
        assert ring.owner(sid.encode()) in names


def test_uniq_is_unique_across_the_farm(farm, clients):
    names = live_names(farm)
    before = clients[names[0]].count()
    ids: list[str] = []
    for name in names:
        with clients[name].pipeline() as p:
            for _ in range(100):
                p.uniq(12, "u", "d")
            ids += p.execute()
    assert len(ids) == 300 and len(set(ids)) == 300
    ring = ring_for(names)
    owners = {n: 0 for n in names}
    for sid in ids:
        owners[ring.owner(sid.encode())] += 1
    assert all(v > 0 for v in owners.values()), owners
    rnd = random.Random(3)
    for sid in rnd.sample(ids, 60):
        assert clients[rnd.choice(names)].ctl(sid, "EXIST") == 1
        assert clients[rnd.choice(names)].getdata(sid) == b"d"
    after = {n: clients[n].count() for n in names}
    assert set(after.values()) == {before + 300}, (before, after)
    assert sum(info_sessions(farm).values()) == before + 300


def test_uniq_with_arguments_the_node_converts_creates_at_the_owner(farm, clients):
    # num_chars as bytes or a whole float is accepted by the node's checks; the
    # farm used to take such a UNIQ for "bad arguments" and create the id where
    # it arrived, whoever owned it.
    names = live_names(farm)
    entry = clients[names[0]]
    before = info_sessions(farm)
    ids = [entry._call(Cmd.UNIQ, [length], bytes) for length in [b"12"] * 6 + [12.0] * 6]
    assert all(len(sid) == 12 for sid in ids)
    ring = ring_for(names)
    owned = {n: sum(ring.owner(sid) == n for sid in ids) for n in names}
    after = info_sessions(farm)
    assert {n: after[n] - before[n] for n in names} == owned  # each member holds the ids it owns
    for sid in ids:
        assert clients[names[1]].ctl(sid, "EXIST") == 1


# -- 2. locks across nodes ------------------------------------------------------------


def _in_thread(fn, *args, **kwargs):
    box: dict = {}

    def run():
        box["started"] = time.monotonic()
        box["result"] = outcome(fn, *args, **kwargs)
        box["done"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_forwarded_lock_waits_and_is_granted_on_unlock_through_a_third_node(farm):
    a, b, c = live_nodes(farm)
    sid = sids_owned(live_names(farm), "lk")[c.name][0]  # owned by c: a and b forward
    with Client(nodes=[a.address]) as ca, Client(nodes=[b.address]) as cb, Client(nodes=[c.address]) as cc:
        ca.create(sid)
        key = ca.lock(sid, wait=0, lease=30)
        t, box = _in_thread(cb.lock, sid, wait=10)
        wait_for(lambda: cc.info()["lock_waiters"] == 1, 5, f"the second locker waiting at the owner ({box})")
        assert t.is_alive(), f"second locker did not wait: {box}"
        unlocked = time.monotonic()
        assert cc.unlock(sid, key) is not None
        t.join(5)
        assert not t.is_alive()
        kind, key2 = box["result"]
        assert kind == "ok" and isinstance(key2, int) and key2 != key, box
        # Granted on the unlock, not at the end of the 10 s wait or the 30 s lease
        # (5 s leaves room for a loaded machine; speed is measured in bench/).
        assert box["done"] - unlocked < 5.0, f"granted {box['done'] - unlocked:.3f} s after the unlock"
        assert outcome(ca.lock, sid, wait=0) == ("error", "LOCKED")
        assert outcome(cc.unlock, sid, key)[0] == "error"  # the old key is spent
        cb.unlock(sid, key2)
        assert ca.lock(sid, wait=0) is not None


def test_lock_lease_expires_across_nodes(farm):
    a, b, c = live_nodes(farm)
    sid = sids_owned(live_names(farm), "lease")[a.name][0]
    with Client(nodes=[b.address]) as cb, Client(nodes=[c.address]) as cc:
        cb.create(sid)
        locked = time.monotonic()
        cb.lock(sid, wait=0, lease=1.0)  # forwarded to a, never unlocked
        key = cc.lock(sid, wait=5)  # forwarded too: granted when the lease ends
        took = time.monotonic() - locked
        assert isinstance(key, int)
        assert 0.8 <= took <= 2.5, f"granted {took:.3f} s after a 1 s lease"


def _raw_lock(address: str, sid: str, wait_ms: int) -> socket.socket:
    """Sends HELLO and a waiting SLOCK on a plain socket; the caller closes it."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    proto = ClientProtocol(1 << 20)
    _, hello = proto.request(Cmd.HELLO, [PROTOCOL_VERSION])
    _, lock = proto.request(Cmd.SLOCK, [sid.encode(), wait_ms])
    sock.sendall(hello + lock)
    return sock


def test_waiter_on_a_forwarded_lock_that_disconnects_does_not_keep_it(farm):
    a, b, c = live_nodes(farm)
    sid = sids_owned(live_names(farm), "gone")[a.name][0]
    with Client(nodes=[a.address]) as ca, Client(nodes=[c.address]) as cc:
        ca.create(sid)
        def waiters(n):  # lock requests queued at a, the owner
            return lambda: ca.info()["lock_waiters"] == n

        key = ca.lock(sid, wait=0, lease=30)
        with _raw_lock(b.address, sid, 20_000):  # the first waiter, at a through b
            wait_for(waiters(1), 5, "the first waiter queued at the owner")
            t, box = _in_thread(cc.lock, sid, wait=10)  # the next waiter, through c
            wait_for(waiters(2), 5, "the second waiter queued behind it")
        # The first waiter has gone away while its lock is forwarded.
        wait_for(waiters(1), 5, "the owner dropped the waiter that left")
        unlocked = time.monotonic()
        ca.unlock(sid, key)
        t.join(5)
        assert not t.is_alive(), "the second waiter never got the lock"
        assert box["result"][0] == "ok", box
        assert box["done"] - unlocked < 5.0, f"the next waiter got it {box['done'] - unlocked:.3f} s after the unlock"
        cc.unlock(sid, box["result"][1])

        # The same with no other waiter: a fresh lock gets it at once.
        key = ca.lock(sid, wait=0, lease=30)
        with _raw_lock(b.address, sid, 20_000):
            wait_for(waiters(1), 5, "the waiter queued at the owner")
        wait_for(waiters(0), 5, "the owner dropped the waiter that left")
        ca.unlock(sid, key)
        started = time.monotonic()
        with Client(nodes=[b.address]) as cb:
            key = cb.lock(sid, wait=3)
        assert time.monotonic() - started < 3.0  # at once, not after the 20 s wait of the waiter that left
        ca.unlock(sid, key)


# -- 7. bad input for gossip and for inter-node commands ---------------------------------


def _gossip_counters(node) -> dict[str, int]:
    with Client(nodes=[node.address], timeout=5) as c:
        return {k: v for k, v in c.info().items() if k.startswith("gossip_")}


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def _wait_counted(node, before: dict[str, int], what: str, timeout: float = 5.0, **at_least: int) -> dict[str, int]:
    """Until each named gossip counter of ``node`` has grown by at least the
    given amount since ``before``; the counters then."""
    def grown():
        after = _gossip_counters(node)
        return after if all(after[k] - before[k] >= n for k, n in at_least.items()) else None
    try:
        return wait_for(grown, timeout, what)
    except AssertionError:
        raise AssertionError(f"{what}: wanted growth {at_least}, got {_diff(before, _gossip_counters(node))}") from None


def _udp_addr(node) -> tuple[str, int]:
    host, port = node.gossip_address.rsplit(":", 1)
    return host, int(port)


def test_bad_udp_gossip_is_dropped_and_counted(farm):
    target = live_nodes(farm)[0]
    others = [n for n in live_nodes(farm) if n is not target]
    before = _gossip_counters(target)
    addr = _udp_addr(target)
    rnd = random.Random(7)
    real_ping = msgpack.packb([gm.VERSION, gm.PING, others[0].name, 12345, 7, target.name, None, []])
    bad = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(100):  # random bytes
            s.sendto(rnd.randbytes(rnd.randint(1, 300)), addr)
            bad += 1
        for cut in range(1, len(real_ping)):  # truncated msgpack
            s.sendto(real_ping[:cut], addr)
            bad += 1
        for body in ([99, gm.PING, "x", 1, 1, target.name, None, []],  # another version
                     [gm.VERSION, 42, "x", 1],  # an unknown kind
                     [gm.VERSION, gm.PING, "x" * 500, 1, 1, target.name, None, []],  # name too long
                     [gm.VERSION, gm.PING, "x", -1, 1, target.name, None, []],
                     [gm.VERSION, gm.ACK, "x", 1, 2**40, []],
                     {"not": "an array"}, None, 5):
            s.sendto(msgpack.packb(body), addr)
            bad += 1
        s.sendto(real_ping + b"\x00", addr)  # trailing bytes
        bad += 1
        for size in (1401, 9000, 65000):  # oversized datagrams
            s.sendto(b"\x95" + os.urandom(size - 1), addr)
        # Real-looking packets from a stranger: the name of a member, not its address.
        dead_news = [gm.DEAD, others[1].name, 10**6, 1, "127.0.0.1", 1, None, others[0].name]
        suspect_news = [gm.SUSPECT, others[1].name, 10**6, 1, "127.0.0.1", 1, None, others[0].name]
        for kind_fields in ([gm.VERSION, gm.GOSSIP, others[0].name, 1, [dead_news, suspect_news]],
                            [gm.VERSION, gm.ACK, others[0].name, 1, 1, []],
                            [gm.VERSION, gm.NACK, others[0].name, 1, 1, []]):
            for _ in range(3):  # and replayed
                s.sendto(msgpack.packb(kind_fields), addr)
        # A different address claiming a live member's name (alive, higher incarnation).
        impostor = [gm.ALIVE, others[1].name, 10**6, 99, "127.0.0.1", 9, {"host": "127.0.0.1", "port": 9}, None]
        for _ in range(3):
            s.sendto(msgpack.packb([gm.VERSION, gm.GOSSIP, "stranger", 1, [impostor]]), addr)
    # The node keeps serving and counted every drop.
    after = _wait_counted(target, before, "every drop counted", gossip_bad_packets=bad, gossip_oversize=3,
                          gossip_unknown_sender=1)
    assert after["gossip_internal_errors"] == before["gossip_internal_errors"], _diff(before, after)
    assert "dropped a bad packet" in target.read_log()
    _farm_intact(farm)


def _farm_intact(farm) -> None:
    farm.wait_converged(timeout=10)
    names = live_names(farm)
    gossip = {n.name: n.gossip_address for n in live_nodes(farm)}
    for node in live_nodes(farm):
        st = farm.status(node)
        for m in st["members"]:
            assert m["state"] == "alive", st
            assert m["gossip"] == gossip[m["name"]], f"{node.name} moved {m['name']}: {st}"
        with Client(nodes=[node.address], timeout=5) as c:
            assert c.ping()
    sid = sids_owned(names, "intact")[names[-1]][0]
    with Client(nodes=[farm.nodes[0].address]) as c:
        c.create(sid)
        c.set(sid, "k", "v")
    for node in live_nodes(farm):
        with Client(nodes=[node.address]) as c:
            assert c.get(sid, "k") == b"v"
    for node in live_nodes(farm):
        assert "Traceback" not in node.read_log(), node.read_log()[-2000:]


def _tcp_send(addr, data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=8) as s:
        if data:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_bad_push_pull_streams_are_dropped_and_counted(farm):
    target = live_nodes(farm)[1]
    addr = _udp_addr(target)  # TCP on the same port
    before = _gossip_counters(target)
    garbage = os.urandom(200)
    bad_bodies = [garbage, msgpack.packb([gm.VERSION, gm.PUSH_PULL, "x", 1]),
                  msgpack.packb([gm.VERSION, gm.PUSH_PULL, "x", 1, True, [[9, "y"]]]),
                  msgpack.packb([gm.VERSION, gm.PING, "x", 1, 1, "y", None, []])]
    for body in bad_bodies:  # a well-framed message that is not a valid push-pull
        assert _tcp_send(addr, struct.pack(">I", len(body)) + body) in (b"", b"\0\0\0\0")
    _tcp_send(addr, b"\x00\x00")  # half a length
    _tcp_send(addr, struct.pack(">I", 1000) + b"x" * 10)  # a truncated frame
    _tcp_send(addr, struct.pack(">I", 2**31) + b"x" * 100)  # an oversized frame header
    _tcp_send(addr, b"")
    after = _wait_counted(target, before, "every bad stream counted", gossip_bad_packets=len(bad_bodies))
    assert after["gossip_internal_errors"] == before["gossip_internal_errors"], _diff(before, after)
    _farm_intact(farm)


def test_oversized_push_pull_frame_is_counted(farm):
    """The issue: oversized inter-node messages are dropped *with a counter*. A
    push-pull whose length prefix is over max_stream is refused while reading
    (cluster/runtime.py _read_frame raises ValueError), before
    Membership.stream_request could count it as ``oversize``."""
    target = live_nodes(farm)[2]
    addr = _udp_addr(target)
    before = _gossip_counters(target)
    _tcp_send(addr, struct.pack(">I", 2**31) + b"x" * 100)
    _wait_counted(target, before, "the oversized frame counted", timeout=1.5, gossip_oversize=1)


def test_inter_node_commands_from_a_client_in_a_real_farm(farm):
    """test_bad_input.py checks these on a farm of one; here the request names
    sessions owned by other members, so the checks run after routing."""
    names = live_names(farm)
    a = live_nodes(farm)[0]
    owned = sids_owned(names, "fwd")
    remote = owned[names[1]][0].encode()
    with Client(nodes=[a.address]) as c:
        c.create(remote.decode())
        c.set(remote.decode(), "k", "v")
        call = lambda cmd, args: outcome(c._call, cmd, args, lambda v: v)  # noqa: E731
        # A client's FWD is routed like any request: it reaches the owner.
        assert call(Cmd.FWD, [0, Cmd.GETVAL, [remote, b"k"]]) == ("ok", b"v")
        # Bad inner arguments: BADARG from the owner, relayed.
        assert call(Cmd.FWD, [0, Cmd.GETVAL, [remote]]) == ("error", "BADARG")
        assert call(Cmd.FWD, [0, Cmd.INC, [remote, b"k", 1.5]]) == ("error", "BADARG")
        # Passed on too often: refused rather than served by a non-owner.
        assert call(Cmd.FWD, [5, Cmd.GETVAL, [remote, b"k"]]) == ("error", "BUSY")
        assert call(Cmd.FWD, [2**62, Cmd.SETVAL, [remote, b"k", b"w"]]) == ("error", "BUSY")
        # A FWD inside a FWD, and commands that are not requests.
        assert call(Cmd.FWD, [0, Cmd.FWD, [0, Cmd.GETVAL, [remote, b"k"]]])[0] == "error"
        assert call(Cmd.FWD, [0, 99999, []])[0] == "error"
        # HANDOFF with malformed states on a member of a real farm.
        for bad in ([[[remote, b"", b"", 1, [[b"n", 1, 1]], 1.0, 1.0, 60]]],
                    [[[remote, b"", b"", 1, [], b"t", 1.0, 60]]], [[[remote, None]]], [[None]]):
            assert call(Cmd.HANDOFF, bad) == ("error", "BADARG"), bad
        # TAKE with bad arguments; TAKE of a session the asked member does not hold.
        for bad in ([], [remote, remote], [None], [7]):
            assert call(Cmd.TAKE, bad) == ("error", "BADARG"), bad
        assert call(Cmd.TAKE, [b"never-" + uuid.uuid4().hex.encode()]) == ("ok", None)
        assert c.get(remote.decode(), "k") == b"v"  # nothing changed it
    _farm_intact(farm)
