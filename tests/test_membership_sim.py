"""Membership in deterministic simulation (cluster/sim.py): virtual time, simulated network.

Every test uses fixed seeds; nothing sleeps. The detection bound asserted here is
derived in docs/membership.md ("Detection bound").
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.membership import GossipConfig
from cluster.sim import SimCluster, crash_run
from cluster.suspicion import suspicion_bounds

CFG = GossipConfig()
DETECTION_BOUND = 2.0  # seconds from a crash to "dead" at every member, N <= 10 (docs/membership.md)


def no_errors(c: SimCluster) -> None:
    for h in c.hosts.values():
        assert h.mem.counters["internal_errors"] == 0, h.notes
        assert h.mem.counters["bad_packets"] == 0, h.notes


def states_of(c: SimCluster, name: str) -> dict[str, str]:
    return {obs: view.get(name, "-") for obs, view in c.views().items() if obs != name}


@pytest.mark.parametrize("n", [3, 10, 50])
def test_members_converge_after_joining_at_once(n):
    c = SimCluster(seed=n)
    c.start(n)
    took = c.run_until_converged(10.0)
    assert took is not None, c.views()
    c.run_for(5.0)
    assert c.converged()
    assert not c.events("suspect") and not c.events("dead")
    no_errors(c)


def test_200_members_converge_after_joining_at_once():
    c = SimCluster(seed=200)
    names = c.start(200)
    took = c.run_until_converged(15.0)
    assert took is not None
    assert all(h.mem.joined for h in c.up())
    assert len(c.events("join")) == 200 * 199  # everybody saw everybody join once
    assert sorted(c.hosts["n0199"].mem.live_names()) == names
    no_errors(c)


def test_joins_spread_over_time_converge_with_any_seed():
    c = SimCluster(seed=7)
    c.add("a")
    for i, name in enumerate("bcdefgh"):
        c.add(name, seeds=[["a", "b", "c"][i % 3]] if i else ["a"])
        c.run_for(0.3)
    assert c.run_until_converged(5.0) is not None


def crash_times(n: int, seed: int) -> tuple[dict[str, float], float, float]:
    """Kills one member of a converged cluster of ``n``; returns each other
    member's delay to mark it dead, the delay of the first suspicion, and the
    delay from the first suspicion to the last "dead"."""
    c, victim, t0, dead = crash_run(n, seed)
    assert sorted(dead) == sorted(set(c.hosts) - {victim}), "not declared dead everywhere"
    assert all(m.name == victim for _, _, m in c.events("dead")), "a false positive"
    first_suspect = min(t for t, _, _ in c.events("suspect", victim)) - t0
    no_errors(c)
    return dead, first_suspect, max(dead.values()) - first_suspect


@pytest.mark.parametrize("n", [5, 10])
def test_a_crashed_member_is_dead_everywhere_within_the_bound(n):
    low, _ = suspicion_bounds(CFG.suspicion_mult, CFG.suspicion_max_mult, n, CFG.probe_interval)
    worst = []
    for seed in range(25):
        dead, first, tail = crash_times(n, seed)
        worst.append(max(dead.values()))
        assert max(dead.values()) <= DETECTION_BOUND, (seed, dead)
        # the deterministic part of the bound: once suspected, min suspicion
        # timeout (confirmations arrive in time) plus two gossip rounds
        assert tail <= low + 2 * CFG.gossip_interval + 0.02, (seed, first, tail)
    assert sorted(worst)[len(worst) // 2] < 1.2  # the median (docs: ~0.9 s)


def test_no_false_positive_at_ten_percent_loss():
    c = SimCluster(seed=11, loss=0.10)
    c.start(15)
    c.run_until(60.0)
    assert not c.events("dead")
    assert c.events("suspect")  # suspicions do happen at 10% loss; every one was refuted
    assert c.converged()
    no_errors(c)


def test_no_false_positive_with_duplicates_and_reordering():
    c = SimCluster(seed=12, loss=0.02, dup=0.2, jitter=0.02)
    c.start(10)
    c.run_until(30.0)
    assert not c.events("dead")
    assert c.converged()


@pytest.mark.parametrize("stall", [0.5, 0.7])
def test_a_member_stalling_repeatedly_is_never_declared_dead(stall):
    for n, seed in ((5, 1), (10, 2)):
        c = SimCluster(seed=seed)
        names = c.start(n)
        c.run_until(2.0)
        busy = names[1]
        t = 2.0
        while t < 30.0:
            c.run_until(t)
            c.stall(busy, stall)
            t += stall + 0.3 + c.rng.uniform(0, 0.3)
        c.run_until(32.0)
        assert not c.events("dead"), c.events("dead")[:3]
        assert c.events("suspect", busy)  # it was suspected, and refuted every time
        assert c.hosts[busy].mem.counters["late_ticks"] > 0  # Lifeguard saw its own loop was late
        assert c.converged()


def test_two_members_stalling_at_once_are_not_declared_dead():
    c = SimCluster(seed=3)
    names = c.start(8)
    c.run_until(2.0)
    for i in range(20):
        c.stall(names[1], 0.5)
        c.stall(names[2 + i % 5], 0.4)
        c.run_for(1.0)
    c.run_for(2.0)
    assert not c.events("dead")


def test_partition_heals_into_one_view():
    c = SimCluster(seed=5)
    names = c.start(10)
    assert c.run_until_converged(5.0) is not None
    left, right = names[:5], names[5:]
    c.partition(left, right)
    c.run_for(10.0)
    views = c.views()
    assert all(views[a][b] == "dead" for a in left for b in right)
    assert all(views[b][a] == "dead" for a in left for b in right)
    c.heal()
    took = c.run_until_converged(2 * CFG.push_pull_interval + 5.0)
    assert took is not None, c.views()
    assert all(s == "alive" for view in c.views().values() for s in view.values())
    no_errors(c)


def test_graceful_leave_is_left_everywhere_and_never_dead():
    c = SimCluster(seed=6)
    names = c.start(10)
    c.run_until(3.0)
    host = c.hosts[names[3]]
    c.leave(names[3])
    for _ in range(50):
        if host.mem.leave_done():
            break
        c.run_for(0.05)
    assert host.mem.leave_done()
    c.kill(names[3])  # the process exits
    c.run_for(10.0)
    assert set(states_of(c, names[3]).values()) == {"left"}
    assert not c.events("dead")
    assert c.converged(sorted(set(names) - {names[3]}))


def test_leave_of_the_last_member_is_done_at_once():
    c = SimCluster(seed=1)
    (name,) = c.start(1)
    c.leave(name)
    assert c.hosts[name].mem.leave_done()


@pytest.mark.parametrize("wait", [0.2, 5.0])  # restarted before, or after, being declared dead
def test_restart_with_same_name_and_address_replaces_the_old_self(wait):
    c = SimCluster(seed=8)
    names = c.start(5)
    c.run_until(3.0)
    name = names[2]
    old_inc = c.hosts[name].mem.incarnation
    old_addr = c.hosts[name].addr
    c.kill(name)
    c.run_for(wait)
    fresh = c.restart(name)
    assert fresh.addr == old_addr and fresh.mem is not None
    assert c.run_until_converged(5.0) is not None
    c.run_for(2.0)
    assert fresh.mem.incarnation > old_inc
    for obs, view in c.views().items():
        assert view[name] == "alive", obs
    for h in c.up():
        assert h.mem.get(name).incarnation == fresh.mem.incarnation
    assert fresh.mem.conflict is None


def test_a_name_taken_at_another_address_sets_conflict_on_the_newcomer():
    c = SimCluster(seed=9)
    names = c.start(5)
    c.run_until(3.0)
    newcomer = c.add(names[2], seeds=[names[0]], addr=c.new_addr())
    c.run_for(3.0)
    assert newcomer.mem.conflict is not None and names[2] in newcomer.mem.conflict
    assert not newcomer.mem.joined
    conflicts = c.events("conflict", names[2])
    assert any(obs == names[0] and m.addr == newcomer.addr for _, obs, m in conflicts)
    assert any("claims a name" in note for note in c.hosts[names[0]].notes)
    original = c.hosts[names[2]]
    for obs, view in c.views().items():
        if obs != names[2]:
            assert view[names[2]] == "alive"
    for h in c.up():
        if h is not newcomer:
            assert h.mem.get(names[2]).addr == original.addr
    assert newcomer.mem.next_wakeup() == math.inf  # it has fallen silent


def test_a_name_moves_to_a_new_address_once_the_old_member_is_dead():
    c = SimCluster(seed=10)
    names = c.start(5)
    c.run_until(3.0)
    c.kill(names[2])
    c.run_for(4.0)
    moved = c.add(names[2], seeds=[names[0]], addr=c.new_addr())
    c.hosts[names[2]] = moved  # the old host is gone for good
    assert c.run_until_converged(5.0) is not None
    assert moved.mem.conflict is None
    assert all(h.mem.get(names[2]).addr == moved.addr for h in c.up())


def test_dead_and_left_members_are_reaped():
    cfg = GossipConfig(dead_reap=5.0)
    c = SimCluster(seed=4, config=cfg)
    names = c.start(6)
    c.run_until(3.0)
    c.kill(names[1])
    c.leave(names[2])
    c.run_for(1.0)
    c.kill(names[2])
    c.run_for(3.0)
    assert all(v[names[1]] == "dead" and v[names[2]] == "left" for v in c.views().values())
    c.run_for(cfg.dead_reap + 2.0)
    for h in c.up():
        assert h.mem.get(names[1]) is None and h.mem.get(names[2]) is None
        assert len(h.mem.members()) == 4
    assert len(c.events("reaped")) == 2 * 4
    c.run_for(5.0)  # and they do not come back from stale gossip
    assert all(len(h.mem.members()) == 4 for h in c.up())


def test_seeds_that_never_answer_give_a_join_error_then_join_when_one_appears():
    c = SimCluster(seed=2)
    ghost_addr = c.new_addr()
    lonely = c.add("late", seed_addrs=[ghost_addr])
    c.run_for(0.5)
    assert lonely.mem.join_error is not None and "no seed answered" in lonely.mem.join_error
    assert not lonely.mem.joined
    c.add("seed", seeds=[], addr=ghost_addr)
    c.run_for(3.0)
    assert lonely.mem.joined and lonely.mem.join_error is None
    assert c.converged()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    jitter=st.floats(0.0, 0.05),
    actions=st.lists(
        st.tuples(st.sampled_from(["stall", "partition", "heal", "run"]), st.integers(0, 3), st.floats(0.05, 2.0)),
        max_size=8,
    ),
)
def test_random_network_chaos_never_raises_and_converges_once_healed(seed, loss, dup, jitter, actions):
    c = SimCluster(seed=seed, loss=loss, dup=dup, jitter=jitter)
    names = c.start(4)
    for action, who, t in actions:
        if action == "stall":
            c.stall(names[who], min(t, 0.5))
        elif action == "partition":
            c.partition(names[: who + 1], names[who + 1 :])
        elif action == "heal":
            c.heal()
        c.run_for(t)
    c.heal()
    c.net.loss = c.net.dup = c.net.jitter = 0.0
    took = c.run_until_converged(2 * CFG.push_pull_interval + 10.0)
    assert took is not None, c.views()
    for h in c.up():
        assert h.mem.counters["internal_errors"] == 0, h.notes


def test_scale_bench_smoke():
    from bench import gossip_scale

    result = gossip_scale.run(n=100, seed=1)
    for change, reached in (("refute", 99), ("leave", 99), ("kill", 98)):  # the leaver is gone by the kill
        r = result[change]
        assert r["reached"] == reached, r
        assert r["gossip_rounds"]["max"] < 30
    assert result["false_dead"] == 0 and result["internal_errors"] == 0
    assert result["steady"]["bytes_per_member_s"] > 0


def test_a_partition_that_outlasts_dead_reap_heals_through_the_seeds():
    cfg = GossipConfig(dead_reap=5.0, push_pull_interval=5.0)
    c = SimCluster(seed=13, config=cfg)
    names = c.start(8)  # all joined through names[0]
    assert c.run_until_converged(5.0) is not None
    c.partition(names[:4], names[4:])
    c.run_for(15.0)
    assert len(c.hosts[names[5]].mem.members()) == 4  # the other half is forgotten
    c.heal()
    assert c.run_until_converged(4 * cfg.push_pull_interval) is not None, c.views()


def _six_members_and_a_victim(loss: float):
    """A converged simulated farm of six (seed 21), settled 2 s, and the member
    the forgery tests aim at."""
    c = SimCluster(seed=21, loss=loss)
    names = c.start(6)
    assert c.run_until_converged(5.0) is not None
    c.run_for(2.0)
    return c, names, c.hosts[names[3]]


def test_forged_news_of_a_member_above_its_incarnation_never_breaks_it_nor_the_farm():
    """An attacker floods one member with pings suspecting it at incarnations
    it never issued (up to the largest), from a stranger and under other
    members' names and addresses, and with gossip about it in its own epoch
    above its incarnation, or about an "earlier life" past STEP_OVER_MAX. It
    steps over the accusations up to STEP_OVER_MAX and ignores (counts) the
    rest and every forged alive: its incarnation never passes STEP_OVER_MAX + 1,
    every packet still decodes everywhere, and the farm stays converged
    throughout. Then its loop stalls, again and again: real suspicions, which
    it still refutes, so it is never declared dead (before c4df8f9 it refuted
    past the largest incarnation, its refutations were undecodable, and it was)."""
    from cluster import messages as m
    from cluster.membership import STEP_OVER_MAX

    c, names, victim = _six_members_and_a_victim(loss=0.02)
    v = victim.mem
    stranger = ("10.9.9.9", 7946)
    t = start = c.now
    forged = 0
    while t < start + 20.0:
        t += 0.05
        k = forged + 1
        spoof = c.hosts[names[k % 6 if k % 6 != 3 else 0]]  # another member's name, epoch and address
        above = [m.MAX_INCARNATION, v.incarnation + k, STEP_OVER_MAX + k][k % 3]
        packets = [
            (stranger, m.encode_with_updates(m.ping_fields("x", 5, k, victim.name, above), [])),
            (spoof.addr, m.encode_with_updates(m.ping_fields(spoof.name, spoof.mem.epoch, k, victim.name, above), [])),
            (spoof.addr, m.encode_with_updates(m.gossip_fields(spoof.name, spoof.mem.epoch), [
                m.encode_update(m.Update(state, victim.name, above, v.epoch, victim.addr, None if state else {}, spoof.name))
                for state in (m.ALIVE, m.SUSPECT, m.DEAD)
            ] + [m.encode_update(m.Update(m.DEAD, victim.name, STEP_OVER_MAX + k, 12345, victim.addr, None, spoof.name))])),
        ]
        for src, data in packets:
            c.net.at(t, c.net._deliver, victim, src, data)
        forged += 1
        c.run_until(t)
        assert c.converged(), (t, c.views())
        assert v.incarnation <= STEP_OVER_MAX + 1
    c.run_for(2.0)
    # above STEP_OVER_MAX (two k in three): 2 pings, 3 updates of its own epoch, 1 earlier life
    assert v.counters["forged_incarnations"] >= 6 * (forged * 2 // 3 - 1)
    assert v.counters["refutations"] > 0  # the accusations at v.incarnation + k
    assert not c.events("suspect") and not c.events("dead")
    no_errors(c)  # nothing any member sent was undecodable
    # real suspicions now: the member stalls 0.7 s, ten times
    inc0, ref0 = v.incarnation, v.counters["refutations"]
    for _ in range(10):
        c.stall(victim.name, 0.7)
        c.run_for(1.5)
    c.run_for(3.0)
    assert c.events("suspect", victim.name) and not c.events("dead"), c.events("dead")[:3]
    assert 0 < v.counters["refutations"] - ref0 == v.incarnation - inc0 < 30
    for h in c.up():
        assert h.mem.get(victim.name).incarnation == v.incarnation
    assert c.converged()
    no_errors(c)


def test_a_forged_alive_of_a_member_sent_to_the_others_does_not_get_it_declared_dead():
    """Anybody may send alive news: one forged GOSSIP packet to every other member
    says the victim, in its own epoch, is alive at its incarnation + 5, and they
    adopt it. Every real suspicion of the victim is then at that incarnation; the
    victim steps over it (it is below STEP_OVER_MAX) and refutes, so it is never
    declared dead (after c4df8f9 it took them for forged and was, each time)."""
    from cluster import messages as m

    c, names, victim = _six_members_and_a_victim(loss=0.0)
    v = victim.mem
    inc0 = v.incarnation
    stranger = ("10.9.9.9", 7946)
    forged = m.Update(m.ALIVE, victim.name, inc0 + 5, v.epoch, victim.addr, {}, None)
    for n in names:
        if n != victim.name:
            pkt = m.encode_with_updates(m.gossip_fields("x", 5), [m.encode_update(forged)])
            c.net.at(c.now + 0.01, c.net._deliver, c.hosts[n], stranger, pkt)
    c.run_for(3.0)
    assert all(h.mem.get(victim.name).incarnation >= inc0 + 5 for h in c.up() if h is not victim)
    for _ in range(5):
        c.stall(victim.name, 0.7)
        c.run_for(1.5)
    c.run_for(3.0)
    assert c.events("suspect", victim.name) and not c.events("dead"), c.events("dead")[:3]
    assert v.counters["refutations"] > 0 and v.incarnation > inc0 + 5
    for h in c.up():
        assert h.mem.get(victim.name).state == "alive" and h.mem.get(victim.name).incarnation == v.incarnation
    assert c.converged()
    no_errors(c)


@pytest.mark.parametrize("seed", range(6))
def test_a_restart_whose_seed_is_down_refutes_its_suspected_earlier_life_at_once(seed):
    """A member at incarnation 3 crashes; once the others suspect it, it restarts at
    the same address with a seed that never answers (it does not join). The others'
    pings suspect it at 3 (no epoch in a ping): it refutes above them at once, so
    every member sees its new life alive within seconds and nobody declares it dead
    (after c4df8f9 it refuted none, and was declared dead or kept out ~60 s)."""
    c = SimCluster(seed=seed)
    names = c.start(5)
    assert c.run_until_converged(5.0) is not None
    c.run_for(1.0)
    name = names[3]
    old = c.hosts[name]
    for i in range(3):
        old.mem.update_meta({"v": i}, c.now)
        c.net.pump(old)
        c.run_for(1.0)
    assert {x.mem.get(name).incarnation for x in c.up()} == {3}
    c.kill(name)
    t_kill = c.now
    while not any(x.mem.get(name).state == "suspect" for x in c.up()):
        assert c.now - t_kill < 5.0, "nobody suspected the killed member"
        c.run_for(0.01)
    fresh = c.add(name, addr=old.addr, seed_addrs=[("10.200.0.1", 7946)])
    t0 = c.now
    others = [x for x in c.up() if x is not fresh]
    while not all(x.mem.get(name).state == "alive" and x.mem._nodes[name].epoch == fresh.mem.epoch for x in others):
        assert c.now - t0 < 3.0, {x.name: x.mem.get(name) for x in others}
        c.run_for(0.05)
    assert fresh.mem.incarnation > 3
    assert not c.events("dead", name)
    # and it learns the farm itself through the members that probe it (its seed never answers)
    while not (fresh.mem.joined and set(fresh.mem.live_names()) == set(names)):
        assert c.now - t0 < 3.0, (fresh.mem.joined, fresh.mem.live_names())
        c.run_for(0.05)
    c.run_for(10.0)
    assert all(x.mem.get(name).state == "alive" for x in others) and not c.events("dead", name)
    no_errors(c)
