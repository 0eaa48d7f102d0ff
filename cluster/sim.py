"""A deterministic simulator for ``Membership``: virtual time, simulated network.

``SimNetwork`` keeps an event heap in virtual seconds and a set of hosts, each
wrapping one ``Membership``. It delivers datagrams after a per-link latency
(``latency``: uniform range, plus ``jitter`` which reorders), drops them with
probability ``loss`` or across a partition, duplicates them with
probability ``dup``, and runs a ``PushPull`` as an exchange: the request
arrives after one latency, the answer after another, and a lost, refused or
partitioned exchange ends in ``stream_reply(None)`` (after
``stream_timeout``, or at once for a dead peer: connection refused).

A host can be *killed* (it stops ticking, everything to it is dropped) or
*stalled* for a while (it stops ticking and everything sent to it waits;
when the stall ends, all that waited is delivered in order, then it ticks,
late): this is how a busy event loop looks from outside.

``SimCluster`` adds naming, joining, restarts, convergence checks and an
event log ``(time, observer, kind, member)``. Every random choice comes from
one seed, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import math
import random
from typing import Callable

from .membership import GossipConfig, Member, Membership, PushPull, SendPacket

Addr = tuple[str, int]


class SimHost:
    __slots__ = ("name", "addr", "mem", "killed", "stalled_until", "backlog", "wake_at", "notes")

    def __init__(self, name: str, addr: Addr, mem: Membership):
        self.name = name
        self.addr = addr
        self.mem = mem
        self.killed = False
        self.stalled_until = -math.inf
        self.backlog: list[tuple] = []
        self.wake_at = math.inf
        self.notes: list[str] = []


class SimNetwork:
    def __init__(
        self,
        seed: int = 0,
        latency: tuple[float, float] = (0.0002, 0.001),
        loss: float = 0.0,
        dup: float = 0.0,
        jitter: float = 0.0,
        stream_timeout: float = 1.0,
    ):
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.dup = dup
        self.jitter = jitter
        self.stream_timeout = stream_timeout
        self.now = 0.0
        self.hosts: dict[Addr, SimHost] = {}
        self.on_event: Callable[[float, SimHost, str, Member], None] | None = None
        self.stats = {"sent": 0, "delivered": 0, "lost": 0, "blocked": 0, "duplicated": 0}
        self._heap: list = []
        self._seq = 0
        self._groups: dict[str, int] = {}  # name -> partition group

    # -- time

    def at(self, when: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, fn, args))

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            fn(*args)
        self.now = max(self.now, t)

    # -- topology

    def attach(self, host: SimHost) -> None:
        self.hosts[host.addr] = host
        self.pump(host)

    def partition(self, *groups) -> None:
        """Members in different groups cannot talk; members in no group talk to all."""
        self._groups = {name: i for i, g in enumerate(groups) for name in g}

    def heal(self) -> None:
        self._groups = {}

    def blocked(self, a: SimHost, b: SimHost) -> bool:
        ga, gb = self._groups.get(a.name), self._groups.get(b.name)
        return ga is not None and gb is not None and ga != gb

    def _delay(self) -> float:
        lo, hi = self.latency
        d = self.rng.uniform(lo, hi)
        if self.jitter:
            d += self.rng.uniform(0, self.jitter)
        return d

    # -- hosts

    def pump(self, host: SimHost) -> None:
        """Collects what ``host`` wants sent, its events and notes; re-arms its timer."""
        mem = host.mem
        for out in mem.take_outgoing():
            if type(out) is SendPacket:
                self._send(host, out)
            else:
                self._exchange(host, out)
        if self.on_event is not None:
            for kind, member in mem.take_events():
                self.on_event(self.now, host, kind, member)
        notes = mem.take_notes()
        if notes:
            host.notes.extend(notes[-20:])
            del host.notes[:-50]
        w = mem.next_wakeup()
        if w != host.wake_at and w != math.inf:
            host.wake_at = w
            self.at(w, self._wake, host, w)

    def _wake(self, host: SimHost, w: float) -> None:
        if host.wake_at != w or host.killed or self.now < host.stalled_until:
            return
        host.wake_at = math.inf
        host.mem.tick(self.now)
        self.pump(host)

    def kill(self, host: SimHost) -> None:
        host.killed = True
        host.backlog.clear()

    def stall(self, host: SimHost, duration: float) -> None:
        until = self.now + duration
        if until > host.stalled_until:
            host.stalled_until = until
            self.at(until, self._unstall, host, until)

    def _unstall(self, host: SimHost, until: float) -> None:
        if host.killed or host.stalled_until != until:
            return
        backlog, host.backlog = host.backlog, []
        for item in backlog:
            item[0](*item[1:])
        host.wake_at = math.inf
        host.mem.tick(self.now)
        self.pump(host)

    def _busy(self, host: SimHost, *call) -> bool:
        """Queues ``call`` if ``host`` is stalled; True if it was (or host is dead)."""
        if host.killed:
            return True
        if self.now < host.stalled_until:
            host.backlog.append(call)
            return True
        return False

    # -- datagrams

    def _send(self, host: SimHost, pkt: SendPacket) -> None:
        self.stats["sent"] += 1
        dest = self.hosts.get(pkt.dest)
        if dest is None:
            return
        if self.blocked(host, dest):
            self.stats["blocked"] += 1
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.stats["lost"] += 1
            return
        self.at(self.now + self._delay(), self._deliver, dest, host.addr, pkt.data)
        if self.dup and rng.random() < self.dup:
            self.stats["duplicated"] += 1
            self.at(self.now + self._delay() + self.latency[1], self._deliver, dest, host.addr, pkt.data)

    def _deliver(self, dest: SimHost, src: Addr, data: bytes) -> None:
        if self._busy(dest, self._deliver, dest, src, data):
            return
        self.stats["delivered"] += 1
        dest.mem.receive_packet(data, src, self.now)
        self.pump(dest)

    # -- push-pull exchanges

    def _exchange(self, host: SimHost, pp: PushPull) -> None:
        dest = self.hosts.get(pp.dest)
        if dest is None or dest.killed:
            self.at(self.now + 2 * self.latency[0], self._reply, host, pp.dest, None, pp.join)
        elif self.blocked(host, dest) or (self.loss and self.rng.random() < self.loss):
            self.at(self.now + self.stream_timeout, self._reply, host, pp.dest, None, pp.join)
        else:
            self.at(self.now + self._delay(), self._serve, dest, host, pp.data, pp.join)

    def _serve(self, dest: SimHost, requester: SimHost, data: bytes, join: bool) -> None:
        if dest.killed:
            self.at(self.now + self.latency[0], self._reply, requester, dest.addr, None, join)
            return
        if self._busy(dest, self._serve, dest, requester, data, join):
            return
        answer = dest.mem.stream_request(data, requester.addr, self.now)
        self.pump(dest)
        self.at(self.now + self._delay(), self._reply, requester, dest.addr, answer or None, join)

    def _reply(self, host: SimHost, peer: Addr, data: bytes | None, join: bool) -> None:
        if self._busy(host, self._reply, host, peer, data, join):
            return
        host.mem.stream_reply(peer, data, self.now, join)
        self.pump(host)


class SimCluster:
    """Named members on one ``SimNetwork``, with an event log."""

    def __init__(self, seed: int = 0, config: GossipConfig | None = None, **net):
        self.config = config or GossipConfig()
        self.rng = random.Random(seed)
        self.net = SimNetwork(seed=self.rng.getrandbits(32), **net)
        self.net.on_event = self._record
        self.hosts: dict[str, SimHost] = {}
        self.log: list[tuple[float, str, str, Member]] = []
        self._next_ip = 0

    @property
    def now(self) -> float:
        return self.net.now

    def _record(self, t: float, host: SimHost, kind: str, member: Member) -> None:
        self.log.append((t, host.name, kind, member))

    def new_addr(self) -> Addr:
        self._next_ip += 1
        i = self._next_ip
        return (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 7946)

    def _membership(self, name: str, addr: Addr, meta: dict | None) -> Membership:
        return Membership(name, addr, meta or {}, self.config, self.now, random.Random(self.rng.getrandbits(64)))

    def add(
        self,
        name: str,
        seeds: list[str] | None = None,
        addr: Addr | None = None,
        meta: dict | None = None,
        seed_addrs: list[Addr] | None = None,
    ) -> SimHost:
        """Starts member ``name`` and joins it through ``seeds`` (names; default:
        the first member) or ``seed_addrs``."""
        old = self.hosts.get(name)
        if addr is None:
            addr = old.addr if old is not None else self.new_addr()
        if seed_addrs is None:
            if seeds is None:
                seeds = [next(iter(self.hosts))] if self.hosts else []
            seed_addrs = [self.hosts[s].addr for s in seeds if s in self.hosts]
        host = SimHost(name, addr, self._membership(name, addr, meta))
        if old is not None and old.addr != addr:
            name_key = f"{name}@{addr[0]}"  # a second claimant of the name keeps the first's entry
            self.hosts[name_key] = host
        else:
            self.hosts[name] = host
        host.mem.join(seed_addrs, self.now)
        self.net.attach(host)
        return host

    def start(self, n: int, prefix: str = "n", spread: float = 0.0) -> list[str]:
        """Adds ``n`` members joining through the first, ``spread`` seconds apart."""
        names = [f"{prefix}{i:04d}" for i in range(n)]
        for name in names:
            self.add(name)
            if spread:
                self.run_for(spread)
        return names

    def bootstrap(self, n: int, prefix: str = "n") -> list[str]:
        """``n`` members that already know each other (no joins): for large runs."""
        names = [f"{prefix}{i:04d}" for i in range(n)]
        hosts = []
        for name in names:
            addr = self.new_addr()
            host = SimHost(name, addr, self._membership(name, addr, None))
            self.hosts[name] = host
            hosts.append(host)
        view = [h.mem.self_update() for h in hosts]
        for h in hosts:
            h.mem.install(view, self.now)
            self.net.attach(h)
        return names

    def restart(self, name: str) -> SimHost:
        """Kills ``name`` and starts a fresh member with the same name and address."""
        old = self.hosts[name]
        self.net.kill(old)
        seeds = [n for n, h in self.hosts.items() if n != name and not h.killed][:3]
        return self.add(name, seeds=seeds, addr=old.addr)

    def kill(self, name: str) -> None:
        self.net.kill(self.hosts[name])

    def stall(self, name: str, duration: float) -> None:
        self.net.stall(self.hosts[name], duration)

    def leave(self, name: str) -> None:
        host = self.hosts[name]
        host.mem.leave(self.now)
        self.net.pump(host)

    def partition(self, *groups) -> None:
        self.net.partition(*groups)

    def heal(self) -> None:
        self.net.heal()

    def run_until(self, t: float) -> None:
        self.net.run_until(t)

    def run_for(self, dt: float) -> None:
        self.net.run_until(self.now + dt)

    def up(self) -> list[SimHost]:
        return [h for h in self.hosts.values() if not h.killed]

    def views(self) -> dict[str, dict[str, str]]:
        """``{observer: {member: state}}`` for every member still running."""
        return {h.name: {x.name: x.state for x in h.mem.members()} for h in self.up()}

    def converged(self, expected: list[str] | None = None) -> bool:
        """Whether every running member sees exactly ``expected`` (default: the running ones) live."""
        up = self.up()
        want = sorted(expected if expected is not None else {h.name for h in up if not h.mem.leaving})
        return all(h.mem.live_names() == want for h in up if not h.mem.leaving)

    def run_until_converged(self, limit: float, step: float = 0.1, expected: list[str] | None = None) -> float | None:
        """Runs until ``converged()`` or ``limit`` seconds from now; returns the time taken or None."""
        start = self.now
        while self.now - start < limit:
            if self.converged(expected):
                return self.now - start
            self.run_for(step)
        return self.now - start if self.converged(expected) else None

    def events(self, kind: str, member: str | None = None) -> list[tuple[float, str, Member]]:
        return [(t, obs, mm) for t, obs, k, mm in self.log if k == kind and (member is None or mm.name == member)]


def crash_run(n: int, seed: int, config: GossipConfig | None = None, after: float = 5.0):
    """Starts ``n`` members, lets them settle 3-4 s, kills one at random and runs
    ``after`` seconds more. Returns ``(cluster, victim, kill_time, delays)``,
    ``delays`` mapping each member that marked the victim dead to how long it took."""
    c = SimCluster(seed=seed, config=config)
    names = c.start(n)
    c.run_until(3.0 + c.rng.random())
    victim = names[c.rng.randrange(n)]
    t0 = c.now
    c.kill(victim)
    c.run_for(after)
    delays: dict[str, float] = {}
    for t, obs, _ in c.events("dead", victim):
        delays.setdefault(obs, t - t0)
    return c, victim, t0, delays
