"""Cluster membership: SWIM with the Lifeguard extensions, sans-I/O.

Theory of operation
-------------------
``Membership`` is a pure state machine. Nothing here opens a socket, reads a
clock or draws randomness of its own: datagrams go in through
``receive_packet()``, TCP push-pull exchanges through ``stream_request()``
(server side) and ``stream_reply()`` (our own exchange's answer), time moves
only through the ``now`` arguments and ``tick()``, and every random choice
uses the ``random.Random`` given to the constructor. What to send comes out
of ``take_outgoing()`` (``SendPacket`` is one UDP datagram, ``PushPull`` one
TCP request/reply), what changed out of ``take_events()``, log lines out of
``take_notes()``. The caller must call ``tick()`` by ``next_wakeup()``.

Every member has a *state* (alive, suspect, dead, left) and an
*incarnation* number only that member raises. Knowledge about a member
travels as *updates* ``(state, name, incarnation, epoch, addr, meta,
origin)``; an update wins over what we know when its incarnation is higher,
or, at the same incarnation, when it is "worse" (suspect beats alive; dead
and left beat both). The only way out of suspect or dead is an alive update
with a higher incarnation, which only the member itself issues: it
*refutes*, one above the accusation. An accusation in our own epoch above
our incarnation repeats an alive of ours we never issued (forged, and
adopted by the accuser: anybody may send alive news), or, in a ping (no
epoch), an earlier life's incarnation: we step over it like an earlier
life's, up to ``STEP_OVER_MAX``; above that, and alive news of ourselves
above our incarnation, we ignore and count (``forged_incarnations``). See
"Identity" for earlier lives. No path takes an incarnation past
``messages.MAX_INCARNATION``.

Failure detection (SWIM). Every ``probe_interval`` we probe one member,
walking a shuffled list of all others (a new round reshuffles; a new
member is inserted at a random place; members we just heard are suspect
go first, so confirmations or refutations come within one interval). A
probe is a PING; with no ACK within ``probe_timeout`` we send PING_REQ to
``indirect_checks`` other alive members, which ping the target themselves
and relay its ACK, or send a NACK when they got none within
``probe_timeout``. With no ACK by the end of the probe interval we suspect
the target. A ping to a suspect carries the suspicion, so a live suspect
refutes in its ACK.

Suspicion (Lifeguard). A suspect is declared dead when its ``Suspicion``
timer ends: between ``min = suspicion_mult x max(1, log10 N) x
probe_interval`` and ``suspicion_max_mult x min``, starting at the maximum
and shrinking toward the minimum as other members independently suspect
it (``suspicion.py``).

Local health (Lifeguard). ``health`` rises when our probe fails without
any NACK explaining it (we may be the one cut off), when a NACK we asked
for never comes, when we must refute a suspicion of ourselves, and when
``tick()`` runs more than ``probe_interval / 2`` late (a busy event loop);
it falls by one with every successful probe. Probe interval and timeout are
multiplied by ``health + 1``. A probe in flight while our own loop was late
is not judged at all: its ACK may be sitting unread in our socket.

Dissemination. Each update we learn (or make) is queued once per member
(``broadcast.py``) and piggybacked on our pings, acks and on GOSSIP packets
sent every ``gossip_interval`` to ``gossip_nodes`` random live members,
least-sent and newest first, as many as fit in ``max_packet``, each
``retransmit_mult x ceil(log10(N + 1))`` times. One more copy, not counted,
goes to a member declared dead less than ``gossip_to_dead`` ago: if it is
alive after all, it learns it must refute. An ACK to a ping that carries a
suspicion always carries our alive update, and so does an ACK relayed for a
PING_REQ that carried one; a suspect that answers while we still hold the
old suspicion is probed again at once. So a refutation reaches every
suspecter even when the epidemic misses it.

Anti-entropy. Every ``push_pull_interval`` (x ``ceil(log2 N - 5) + 1`` above
32 members) we exchange the full state with one random member that has not
left, dead ones included (so two halves of a healed partition find each
other again), and also with one of our seeds if we hold it dead or have
forgotten it (so halves that reaped each other do too). Joining is the same
exchange with the seeds; it is retried every ``join_retry`` seconds until
one answers. Remote "dead" entries are
merged as suspicions: a member is only declared dead by a local timer.

Identity. A node draws a random 64-bit *epoch* at start. An update about
ourselves from another epoch is an earlier life of ours (we raise our
incarnation above it, so our new self replaces the old one everywhere, but
only up to ``STEP_OVER_MAX``, so a forged "earlier life" can never use up
the incarnations we need for refuting) -- unless it puts a live member
under our name at another address: then our
name is taken, ``conflict`` is set while we have not joined yet (the caller
should exit with that message) and we fall silent; members that hear of two
live claimants keep the first and report a ``"conflict"`` event.

Untrusted input. Every packet is decoded strictly (``messages.py``); a bad
one is counted and noted, never raised. A packet is from a *known* sender
when its sender name is a member we know at the packet's source address.
From anybody else we take only what a join needs: we answer a PING (SWIM
lets a new member probe before it is known; we also start one rate-limited
push-pull with it, since we evidently missed its join) and we accept alive
updates (news of members); its suspect, dead and left updates and its ACK,
NACK and PING_REQ packets are dropped and counted as ``unknown_sender``. A
stranger can make us learn of members, never suspect or forget one. ACKs
and NACKs must match a sequence number we are waiting for (the numbers
start at random), so replayed acks are stale; replayed updates carry
incarnations we already passed, so they are stale too and counted.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

from . import messages as m
from .awareness import Awareness
from .broadcast import BroadcastQueue
from .suspicion import Suspicion, suspicion_bounds

__all__ = ["GossipConfig", "Member", "SendPacket", "PushPull", "Membership"]


@dataclass(frozen=True)
class GossipConfig:
    # docs/membership.md derives the detection bound from these (dead everywhere
    # within 2 s of a crash at N <= 10; no false positive for stalls of 0.5 s)
    probe_interval: float = 0.15  # the first probe of a crashed member comes ~0.15 s after
    probe_timeout: float = 0.075  # loopback RTT is < 1 ms; a loop busier than this goes indirect
    indirect_checks: int = 3
    suspicion_mult: int = 4  # min suspicion 0.6 s at N <= 10, k = 2 confirmations
    suspicion_max_mult: int = 6
    gossip_interval: float = 0.1
    gossip_nodes: int = 3
    retransmit_mult: int = 4
    push_pull_interval: float = 15.0
    dead_reap: float = 60.0  # forget dead/left members after this
    max_packet: int = 1400
    awareness_max: int = 8
    gossip_to_dead: float = 30.0  # keep sending updates to dead members this long (they may refute)
    join_retry: float = 1.0  # retry the seeds this often until one answers
    max_stream: int = 16 * 1024 * 1024  # push-pull frame limit


@dataclass(frozen=True)
class Member:
    name: str
    addr: tuple[str, int]
    meta: dict
    state: str  # "alive" | "suspect" | "dead" | "left"
    incarnation: int
    since: float  # local time of the last state change


@dataclass(frozen=True)
class SendPacket:
    dest: tuple[str, int]
    data: bytes


@dataclass(frozen=True)
class PushPull:
    dest: tuple[str, int]
    data: bytes
    join: bool


ALIVE, SUSPECT, DEAD, LEFT = m.ALIVE, m.SUSPECT, m.DEAD, m.LEFT
_LIVE = (ALIVE, SUSPECT)
_GONE = (DEAD, LEFT)

COUNTERS = (
    "packets_in packets_out bytes_in bytes_out bad_packets bad_version stale_messages unknown_sender "
    "oversize wrong_target probes probe_failures indirect_probes suspicions refutations push_pulls "
    "push_pulls_in push_pull_failures late_ticks conflicts gossip_packets internal_errors forged_incarnations"
).split()
MAX_NOTES = 1000  # notes kept between two take_notes() calls
# The highest incarnation we step over when we refute: of an earlier life of
# ours (another epoch), of an accusation in our own epoch above our incarnation
# (the others adopted a forged alive of ours), of a ping's suspicion (no epoch).
# Legitimate incarnations grow by one per refutation, meta change or leave, so
# they never come near it; a forgery can take us this far in one step, leaving
# 2**62 incarnations for refuting below MAX_INCARNATION.
STEP_OVER_MAX = m.MAX_INCARNATION // 2


class _Node:
    __slots__ = ("name", "addr", "meta", "state", "incarnation", "epoch", "since", "suspicion", "index")

    def __init__(self, u: m.Update, now: float, index: int):
        self.name = u.name
        self.addr = u.addr
        self.meta = u.meta or {}
        self.state = u.state
        self.incarnation = u.incarnation
        self.epoch = u.epoch
        self.since = now
        self.suspicion: Suspicion | None = None
        self.index = index  # position in Membership._others (-1 for ourselves)

    def member(self) -> Member:
        return Member(self.name, self.addr, self.meta, m.STATE_NAMES[self.state], self.incarnation, self.since)

    def update(self, state: int | None = None, origin: str | None = None, full: bool = False) -> m.Update:
        state = self.state if state is None else state
        meta = self.meta if (full or state == ALIVE) else None
        return m.Update(state, self.name, self.incarnation, self.epoch, self.addr, meta, origin)


class _Probe:
    __slots__ = ("seq", "target", "acked", "nacks", "expected")

    def __init__(self, seq: int, target: str):
        self.seq = seq
        self.target = target
        self.acked = False
        self.nacks = 0
        self.expected = 0


class Membership:
    def __init__(self, name: str, addr: tuple[str, int], meta: dict, config: GossipConfig, now: float, rng: random.Random):
        if not isinstance(name, str) or not 0 < len(name) <= m.MAX_NAME:
            raise ValueError(f"member name must be 1 to {m.MAX_NAME} characters")
        if len(m._pack(meta)) > m.MAX_META:
            raise ValueError(f"member meta must encode to at most {m.MAX_META} bytes")
        self.name = name
        self.addr = (addr[0], addr[1])
        self.config = config
        self.rng = rng
        self.epoch = rng.getrandbits(64)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.notes: list[str] = []
        self.awareness = Awareness(config.awareness_max)
        self.joined = False
        self.conflict: str | None = None
        self.join_error: str | None = None
        self._me = _Node(m.Update(ALIVE, name, 0, self.epoch, self.addr, dict(meta), None), now, -1)
        self._nodes: dict[str, _Node] = {name: self._me}
        self._others: list[str] = []  # every other known member, for random choices
        self._live = 1  # alive + suspect members, ourselves included
        self._probe_list: list[str] = []
        self._probe_pos = 0
        self._probe_first: dict[str, None] = {}  # suspects to probe next (ordered set)
        self._probe: _Probe | None = None
        self._failed_probe: _Probe | None = None  # waiting for late NACKs (awareness)
        self._seq = rng.getrandbits(32)
        self._relays: dict[int, tuple[tuple[str, int], int, bool]] = {}  # our seq -> (requester, its seq, suspected)
        self._bq = BroadcastQueue()
        self._gone: deque[tuple[float, str]] = deque()  # (since, name) of dead/left, for reaping
        self._timers: list = []
        self._timer_seq = 0
        self._out: list[SendPacket | PushPull] = []
        self._events: list[tuple[str, Member]] = []
        self._seeds: list[tuple[str, int]] = []
        self._join_pending = 0
        self._leaving = False
        self._leave_id = 0
        self._conflicts_seen: set[tuple[str, tuple[str, int]]] = set()
        self._synced_with: dict[str, float] = {}
        self._sync_at = -math.inf
        self._join_retry_due = False  # a join_retry timer is set
        c = config
        self._at(now + rng.uniform(0, c.probe_interval), "probe")
        self._at(now + rng.uniform(0, c.gossip_interval), "gossip")
        self._at(now + c.push_pull_interval * (0.5 + rng.random()), "push_pull")
        self._at(now + self._reap_every(), "reap")

    # ------------------------------------------------------------------
    # Public surface

    @property
    def health(self) -> int:
        return self.awareness.score

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def leaving(self) -> bool:
        return self._leaving

    def join(self, seeds: list[tuple[str, int]], now: float) -> None:
        own = self.addr
        self._seeds = list(dict.fromkeys((s[0], s[1]) for s in seeds if (s[0], s[1]) != own))
        self._broadcast(self._me.update())  # introduce ourselves in every packet we send first
        if not self._seeds:
            self.joined = True
            return
        self._send_joins()

    def update_meta(self, meta: dict, now: float) -> None:
        """Changes our meta; a new incarnation carries it to everyone (an "update" event there)."""
        if len(m._pack(meta)) > m.MAX_META:
            raise ValueError(f"member meta must encode to at most {m.MAX_META} bytes")
        if self._leaving:
            return
        if self._raise_incarnation(self._me.incarnation + 1, "carry a new meta"):
            self._me.meta = dict(meta)  # only with a new incarnation: else nobody could learn it
            self._broadcast(self._me.update())

    def leave(self, now: float) -> None:
        if self._leaving:
            return
        self._leaving = True
        me = self._me
        # at the largest incarnation our "left" stays there: left beats alive at the same one
        self._raise_incarnation(me.incarnation + 1, "leave", quiet=True)
        me.state = LEFT
        me.since = now
        self._live -= 1
        self._probe = self._failed_probe = None
        self._leave_id = self._broadcast(me.update(origin=self.name))

    def leave_done(self) -> bool:
        if not self._leaving:
            return False
        if self._live == 0:
            return True
        return not self._bq.pending(self.name, self._leave_id)

    def receive_packet(self, data: bytes, src: tuple[str, int], now: float) -> None:
        c = self.counters
        c["packets_in"] += 1
        try:
            c["bytes_in"] += len(data)
            if len(data) > self.config.max_packet:
                c["oversize"] += 1
                self._note(f"dropped a {len(data)}-byte packet from {src}: over max_packet")
                return
            try:
                p = m.decode_packet(data)
            except m.BadMessage as exc:
                self._bad(exc, src, "packet")
                return
            if self.conflict is None:
                self._handle(p, (src[0], src[1]), now)
        except Exception as exc:  # a bug here must not take the node down
            c["internal_errors"] += 1
            self._note(f"internal error handling a packet from {src}: {exc!r}")

    def stream_request(self, data: bytes, src: tuple[str, int], now: float) -> bytes:
        """Push-pull, server side. Returns our state, or ``b""`` (refused: close without answering)."""
        c = self.counters
        try:
            c["bytes_in"] += len(data)
            if len(data) > self.config.max_stream:
                c["oversize"] += 1
                self._note(f"refused a {len(data)}-byte push-pull from {src}: over max_stream")
                return b""
            try:
                msg = m.decode_push_pull(data)
            except m.BadMessage as exc:
                self._bad(exc, src, "push-pull")
                return b""
            c["push_pulls_in"] += 1
            if self.conflict is None:
                self._merge(msg, now)
            reply = self._state_bytes(False)
            c["bytes_out"] += len(reply)
            return reply
        except Exception as exc:
            c["internal_errors"] += 1
            self._note(f"internal error serving a push-pull from {src}: {exc!r}")
            return b""

    def stream_reply(self, dest: tuple[str, int], data: bytes | None, now: float, join: bool) -> None:
        c = self.counters
        try:
            if join:
                self._join_pending = max(0, self._join_pending - 1)
            msg = None
            if data is None:
                c["push_pull_failures"] += 1
            elif len(data) > self.config.max_stream:
                c["oversize"] += 1
                self._note(f"dropped a {len(data)}-byte push-pull reply from {dest}: over max_stream")
            else:
                c["bytes_in"] += len(data)
                try:
                    msg = m.decode_push_pull(data)
                except m.BadMessage as exc:
                    self._bad(exc, dest, "push-pull reply")
            if msg is not None and self.conflict is None:
                # our own join: everything we learn is old news to the others, don't re-broadcast it
                self._merge(msg, now, quiet=join and not self.joined)
                if join and self.conflict is None and not self.joined:
                    self.joined = True
                    self.join_error = None
                    # the seed's view may have been young (many joining at once): compare
                    # notes once more with somebody else soon
                    self._at(now + self.rng.uniform(1.0, 2.0), "push_pull", True)
            if join and not self.joined and self._join_pending == 0 and self.conflict is None:
                seeds = ", ".join(f"{h}:{p}" for h, p in self._seeds)
                self.join_error = f"no seed answered ({seeds}); retrying every {self.config.join_retry:g} s"
                self._note(self.join_error)
                if not self._join_retry_due:
                    self._join_retry_due = True
                    self._at(now + self.config.join_retry, "join_retry")
        except Exception as exc:
            c["internal_errors"] += 1
            self._note(f"internal error merging a push-pull reply from {dest}: {exc!r}")

    def tick(self, now: float) -> None:
        timers = self._timers
        if not timers or self.conflict is not None:
            return
        late = now - timers[0][0] > self.config.probe_interval / 2
        if late:
            self.counters["late_ticks"] += 1
            self.awareness.apply(1)
            self._probe = self._failed_probe = None  # judged on a stale clock: not at all
        while timers and timers[0][0] <= now:
            _when, _seq, kind, arg = heapq.heappop(timers)
            if late and kind == "suspect":
                # our own loop was late: let queued packets (a refutation?) in first
                self._at(now + self.config.probe_interval, kind, arg)
                continue
            getattr(self, "_on_" + kind)(now, arg)

    def next_wakeup(self) -> float:
        if self.conflict is not None or not self._timers:
            return math.inf
        return self._timers[0][0]

    def take_outgoing(self) -> list[SendPacket | PushPull]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[tuple[str, Member]]:
        ev, self._events = self._events, []
        return ev

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def members(self) -> list[Member]:
        return [n.member() for _, n in sorted(self._nodes.items())]

    def get(self, name: str) -> Member | None:
        n = self._nodes.get(name)
        return None if n is None else n.member()

    def live_names(self) -> list[str]:
        return sorted(n.name for n in self._nodes.values() if n.state in _LIVE)

    # For simulations and tests: start from a known view without joining.

    def self_update(self) -> m.Update:
        return self._me.update(full=True)

    def install(self, updates: list[m.Update], now: float) -> None:
        """Adds members we do not know yet, silently (no events, no broadcasts)."""
        for u in updates:
            if u.name not in self._nodes:
                self._add(u, now)
        self.joined = True

    # ------------------------------------------------------------------
    # Timers

    def _at(self, when: float, kind: str, arg=None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, arg))

    def _reap_every(self) -> float:
        return max(self.config.probe_interval, self.config.dead_reap / 20)

    def _on_probe(self, now: float, _arg) -> None:
        c = self.config
        self._at(now + self.awareness.scale(c.probe_interval), "probe")
        failed, self._failed_probe = self._failed_probe, None
        if failed is not None and failed.nacks < failed.expected:
            self.awareness.apply(failed.expected - failed.nacks)  # NACKs we asked for never came
        probe, self._probe = self._probe, None
        if probe is not None:
            self._judge(probe, now)
        if self._leaving:
            return
        target = self._next_target()
        if target is None:
            return
        self._seq = (self._seq + 1) & m.MAX_SEQ
        self._probe = _Probe(self._seq, target.name)
        self.counters["probes"] += 1
        self._send(target.addr, m.ping_fields(self.name, self.epoch, self._seq, target.name, self._suspicion_of(target)))
        self._at(now + self.awareness.scale(c.probe_timeout), "indirect", self._seq)

    def _on_indirect(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        target = self._nodes.get(probe.target)
        if target is None or target.state not in _LIVE:
            return
        helpers = self._random_others(self.config.indirect_checks, lambda n: n.state == ALIVE and n is not target)
        fields = m.ping_req_fields(self.name, self.epoch, seq, target.name, target.addr, self._suspicion_of(target))
        for h in helpers:
            self._send(h.addr, fields)
        probe.expected = len(helpers)
        self.counters["indirect_probes"] += len(helpers)

    def _judge(self, probe: _Probe, now: float) -> None:
        if probe.acked:
            self.awareness.apply(-1)
            target = self._nodes.get(probe.target)
            if target is not None and target.state == SUSPECT:
                # it answers but its refutation has not reached us: ask again (the
                # ping carries the suspicion, its ack our suspect's alive)
                self._probe_first[target.name] = None
            return
        self.counters["probe_failures"] += 1
        if probe.expected == 0:
            self.awareness.apply(1)  # nobody to ask: we may be the one cut off
        else:
            self._failed_probe = probe  # its NACKs still count until the next probe
        target = self._nodes.get(probe.target)
        if target is not None and target.state in _LIVE:
            self._suspect(target, target.incarnation, self.name, now)

    def _on_gossip(self, now: float, _arg) -> None:
        c = self.config
        self._at(now + c.gossip_interval, "gossip")
        if not len(self._bq):
            return
        fields = m.gossip_fields(self.name, self.epoch)
        for t in self._random_others(c.gossip_nodes, lambda n: n.state in _LIVE):
            if not self._send(t.addr, fields, need_updates=True):
                return
            self.counters["gossip_packets"] += 1
        # and a copy, not counted as a transmission, to one recently dead member:
        # if it is alive after all, it learns it must refute
        horizon = now - c.gossip_to_dead
        dead = self._random_others(1, lambda n: n.state == DEAD and n.since > horizon)
        if dead:
            self._send(dead[0].addr, fields, need_updates=True, peek=True)

    def _on_push_pull(self, now: float, once) -> None:
        c = self.config
        n = self._live
        scale = 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1
        if not once:
            self._at(now + c.push_pull_interval * scale, "push_pull")
        if self._leaving or not self.joined:
            return
        peers = self._random_others(1, lambda x: x.state != LEFT)
        if peers:
            self.counters["push_pulls"] += 1
            self._push_pull(peers[0].addr, False)
        if self._seeds:
            # a seed we hold dead or no longer know (a partition outlasted dead_reap?): try it
            live = {x.addr for x in self._nodes.values() if x.state in _LIVE}
            lost = [s for s in self._seeds if s not in live]
            if lost:
                self.counters["push_pulls"] += 1
                self._push_pull(self.rng.choice(lost), False)

    def _on_join_retry(self, now: float, _arg) -> None:
        self._join_retry_due = False
        if not self.joined and not self._leaving and self._join_pending == 0 and self._seeds:
            self._send_joins()

    def _on_reap(self, now: float, _arg) -> None:
        self._at(now + self._reap_every(), "reap")
        gone, limit = self._gone, now - self.config.dead_reap
        while gone and gone[0][0] <= limit:
            since, name = gone.popleft()
            node = self._nodes.get(name)
            if node is not None and node.state in _GONE and node.since == since and node is not self._me:
                self._remove(node)
                self._event("reaped", node)

    def _on_relay(self, now: float, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            requester, their_seq, _ = relay
            self._send(requester, m.ack_fields(m.NACK, self.name, self.epoch, their_seq))

    def _on_suspect(self, now: float, name: str) -> None:
        node = self._nodes.get(name)
        if node is None or node.state != SUSPECT or node.suspicion is None:
            return
        if node.suspicion.deadline > now:
            return  # an older timer; the current one is queued
        self._declare(node, DEAD, node.incarnation, self.name, now)

    # ------------------------------------------------------------------
    # Packets

    def _handle(self, p: m.Packet, src: tuple[str, int], now: float) -> None:
        sender = self._nodes.get(p.sender)
        known = sender is not None and sender is not self._me and sender.addr == src
        kind = p.kind
        if not known and kind != m.PING and kind != m.GOSSIP:
            self.counters["unknown_sender"] += 1
            self._note(f"dropped a {m.KIND_NAMES[kind]} from unknown sender {p.sender!r} at {src}")
            return
        self._merge_updates(p, src, known, now)
        c = self.counters
        if kind == m.PING:
            if p.target != self.name:
                c["wrong_target"] += 1
                return
            extra = None
            if p.suspicion is not None:
                # the number carries no epoch: one above ours is an earlier life of ours
                # (a restart the pinger still suspects) or a forgery that adopted a
                # forged alive of ours; one below ours is stale
                self._accused(p.suspicion, lambda: f"a ping from {p.sender!r} at {src} suspecting us at incarnation {p.suspicion}, above {STEP_OVER_MAX}")
                # the pinger suspects us: whatever the queue holds, answer with our alive
                extra = m.encode_update(self._me.update())
            if not known and not self._leaving:
                self._sync_with(p.sender, src, now)
            self._send(src, m.ack_fields(m.ACK, self.name, self.epoch, p.seq), extra=extra)
        elif kind == m.ACK:
            probe = self._probe
            if probe is not None and probe.seq == p.seq:
                probe.acked = True
            elif p.seq in self._relays:
                requester, their_seq, suspected = self._relays.pop(p.seq)
                # the requester suspects the target: relay its refutation along with the ack
                extra = m.encode_update(sender.update()) if suspected and sender.state == ALIVE else None
                self._send(requester, m.ack_fields(m.ACK, self.name, self.epoch, their_seq), extra=extra)
            else:
                c["stale_messages"] += 1
        elif kind == m.NACK:
            for probe in (self._probe, self._failed_probe):
                if probe is not None and probe.seq == p.seq:
                    probe.nacks += 1
                    break
            else:
                c["stale_messages"] += 1
        elif kind == m.PING_REQ:
            self._seq = (self._seq + 1) & m.MAX_SEQ
            self._relays[self._seq] = (src, p.seq, p.suspicion is not None)
            self._send(p.target_addr, m.ping_fields(self.name, self.epoch, self._seq, p.target, p.suspicion))
            self._at(now + self.config.probe_timeout, "relay", self._seq)

    def _merge_updates(self, p: m.Packet, src: tuple[str, int], known: bool, now: float) -> None:
        dropped = 0
        for u in p.updates:
            if known or u.state == ALIVE:
                self._apply(u, p.sender, now)
            else:
                dropped += 1
        if dropped:
            self.counters["unknown_sender"] += 1
            self._note(f"ignored {dropped} suspect/dead/left updates from unknown sender {p.sender!r} at {src}")

    def _merge(self, msg: m.PushPullMsg, now: float, quiet: bool = False) -> None:
        for u in msg.entries:
            if u.state == DEAD and u.name != self.name:
                # somebody else's verdict: a suspicion here, our own timer decides
                node = self._nodes.get(u.name)
                if node is not None:
                    self._suspect_update(node, u.incarnation, msg.sender, now)
            elif quiet and u.name not in self._nodes and u.name != self.name:
                if u.state == ALIVE:
                    self._event("join", self._add(u, now))
            else:
                self._apply(u, msg.sender, now)

    # ------------------------------------------------------------------
    # State changes

    def _apply(self, u: m.Update, sender: str, now: float) -> None:
        if u.name == self.name:
            self._about_self(u, now)
            return
        node = self._nodes.get(u.name)
        if u.state == ALIVE:
            self._alive(u, node, now)
        elif node is None:
            return  # news about a member we do not know (or already reaped)
        elif u.state == SUSPECT:
            self._suspect_update(node, u.incarnation, u.origin or sender, now)
        elif u.incarnation < node.incarnation:
            self.counters["stale_messages"] += 1
        elif node.state not in _GONE:
            self._declare(node, u.state, u.incarnation, u.origin or sender, now)

    def _alive(self, u: m.Update, node: _Node | None, now: float) -> None:
        if node is None:
            node = self._add(u, now)
            self._event("join", node)
            self._broadcast(node.update())
            return
        if u.epoch != node.epoch and u.addr != node.addr and node.state in _LIVE:
            self._report_conflict(u, node)
            return
        if u.incarnation <= node.incarnation:
            if u.incarnation < node.incarnation:
                self.counters["stale_messages"] += 1
            return
        prev = node.state
        changed = u.addr != node.addr or (u.meta or {}) != node.meta
        node.incarnation, node.epoch, node.addr, node.meta = u.incarnation, u.epoch, u.addr, u.meta or {}
        node.suspicion = None
        if prev != ALIVE:
            node.state = ALIVE
            node.since = now
            if prev in _GONE:
                self._live += 1
            self._event("join" if prev == LEFT else "alive", node)
        elif changed:
            self._event("update", node)
        self._broadcast(node.update())

    def _suspect_update(self, node: _Node, inc: int, accuser: str, now: float) -> None:
        if inc < node.incarnation:
            self.counters["stale_messages"] += 1
        elif node.state in _LIVE:
            self._suspect(node, inc, accuser, now)

    def _suspect(self, node: _Node, inc: int, accuser: str, now: float) -> None:
        was_suspect = node.state == SUSPECT and node.suspicion is not None
        if was_suspect and inc <= node.suspicion.incarnation:
            if node.suspicion.confirm(accuser):
                self._at(max(now, node.suspicion.deadline), "suspect", node.name)
                self._broadcast(node.update(SUSPECT, origin=accuser))
            return
        # a new suspicion, or one at a higher incarnation: the member refuted the
        # old one in between (we missed its alive), so the old evidence is void
        c = self.config
        n = self._live
        k = c.suspicion_mult - 2 if n - 2 >= c.suspicion_mult - 2 else 0
        low, high = suspicion_bounds(c.suspicion_mult, c.suspicion_max_mult, n, c.probe_interval)
        node.state = SUSPECT
        node.incarnation = inc
        node.since = now
        node.suspicion = Suspicion(inc, accuser, k, low, high, now)
        self._at(node.suspicion.deadline, "suspect", node.name)
        self.counters["suspicions"] += 1
        if accuser != self.name:  # probe a member as soon as we hear it is suspect
            self._probe_first[node.name] = None
        if not was_suspect:
            self._event("suspect", node)
        self._broadcast(node.update(SUSPECT, origin=accuser))

    def _declare(self, node: _Node, state: int, inc: int, origin: str, now: float) -> None:
        """``node`` (alive or suspect) becomes dead or left."""
        node.state = state
        node.incarnation = inc
        node.since = now
        node.suspicion = None
        self._live -= 1
        self._gone.append((now, node.name))
        self._event(m.STATE_NAMES[state], node)
        self._broadcast(node.update(origin=origin))

    def _about_self(self, u: m.Update, now: float) -> None:
        me = self._me
        if self._leaving:
            return
        if u.epoch != self.epoch:
            if u.addr != self.addr and u.state in _LIVE:
                if not self.joined:
                    self.conflict = (
                        f"the name {self.name!r} is already used by a live member at {u.addr[0]}:{u.addr[1]}; "
                        "choose another name or stop that member"
                    )
                    self._note(self.conflict)
                    self._timers.clear()
                    self._out.clear()
                self._report_conflict(u, me)
            elif u.incarnation > STEP_OVER_MAX:
                self._forged(f"an earlier life of ours at incarnation {u.incarnation}, above {STEP_OVER_MAX}")
            elif u.incarnation >= me.incarnation:
                self._refute(u.incarnation)  # an earlier life of ours: step over it
            return
        # our own life: we issued no incarnation above ours, so one above it is forged
        # or corrupt. An alive one we ignore (the old code did too); but others may
        # have adopted it, and their accusations then repeat it: we step over those
        # like an earlier life's (capped), or a forged alive would have us declared dead
        def forged() -> str:
            return f"a {m.STATE_NAMES[u.state]} update about us at incarnation {u.incarnation}, above ours ({me.incarnation})"

        if u.state == ALIVE:
            if u.incarnation > me.incarnation:
                self._forged(forged())
        elif not self._accused(u.incarnation, forged):
            self.counters["stale_messages"] += 1

    def _accused(self, inc: int, forged: Callable[[], str]) -> bool:
        """The rule for an accusation of ours (suspect or dead news, a ping's
        suspicion) at incarnation ``inc``: at ours, we refute it; above ours up
        to STEP_OVER_MAX, we refute above it (an earlier life's, or one
        repeating a forged alive of ours); higher, it is forged (``forged()``
        says what). False for one below ours: stale, nothing done."""
        if inc < self._me.incarnation:
            return False
        if inc == self._me.incarnation or inc <= STEP_OVER_MAX:
            self._refute(inc)
        else:
            self._forged(forged())
        return True

    def _refute(self, above: int) -> None:
        """Broadcasts our alive one incarnation above ``above`` (ours, or an
        accusation above ours: at most STEP_OVER_MAX)."""
        if self._leaving:
            return
        if not self._raise_incarnation(above + 1, "refute"):
            return
        self.counters["refutations"] += 1
        self.awareness.apply(1)
        self._broadcast(self._me.update())

    def _raise_incarnation(self, inc: int, why: str, quiet: bool = False) -> bool:
        """Our incarnation becomes ``inc``, unless that is past the largest one
        every member decodes: then it stays where it is (noted) and we return False.
        Unreachable in practice (see STEP_OVER_MAX), but no path may exceed it."""
        if inc > m.MAX_INCARNATION:
            if not quiet:
                self._note(f"cannot {why}: our incarnation is already the largest ({self._me.incarnation})")
            return False
        self._me.incarnation = inc
        return True

    def _forged(self, what: str) -> None:
        self.counters["forged_incarnations"] += 1
        self._note(f"ignored {what}: we never issued it (forged or corrupt)")

    def _report_conflict(self, u: m.Update, node: _Node) -> None:
        key = (u.name, u.addr)
        if key in self._conflicts_seen:
            return
        self._conflicts_seen.add(key)
        self.counters["conflicts"] += 1
        self._note(
            f"member {u.name!r} at {u.addr[0]}:{u.addr[1]} claims a name already used by the live "
            f"member at {node.addr[0]}:{node.addr[1]}; ignoring the newcomer"
        )
        claimant = Member(u.name, u.addr, u.meta or {}, m.STATE_NAMES[u.state], u.incarnation, node.since)
        self._events.append(("conflict", claimant))

    # ------------------------------------------------------------------
    # Bookkeeping

    def _add(self, u: m.Update, now: float) -> _Node:
        node = _Node(u, now, len(self._others))
        self._nodes[u.name] = node
        self._others.append(u.name)
        if u.state in _LIVE:
            self._live += 1
        else:
            self._gone.append((now, u.name))
        lst = self._probe_list  # a newcomer goes to a random place of the current round
        lst.append(u.name)
        j = self.rng.randrange(self._probe_pos, len(lst)) if self._probe_pos < len(lst) else len(lst) - 1
        lst[j], lst[-1] = lst[-1], lst[j]
        return node

    def _remove(self, node: _Node) -> None:
        del self._nodes[node.name]
        others, i = self._others, node.index
        last = others.pop()
        if last != node.name:
            others[i] = last
            self._nodes[last].index = i
        self._probe_first.pop(node.name, None)

    def _next_target(self) -> _Node | None:
        nodes = self._nodes
        while self._probe_first:
            name = next(iter(self._probe_first))
            del self._probe_first[name]
            node = nodes.get(name)
            if node is not None and node.state == SUSPECT:
                return node
        for _ in range(2):
            lst = self._probe_list
            while self._probe_pos < len(lst):
                node = nodes.get(lst[self._probe_pos])
                self._probe_pos += 1
                if node is not None and node.state in _LIVE:
                    return node
            self._probe_list = list(self._others)  # a new round
            self.rng.shuffle(self._probe_list)
            self._probe_pos = 0
        return None

    def _random_others(self, k: int, accept) -> list[_Node]:
        others, nodes = self._others, self._nodes
        if len(others) <= 4 * k:
            pool = [n for n in map(nodes.__getitem__, others) if accept(n)]
            return self.rng.sample(pool, min(k, len(pool)))
        chosen: dict[str, _Node] = {}
        rand = self.rng.randrange
        for _ in range(8 * k):
            node = nodes[others[rand(len(others))]]
            if node.name not in chosen and accept(node):
                chosen[node.name] = node
                if len(chosen) == k:
                    break
        return list(chosen.values())

    def _suspicion_of(self, node: _Node) -> int | None:
        return node.incarnation if node.state == SUSPECT else None

    def _broadcast(self, u: m.Update) -> int:
        return self._bq.queue(u.name, m.encode_update(u))

    def _transmit_limit(self) -> int:
        return self.config.retransmit_mult * math.ceil(math.log10(len(self._nodes) + 1))

    def _send(
        self, dest: tuple[str, int], fields: list, need_updates: bool = False, extra: bytes | None = None, peek: bool = False
    ) -> bool:
        limit = self._transmit_limit()
        taken = []

        def take(space: int) -> list[bytes]:
            if extra is not None:
                taken.append(extra)
                space -= len(extra)
            taken.extend(self._bq.peek(space) if peek else self._bq.take(space, limit))
            return taken

        data = m.encode_packet(fields, take, self.config.max_packet)
        if need_updates and not taken:
            return False
        self._out.append(SendPacket(dest, data))
        self.counters["packets_out"] += 1
        self.counters["bytes_out"] += len(data)
        return True

    def _state_bytes(self, join: bool) -> bytes:
        entries = [m.encode_update(n.update(full=True)) for n in self._nodes.values()]
        return m.encode_push_pull(self.name, self.epoch, join, entries)

    def _push_pull(self, dest: tuple[str, int], join: bool) -> None:
        data = self._state_bytes(join)
        self.counters["bytes_out"] += len(data)
        self._out.append(PushPull(dest, data, join))

    def _sync_with(self, name: str, src: tuple[str, int], now: float) -> None:
        """A member we do not know probes us (we missed its join). Exchange full
        state with it (over TCP, so its address is real), at most one such
        exchange per ``probe_interval`` and per pinger per ``push_pull_interval``.
        Not joined yet (our seeds do not answer, e.g. a restart while they are
        down), the exchange is a join through the pinger, as through a seed: a
        member of the farm that probes us knows it."""
        c = self.config
        if now < self._sync_at or self._synced_with.get(name, -math.inf) > now - c.push_pull_interval:
            return
        self._sync_at = now + c.probe_interval
        if len(self._synced_with) > 1000:
            self._synced_with.clear()
        self._synced_with[name] = now
        self.counters["push_pulls"] += 1
        join = not self.joined
        if join:
            self._join_pending += 1
        self._push_pull(src, join)

    def _send_joins(self) -> None:
        self._join_pending += len(self._seeds)  # (a join through a pinger may be pending too)
        for seed in self._seeds:
            self.counters["push_pulls"] += 1
            self._push_pull(seed, True)

    def _event(self, kind: str, node: _Node) -> None:
        self._events.append((kind, node.member()))

    def _note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def _bad(self, exc: m.BadMessage, src, what: str) -> None:
        self.counters["bad_packets"] += 1
        if "version" in str(exc):
            self.counters["bad_version"] += 1
        self._note(f"dropped a bad {what} from {src}: {exc}")
