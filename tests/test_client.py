"""Every contract function through Client (against a real process) and AsyncClient."""

import os
import socket
import uuid

import pytest
import trio

from conftest import start_server
from protocol.client import AsyncClient, Client, MsessionError, parse_node
from procs import NodeProcess, wait_for, wait_until


def sid():
    return "t-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def client(shared_node_process):
    with Client(port=shared_node_process.port) as c:
        yield c


def err(fn, *args, **kw):
    with pytest.raises(MsessionError) as exc:
        fn(*args, **kw)
    return exc.value.code


def test_create_set_get_destroy(client):
    s = sid()
    assert client.create(s) is True
    assert err(client.create, s) == "DUPSESSION"
    assert client.set(s, "user", "alice") is True
    assert client.get(s, "user") == b"alice"
    assert client.get(s, "absent") is None
    assert client.get(s, "absent", "dflt") == "dflt"
    assert client.destroy(s) is True
    assert client.destroy(s) is True
    assert err(client.get, s, "user") == "NOSESSION"
    assert err(client.set, s, "user", "x") == "NOSESSION"


def test_create_with_classname_and_data(client):
    s = sid()
    client.create(s, "cart", b"payload")
    assert client.getdata(s) == b"payload"
    assert client.ctl(s, "EXIST") == 1


def test_arrays(client):
    s = sid()
    client.create(s)
    assert client.get_array(s) == {}
    assert client.set_array(s, {"a": "1", "b": b"\x00\xff"}) is None
    assert client.get_array(s) == {"a": b"1", "b": b"\x00\xff"}
    assert err(client.get_array, sid()) == "NOSESSION"


def test_data_is_binary_safe_and_setdata_creates(client):
    s = sid()
    blob = bytes(range(256)) * 64
    assert client.setdata(s, blob) is True
    assert client.getdata(s) == blob
    assert err(client.getdata, sid()) == "NOSESSION"


def test_binary_ids_and_names_round_trip(client):
    s = b"\xff\x00bin-" + uuid.uuid4().bytes
    client.create(s)
    client.set(s, b"n\x00\xfe", b"v\x00")
    assert client.get(s, b"n\x00\xfe") == b"v\x00"
    listed = [x for x in client.list() if x.encode("utf-8", "surrogateescape") == s]
    assert len(listed) == 1
    assert client.get_array(listed[0]) == {"n\x00\udcfe": b"v\x00"}


def test_inc(client):
    s = sid()
    client.create(s)
    assert client.inc(s, "n") == 1
    assert client.inc(s, "n") == 2
    assert client.inc(s, "n", -5) == -3
    client.set(s, "t", "x")
    assert err(client.inc, s, "t") == "NOVALUE"
    assert err(client.inc, sid(), "n") == "NOSESSION"


def test_find_list_listvar_count(client):
    tag = uuid.uuid4().hex
    a, b, c = sid(), sid(), sid()
    for s in (a, b, c):
        client.create(s)
    client.set(a, "tag", tag)
    client.set(b, "tag", tag)
    client.set(c, "tag", "other")
    assert sorted(client.find("tag", tag)) == sorted([a, b])
    assert {a, b, c} <= set(client.list())
    lv = client.listvar("tag")
    assert lv[a] == tag.encode() and lv[c] == b"other"
    before = client.count()
    client.destroy(c)
    assert client.count() == before - 1


def test_timeout_and_ctl(client):
    s = sid()
    client.create(s)
    assert client.timeout(s) == 1440
    assert client.timeout(s, 60) == 60
    assert client.timeout(s) == 60
    assert 58 <= client.ctl(s, "TTL") <= 60
    assert client.ctl(s, "EXIST") == 1
    assert client.ctl(sid(), "EXIST") == 0
    assert client.ctl(s) == 1
    assert 0 <= client.ctl(s, "AGE") <= 2
    now = client.ctl(s, "NOW")
    assert abs(now - __import__("time").time()) < 5
    assert abs(client.ctl(s, "CTIME") - now) <= 2
    assert abs(client.ctl(s, "TLA") - now) <= 2
    assert abs(client.ctl(s, "TOUCH") - now) <= 2
    assert err(client.ctl, sid(), "TTL") == "NOSESSION"
    assert err(client.timeout, s, 0) == "BADARG"
    assert err(client.timeout, sid()) == "NOSESSION"


def test_uniq_and_randstr(client):
    ids = {client.uniq(32) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 32 for i in ids)
    s = client.uniq(40, "cls", b"data")
    assert client.getdata(s) == b"data"
    assert client.ctl(s, "EXIST") == 1
    r = client.randstr(100)
    assert len(r) == 100 and r.isalnum()
    assert err(client.randstr, 0) == "BADARG"
    assert err(client.uniq, -1) == "BADARG"


def test_lock_unlock(client):
    s = sid()
    key = client.lock(s)
    assert key > 0
    assert err(client.lock, s, wait=0) == "LOCKED"
    assert err(client.unlock, s, key + 1) == "LOCKED"
    assert err(client.lock, s, wait=0) == "LOCKED"  # still held
    assert client.unlock(s, key) == key
    assert err(client.unlock, s, key) == "NOWLOCK"
    key2 = client.lock(s, wait=0, lease=5)
    assert key2 > 0 and key2 != key
    client.unlock(s, key2)


def test_plugin_and_call_without_plugins(client):
    s = sid()
    client.create(s)
    assert err(client.plugin, s, "info") == "NOFN"
    assert err(client.plugin, sid(), "info") == "NOSESSION"
    assert err(client.call, "nothing") == "NOFN"


def test_ping(client):
    assert client.ping() is True
    assert client.server_info["version"] == 1


def test_pipeline_is_one_round_trip_and_answers_in_order(client):
    s = sid()
    client.create(s)
    with client.pipeline() as p:
        for _ in range(100):
            p.inc(s, "n")
        p.get(s, "n")
        p.get(sid(), "n")
        results = p.execute(raise_on_error=False)
    assert results[:100] == list(range(1, 101))
    assert results[100] == b"100"
    assert isinstance(results[101], MsessionError) and results[101].code == "NOSESSION"


def test_failover_to_the_next_node(shared_node_process):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    with Client(nodes=[f"127.0.0.1:{dead_port}", shared_node_process.address], connect_timeout=1) as c:
        assert c.ping() is True
        assert c.node == ("127.0.0.1", shared_node_process.port)


def test_no_node_answers():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    with Client(port=port, connect_timeout=1) as c:
        assert err(c.ping) == "NOCONNECT"


def test_failover_when_a_node_dies_between_requests():
    a, b = NodeProcess(), NodeProcess()
    try:
        with Client(nodes=[a.address, b.address]) as c:
            assert c.ping() and c.node[1] == a.port
            a.stop()
            assert c.count() == 0  # idempotent: retried on b
            assert c.node[1] == b.port
    finally:
        a.stop()
        b.stop()


def test_non_idempotent_request_is_not_replayed_on_failure():
    """A lock request in flight when its node dies may have been granted: the
    client says BADCONN rather than asking the next node."""
    import signal
    import threading

    a, b = NodeProcess(), NodeProcess()
    try:
        with Client(port=a.port) as holder, Client(nodes=[a.address, b.address]) as c:
            holder.lock("s")
            outcome = {}

            def lock():
                try:
                    outcome["key"] = c.lock("s", wait=30)
                except MsessionError as exc:
                    outcome["error"] = exc.code

            t = threading.Thread(target=lock)
            t.start()
            wait_for(lambda: holder.info()["lock_waiters"] == 1, 5, "the lock request waiting at a")
            assert c.node[1] == a.port
            a.stop(signal.SIGKILL)
            t.join(10)
            assert outcome == {"error": "BADCONN"}
            assert c.create("s") is True  # the next call goes to b
            assert c.node[1] == b.port
    finally:
        a.stop()
        b.stop()


def test_a_connection_the_node_closed_while_idle_is_replaced_transparently():
    """The node closes idle connections; the next request, even one that must
    not be replayed, goes out on a fresh connection instead of failing."""
    node = NodeProcess(env={"MSESSION_IDLE_TIMEOUT": "0.3"})
    try:
        with Client(port=node.port) as c:
            c.create("s")
            first = c._conn
            wait_for(first.stale, 5, "the node closing the idle connection")
            assert c.inc("s", "n") == 1
            assert c._conn is not first
    finally:
        node.stop()


def test_busy_node_fails_over_to_the_next():
    busy, good = NodeProcess("--max-connections", "1"), NodeProcess()
    try:
        with Client(port=busy.port) as hog:
            hog.ping()
            with Client(nodes=[busy.address, good.address]) as c:
                assert c.ping() is True
                assert c.node[1] == good.port
            with Client(port=busy.port) as c:
                assert err(c.ping) == "NOCONNECT"
    finally:
        busy.stop()
        good.stop()


def test_large_pipelines_and_answers(client):
    s = sid()
    client.create(s)
    blob = b"z" * 100_000
    with client.pipeline() as p:
        for _ in range(200):  # ~20 MB each way: more than any socket buffer
            p.setdata(s, blob)
            p.getdata(s)
        results = p.execute()
    assert results[1::2] == [blob] * 200
    client.set(s, "a", b"x" * 3_000_000)
    client.set(s, "b", b"y" * 3_000_000)
    assert len(client.get_array(s)["b"]) == 3_000_000  # a 6 MB answer


def test_oversize_request_is_refused_before_sending(client):
    s = sid()
    client.create(s)
    assert err(client.setdata, s, b"x" * (5 * 1024 * 1024)) == "BADLEN"
    assert client.ping() is True  # the connection is still good


def test_parse_node():
    assert parse_node("h") == ("h", 8086)
    assert parse_node("h:1") == ("h", 1)
    assert parse_node("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError):
        parse_node("h:x")


def test_sigterm_shuts_down_cleanly():
    node = NodeProcess()
    with Client(port=node.port) as c:
        c.create("s")
    assert node.stop() == 0
    assert "shutting down" in node.read_log()


# -- AsyncClient ---------------------------------------------------------------


async def test_async_client_serves_the_whole_contract(nursery):
    server = await start_server(nursery)
    host, port = server.ports[0]
    async with AsyncClient(host, port) as c:
        assert await c.ping() is True
        s = await c.uniq(32, "cls")
        assert await c.set(s, "a", "1") is True
        await c.set_array(s, {"b": b"\x00", "c": "3"})
        assert await c.get(s, "a") == b"1"
        assert await c.get(s, "zz", b"d") == b"d"
        assert await c.get_array(s) == {"a": b"1", "b": b"\x00", "c": b"3"}
        assert await c.inc(s, "a") == 2
        assert await c.find("c", "3") == [s]
        assert await c.listvar("b") == {s: b"\x00"}
        assert await c.list() == [s]
        assert await c.count() == 1
        assert await c.setdata(s, b"blob") is True
        assert await c.getdata(s) == b"blob"
        assert await c.timeout(s, 99) == 99
        assert await c.ctl(s, "TTL") in (98, 99)
        key = await c.lock(s)
        assert await c.unlock(s, key) == key
        assert len(await c.randstr(7)) == 7
        with pytest.raises(MsessionError) as exc:
            await c.call("nope")
        assert exc.value.code == "NOFN"
        with pytest.raises(MsessionError) as exc:
            await c.plugin(s, "x")
        assert exc.value.code == "NOFN"
        assert await c.destroy(s) is True
        with pytest.raises(MsessionError) as exc:
            await c.create(s) and await c.create(s)
        assert exc.value.code == "DUPSESSION"


async def test_async_client_tasks_share_one_pipelined_connection(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("s")

        async def worker():
            for _ in range(50):
                await c.inc("s", "n")

        async with trio.open_nursery() as workers:
            for _ in range(20):
                workers.start_soon(worker)
        assert await c.get("s", "n") == b"1000"
        assert server.counters.connections_total == 1
        p = c.pipeline()
        p.get("s", "n")
        p.count()
        assert await p.execute() == [b"1000", 1]


async def test_lock_waiters_are_served_in_fifo_order(nursery):
    server = await start_server(nursery)
    order = []
    async with AsyncClient(*server.ports[0]) as holder:
        key = await holder.lock("s")

        async def waiter(i, task_status=trio.TASK_STATUS_IGNORED):
            async with AsyncClient(*server.ports[0]) as c:
                await c.ping()
                task_status.started()
                k = await c.lock("s", wait=10)
                order.append(i)
                await c.unlock("s", k)

        async with trio.open_nursery() as n:
            for i in range(5):
                await n.start(waiter, i)
                await wait_until(lambda: len(server.node.locks._locks[b"s"].waiters) == i + 1)  # queued
            await holder.unlock("s", key)
    assert order == [0, 1, 2, 3, 4]


async def test_lock_wait_times_out_with_locked(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as a, AsyncClient(*server.ports[0]) as b:
        await a.lock("s")
        with pytest.raises(MsessionError) as exc:
            await b.lock("s", wait=0.05)
        assert exc.value.code == "LOCKED"
        assert not server.node.locks._locks[b"s"].waiters


async def test_lease_frees_the_lock_of_a_crashed_holder(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as a, AsyncClient(*server.ports[0]) as b:
        await a.lock("s", lease=0.2)
        with trio.fail_after(5):
            key = await b.lock("s", wait=5)
        assert key > 0
        assert server.node.locks.lease_expiries == 1


async def test_a_waiter_that_disconnects_hands_the_lock_on(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as a:
        key = await a.lock("s")
        stream = await trio.open_tcp_stream(*server.ports[0])
        from protocol.codec import encode_request
        from protocol.constants import Cmd

        await stream.send_all(encode_request(1, Cmd.SLOCK, [b"s", 10000]))
        await wait_until(lambda: server.node.locks._locks[b"s"].waiters)
        await stream.aclose()
        await wait_until(lambda: not server.node.locks._locks[b"s"].waiters)
        await a.unlock("s", key)
        assert server.node.locks.holder(b"s") == 0  # not granted to the departed client
        assert await a.lock("s", wait=0) > 0


async def test_async_failover(nursery):
    server = await start_server(nursery)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    async with AsyncClient(nodes=[f"127.0.0.1:{port}", "%s:%d" % server.ports[0]], connect_timeout=1) as c:
        assert await c.ping() is True


async def test_a_cancelled_lock_wait_does_not_keep_the_lock(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as a, AsyncClient(*server.ports[0]) as b:
        key = await a.lock("s")
        with trio.move_on_after(0.2):
            await b.lock("s", wait=10, lease=20)
        await a.unlock("s", key)
        await wait_until(lambda: server.node.locks.holder(b"s") == 0)
        assert await b.lock("s", wait=0) > 0


async def test_a_waiting_lock_does_not_hold_back_other_tasks(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as holder, AsyncClient(*server.ports[0], timeout=1) as c:
        key = await holder.lock("s")
        await c.create("t")
        got = []

        async def locker():
            got.append(await c.lock("s", wait=5))

        async with trio.open_nursery() as n:
            n.start_soon(locker)
            for _ in range(20):  # the same client keeps working while its lock waits
                assert await c.inc("t", "n") > 0
            await holder.unlock("s", key)
        assert got and got[0] > 0
        await c.unlock("s", got[0])


async def test_async_large_pipeline_does_not_deadlock(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("s")
        blob = b"q" * 100_000
        p = c.pipeline()
        for _ in range(150):
            p.setdata("s", blob)
            p.getdata("s")
        with trio.fail_after(20):
            results = await p.execute()
        assert results[1::2] == [blob] * 150


async def test_info_reports_the_nodes_counters(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("a")
        await c.lock("a", wait=0)
        with pytest.raises(MsessionError):
            await c.create("a")
        info = await c.info()
    assert info["sessions"] == 1 and info["locks"] == 1 and info["lock_waiters"] == 0
    assert info["connections"] == 1 and info["connections_total"] == 1
    assert info["commands"] >= 4 and info["command_errors"] == 1
    assert info["server"] == "msession" and info["uptime"] >= 0


async def test_async_client_survives_the_node_closing_idle_connections(nursery):
    server = await start_server(nursery, idle_timeout=0.2)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("s")
        conn = c._conn
        await wait_until(conn.stale)
        assert await c.inc("s", "n") == 1  # not executed before: sent again, once
        p = c.pipeline()
        for _ in range(3):
            p.setdata("s", b"d" * 40_000)  # > 64 KiB: the concurrent-send path
        await wait_until(c._conn.stale)
        assert await p.execute() == [True] * 3
        assert await c.get("s", "n") == b"1"


async def test_cancelling_a_big_pipeline_leaves_other_tasks_alone(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("s")
        counts = {"ok": 0, "cancelled": 0}

        async def incs():
            for _ in range(200):
                await c.inc("s", "n")
                counts["ok"] += 1

        async with trio.open_nursery() as n:
            n.start_soon(incs)
            for i in range(400):  # bounded: until a few pipelines were really cancelled
                p = c.pipeline()
                for _ in range(4):
                    p.getdata("s")
                    p.setdata("s", b"e" * 30_000)
                with trio.move_on_after(0.0002 * (1 + i % 10)) as cs:  # cut at varying points
                    await p.execute()
                counts["cancelled"] += cs.cancelled_caught
                if i >= 19 and counts["cancelled"] >= 3:
                    break
        assert counts["cancelled"] >= 3, "the case under test: pipelines cancelled mid-way"
        assert counts["ok"] == 200
        assert await c.get("s", "n") == b"200"


async def test_a_pipeline_with_a_waiting_lock_does_not_block_other_tasks(nursery):
    server = await start_server(nursery)
    async with AsyncClient(*server.ports[0]) as holder, AsyncClient(*server.ports[0], timeout=2) as c:
        key = await holder.lock("L")
        results = []

        async def batch():
            p = c.pipeline()
            p.ping()
            p.lock("L", wait=5)
            results.extend(await p.execute())

        async with trio.open_nursery() as n:
            n.start_soon(batch)
            await wait_until(lambda: server.node.locks._locks[b"L"].waiters)  # the batch's lock waits
            for _ in range(10):
                assert await c.ping() is True
            await holder.unlock("L", key)
        assert results[0] is True and results[1] > 0


async def test_answers_flushed_before_a_lock_wait_are_under_the_idle_deadline(nursery, monkeypatch):
    """A client that queues a lock behind answers it never reads is dropped
    after idle_timeout, and the lock does not go to it."""
    import node.server

    monkeypatch.setattr(node.server, "SEND_THRESHOLD", 10**9)  # all answers flush before the wait
    server = await start_server(nursery, idle_timeout=0.5)
    addr = server.ports[0]
    async with AsyncClient(*addr) as holder:
        await holder.setdata("s", b"v" * 3_000_000)
        key = await holder.lock("L", wait=0)
        baseline = server.connections
        from protocol.codec import encode_request
        from protocol.constants import Cmd

        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(addr)
            gets = b"".join(encode_request(i, Cmd.DATAGET, [b"s"]) for i in range(3))  # 9 MB unread
            sock.sendall(gets + encode_request(9, Cmd.SLOCK, [b"L", 10000]))
            await wait_until(lambda: server.node.locks._locks[b"L"].waiters)  # queued, flushing
            await wait_until(lambda: server.connections == baseline)  # dropped by the idle deadline
            assert not server.node.locks._locks[b"L"].waiters
            await holder.unlock("L", key)
            assert server.node.locks.holder(b"L") == 0


def test_stale_check_works_for_descriptors_above_1024(shared_node_process):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("cannot open more than 1024 files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    fillers = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        with Client(port=shared_node_process.port) as c:
            assert c.ping() and c._conn.sock.fileno() > 1024
            assert c.ping()  # the second call checks the idle connection
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_retry_rules_without_sockets():
    from protocol.client import _Attempts, _NotExecuted
    from protocol.constants import Cmd

    idle = _NotExecuted(MsessionError("TIMEOUT", "idle"))
    a = _Attempts([(Cmd.INC, [b"s", b"n"])], nodes=2, request_timeout=10)
    assert a.failed(idle) == a.SAME and a.failed(idle) == a.SAME  # never ran: again, same node
    assert a.failed(_NotExecuted(MsessionError("BUSY", ""))) == a.NEXT
    with pytest.raises(MsessionError) as exc:
        a.failed(ConnectionResetError())  # INC may have run: not sent again
    assert exc.value.code == "BADCONN"

    b = _Attempts([(Cmd.GETVAL, [b"s", b"n"])], nodes=2, request_timeout=10)
    assert b.failed(TimeoutError()) == b.NEXT
    with pytest.raises(MsessionError, match="every node"):
        b.failed(TimeoutError())
    with pytest.raises(MsessionError) as exc:
        _Attempts([(Cmd.PING, [])], 3, 10).failed(MsessionError("BADLEN", "too big"))
    assert exc.value.code == "BADLEN"
    assert _Attempts([(Cmd.SLOCK, [b"s", 5000])], 1, 10).timeout == 15
