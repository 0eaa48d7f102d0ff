"""A member's fast path (``Cluster._solo``: alone in the ring, nothing on its
way here, so every request runs here without routing) with real members in
this process, over loopback, on trio's mock clock (running at real speed, and
jumped past ``TAKE_WINDOW``)."""

from __future__ import annotations

import logging

import trio

from cluster import handoff
from cluster.runtime import Cluster
from conftest import make_config
from node.server import open_node, start_node
from procs import wait_until
from protocol.client import AsyncClient


async def start_member(nursery: trio.Nursery, name: str, seeds: list[str] = (), gossip_port: int = 0) -> Cluster:
    """A farm member as ``msession serve`` runs one (node.server's wiring), in ``nursery``."""
    server = await open_node(make_config(name=name, gossip_port=gossip_port, seeds=list(seeds)))
    await start_node(nursery, server)
    return server.cluster


async def test_a_member_left_alone_takes_the_fast_path_once_the_take_window_closes(mock_clock):
    mock_clock.rate = 1.0  # gossip's timers run at real speed until we jump
    async with trio.open_nursery() as farm:
        a = await start_member(farm, "a")
        await wait_until(lambda: a._solo, 5)  # a farm of one from the start
        async with trio.open_nursery() as b_scope:
            b = await start_member(b_scope, "b", seeds=[f"127.0.0.1:{a.gossip_port}"])
            await wait_until(lambda: len(a.ring) == 2 and len(b.ring) == 2, 10)
            assert not a._solo
            with trio.fail_after(10):
                await b.leave()  # b owns no session: nothing to hand on
            b_scope.cancel_scope.cancel()
        await wait_until(lambda: set(a.ring.members) == {"a"}, 10)
        # Alone again, but b's partitions came to a just now: a request for a
        # session a lacks there first asks b (TAKE), so no fast path yet.
        assert a._takeovers.previous and set(a._takeovers.previous.values()) == {"b"}
        assert not a._solo

        mock_clock.jump(handoff.TAKE_WINDOW + 1)
        # a's timers wake when the window closes: the fast path comes back
        # without any request.
        await wait_until(lambda: a._solo, 5)
        assert not a._takeovers.previous
        async with AsyncClient("127.0.0.1", a.data_port) as client:
            await client.create("after-the-window")
            await client.set("after-the-window", "k", "v")
            assert await client.get("after-the-window", "k") == b"v"
        assert a.counters["takes"] == 0
        farm.cancel_scope.cancel()


async def test_a_seedless_member_restarting_into_a_running_farm_asks_the_others_first(mock_clock):
    # A farm's first member (no seeds, as `msession farm` starts node 1) crashes
    # and restarts: it starts alone, then b's probes find it and it learns the
    # farm from b. It is the newcomer: what it now owns was b's, so for
    # TAKE_WINDOW it asks b first for a session it lacks. (When "we just joined" came only from the core's
    # join going through, a seedless member never had one and asked nobody.)
    mock_clock.rate = 1.0
    async with trio.open_nursery() as farm:
        async with trio.open_nursery() as a_scope:
            a = await start_member(a_scope, "a")
            await wait_until(lambda: a._solo, 5)
            b = await start_member(farm, "b", seeds=[f"127.0.0.1:{a.gossip_port}"])
            await wait_until(lambda: len(a.ring) == 2 and len(b.ring) == 2, 10)
            port = a.gossip_port
            a_scope.cancel_scope.cancel()  # a crashes: no leave
        a = await start_member(farm, "a", gossip_port=port)  # no seeds
        await wait_until(lambda: len(a.ring) == 2, 15)
        mine = a.ring.partitions_of("a")
        assert mine and a._takeovers.previous == {p: "b" for p in mine}
        farm.cancel_scope.cancel()


async def test_only_a_member_with_seeds_waits_to_join(mock_clock, caplog):
    # Without seeds a member has joined (a farm of its own) and is ready as it
    # starts: nothing to wait for, no "joined the farm" (it logged one, of 1 member).
    mock_clock.rate = 1.0
    caplog.set_level(logging.INFO, logger="msession.cluster")
    async with trio.open_nursery() as farm:
        a = await start_member(farm, "a")
        assert a._ready_event.is_set() and a.membership.joined
        b = await start_member(farm, "b", seeds=[f"127.0.0.1:{a.gossip_port}"])
        await wait_until(lambda: "joined the farm: 2 members" in caplog.text, 10)  # b did
        assert b._ready_event.is_set()
        farm.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if "joined the farm" in r.getMessage()] == ["joined the farm: 2 members"]
