"""Sessions changing owner (sans-I/O): the rules ``cluster/runtime.py`` follows.

- ``Takeovers`` remembers which partitions came to this member from whom, for
  ``TAKE_WINDOW`` seconds after a change of ring: a request for a session we
  lack in such a partition first asks the previous owner (TAKE), since the
  session may not have arrived yet (``Takeovers.take_first``, the one rule).
- ``moves`` says which held sessions go to which new owner; ``batches`` cuts
  them into requests that fit a frame; ``split`` cuts one session too big for
  a frame into parts that merge back into the whole (variables and data merge
  by version, so parts may arrive in any order).
- ``take_order`` says whom to ask for such a session: the previous owner,
  then every other member; ``Given`` keeps what a TAKE gave away, should the
  answer be lost.
- ``handoff_budget`` and ``handoff_requests`` size the HANDOFF requests.
- ``Backoff`` is the retry rule for "the farm's view is changing" (BUSY: the
  request did not run): short waits doubling up to a ceiling, until a deadline.
- ``join_deadlines`` and ``Leave`` time a member's joining and leaving.

Every timing constant of sessions changing owner is here; runtime.py sleeps
and waits by them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from .ring import Ring, partition_of, ring_for
from .router import KEYED, session_of

TAKE_WINDOW = 60.0  # seconds a new owner asks the previous one for sessions it lacks
TAKE_TIMEOUT = 2.0  # seconds a TAKE may take, BUSY answers retried included
GIVEN_KEEP = 30.0  # seconds a member remembers a session it gave, should the answer be lost
HANDOFF_TIMEOUT = 30.0  # seconds a HANDOFF request may take
HANDOFF_SETTLE = 0.2  # seconds a burst of membership changes gets to settle into one view before a handoff
SETTLE_TIME = 3.0  # seconds a client's request may wait for the farm's view to settle
SEED_WARNING = 3.0  # seconds without an answering seed before we say so
JOIN_GRACE = 5.0  # seconds a starting node with seeds waits to join before serving alone
LEAVE_ANNOUNCE = 2.0  # seconds a leaving member waits for the others to hear it leaves
LEAVE_POLL = 0.05  # how often it looks whether they have
LEAVE_HANDOFF = 5.0  # seconds it then keeps handing its sessions on
LEAVE_RETRY = 0.2  # pause between two rounds of that


class Takeovers:
    """Partitions this member took over, and from whom, until the window ends."""

    def __init__(self) -> None:
        self.previous: dict[int, str] = {}
        self.until = -math.inf  # the window's last instant

    def ring_changed(self, old: Ring, new: Ring, me: str, holding: bool, now: float) -> None:
        """Records the partitions ``new`` gives us that ``old`` gave to others.

        A member whose old ring was itself alone and that holds no session has
        just joined: what it now owns was the others', by the ring without it."""
        if set(old.members) <= {me} and not holding:
            old = ring_for(set(new.members) - {me})
        for p, (was, owner) in enumerate(zip(old.owners, new.owners)):
            if owner == me and was is not None and was != me:
                self.previous[p] = was
        self.until = now + TAKE_WINDOW

    def active(self, now: float) -> bool:
        """Whether any partition may still have sessions on their way here."""
        if self.previous and now > self.until:
            self.previous.clear()
        return bool(self.previous)

    def closes_at(self) -> float:
        """The first instant at which ``active`` is false again (whoever asks
        first then forgets the partitions); ``math.inf`` when nothing was
        taken over (or the window was seen closed). A caller whose decisions
        depend on ``active`` wakes then."""
        return math.nextafter(self.until, math.inf) if self.previous else math.inf

    def previous_owner(self, partition: int, now: float) -> str | None:
        return self.previous.get(partition) if self.active(now) else None

    def take_first(self, cmd: int, args: Any, now: float, held: Callable[[bytes], bool]) -> tuple[bytes, str] | None:
        """For a request about to run here: ``(session, previous owner)`` when
        it names a session whose partition came to us within ``TAKE_WINDOW``
        and that we lack (``held(session)`` false), so the previous owner is
        asked for it (TAKE) first; else None. ``held`` is asked only then."""
        if cmd not in KEYED:
            return None
        sid = session_of(args)
        if sid is None:
            return None
        previous = self.previous_owner(partition_of(sid), now)
        if previous is None or held(sid):
            return None
        return sid, previous


def take_order(previous: str, previous_state: str | None, members: Iterable[str], me: str) -> tuple[str | None, list[str]]:
    """Whom to ask for a session we own but lack: ``(first, then)``.

    ``first`` is the previous owner, asked alone, unless it is unknown to us
    (``previous_state`` None) or dead; if it does not give the session (gone,
    no answer, no longer has it), ``then`` are asked all at once: every other
    member of the ring (one may have received the session in a handoff under
    a view that differs from ours). Never ourselves, never ``previous`` twice."""
    first = previous if previous_state is not None and previous_state != "dead" else None
    return first, [name for name in members if name != me and name != previous]


class Given:
    """Sessions this member gave away by TAKE, kept ``keep`` seconds: an asker
    that lost our answer asks again and gets the same state (merging it twice
    is harmless)."""

    def __init__(self, keep: float = GIVEN_KEEP) -> None:
        self.keep = keep
        self._states: dict[bytes, tuple[list, float]] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._states)

    def add(self, sid: bytes, state: list, now: float) -> None:
        """Remembers a state given at ``now`` (a non-decreasing clock) and
        forgets those past keeping."""
        states = self._states
        while states:
            first = next(iter(states))
            if now - states[first][1] < self.keep:
                break
            del states[first]
        states.pop(sid, None)
        states[sid] = (state, now)

    def get(self, sid: bytes, now: float) -> list | None:
        """The state given for ``sid`` less than ``keep`` seconds ago, or None."""
        given = self._states.get(sid)
        return given[0] if given is not None and now - given[1] < self.keep else None


def moves(sids: Iterable[bytes], ring: Ring, me: str) -> dict[str, list[bytes]]:
    """The sessions held here that ``ring`` gives to others, by new owner."""
    out: dict[str, list[bytes]] = {}
    for sid in sids:
        owner = ring.owner(sid)
        if owner is not None and owner != me:
            out.setdefault(owner, []).append(sid)
    return out


def _var_cost(name: bytes, value: bytes) -> int:
    """About the encoded size of one variable in a session's state, in bytes."""
    return len(name) + len(value) + 16


def state_size(sid: bytes, classname: bytes, data: bytes, variables: dict) -> int:
    """About the encoded size of a session's state, in bytes."""
    return 64 + len(sid) + len(classname) + len(data) + sum(_var_cost(n, v) for n, (v, _) in variables.items())


def batches(sized: list[tuple[bytes, int]], budget: int) -> list[list[bytes]]:
    """Groups ``(sid, size)`` into requests of at most ``budget`` bytes; a
    session bigger than that goes alone (and in parts, see ``split``)."""
    out: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for sid, cost in sized:
        if current and size + cost > budget:
            out.append(current)
            current, size = [], 0
        current.append(sid)
        size += cost
    if current:
        out.append(current)
    return out


def handoff_budget(max_frame: int) -> int:
    """Bytes of session states in one HANDOFF request: half the frame limit,
    well inside the receiver's (members share the configuration)."""
    return max_frame // 2


def handoff_requests(states: list[list], budget: int) -> list[list[list]]:
    """The session states each HANDOFF request of a batch carries: the batch
    in one request, or a lone session in parts of about ``budget`` bytes,
    one request each (a session bigger than a frame)."""
    if len(states) > 1:
        return [states]
    return [[part] for part in split(states[0], budget)]


def split(state: list, budget: int) -> list[list]:
    """A session's state as parts of about ``budget`` bytes at most (the
    state's optional ninth element, its lock, on the first one)."""
    sid, classname, data, data_version, variables, ctime, atime, timeout, *lock = state
    parts, chunk, size = [], [], len(data)
    for var in variables:
        cost = _var_cost(var[0], var[1])
        if chunk and size + cost > budget:
            parts.append(chunk)
            chunk, size = [], 0
        chunk.append(var)
        size += cost
    parts.append(chunk)
    out = [
        [sid, classname, data if i == 0 else b"", data_version if i == 0 else 0, chunk, ctime, atime, timeout]
        for i, chunk in enumerate(parts)
    ]
    out[0] += lock  # a lock (``[key, lease_ms, moves]``) goes with the first part, with the record:
    return out      # the new owner must not grant it afresh while the other parts arrive


def fast_path(ready: bool, ring: Ring, me: str, taking_over: bool) -> bool:
    """Whether every request may run here without routing (a farm of one):
    ready (joined, or done waiting for seeds), alone in the ring (or in an
    empty one), and no partition taken over within ``TAKE_WINDOW``
    (``Takeovers.active``: a session may still be on its way here)."""
    return ready and set(ring.members) <= {me} and not taking_over


class Backoff:
    """Waits for retrying a request the farm refused while its view changes."""

    def __init__(self, now: float, limit: float, first: float = 0.02, most: float = 0.2):
        self.deadline = now + limit
        self.delay = first
        self.most = most

    def next(self, now: float) -> float | None:
        """Seconds to wait before the next try, or None: give up."""
        delay = self.delay
        if now + delay > self.deadline:
            return None
        self.delay = min(delay * 2, self.most)
        return delay


def join_deadlines(now: float) -> tuple[float, float]:
    """For a member with seeds starting at ``now``: when it says none of its
    seeds answers yet, and when it stops waiting to join and serves alone (a
    farm's first member may list seeds not up yet). (Without seeds it has
    joined at once: nothing to wait for.)"""
    return now + SEED_WARNING, now + JOIN_GRACE


class Leave:
    """The timing of a graceful leave: wait up to ``LEAVE_ANNOUNCE`` for the
    others to hear that we leave (sessions sent before would be refused),
    then hand the sessions on, in rounds, for up to ``LEAVE_HANDOFF`` seconds."""

    def __init__(self, now: float) -> None:
        self.announce_until = now + LEAVE_ANNOUNCE
        self.handoff_until: float | None = None

    def announcing(self, now: float, announced: bool) -> float | None:
        """Seconds to wait before looking again whether the announcement went
        out, or None: hand off now (it went out, or we waited long enough)."""
        if announced or now >= self.announce_until:
            if self.handoff_until is None:
                self.handoff_until = now + LEAVE_HANDOFF
            return None
        return min(LEAVE_POLL, self.announce_until - now)

    def hand_off(self, now: float, others: int, held: int) -> bool:
        """Whether to (again) hand the ``held`` sessions to the ``others``
        live members: both there, and time left since the announcement."""
        if self.handoff_until is None:
            raise RuntimeError("announcing() first")
        return others > 0 and held > 0 and now < self.handoff_until

    def pause(self, held: int) -> float:
        """Seconds between two rounds: none when nothing is left to hand on."""
        return LEAVE_RETRY if held else 0.0
