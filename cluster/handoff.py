"""Sessions changing owner (sans-I/O): the rules ``cluster/runtime.py`` follows.

- ``Takeovers`` remembers which partitions came to this member from whom, for
  ``TAKE_WINDOW`` seconds after a change of ring: a request for a session we
  lack in such a partition first asks the previous owner (TAKE), since the
  session may not have arrived yet (``Takeovers.take_first``, the one rule).
- ``moves`` says which held sessions go to which new owner; ``batches`` cuts
  them into requests that fit a frame; ``split`` cuts one session too big for
  a frame into parts that merge back into the whole (variables and data merge
  by version, so parts may arrive in any order).
- ``Backoff`` is the retry rule for "the farm's view is changing" (BUSY: the
  request did not run): short waits doubling up to a ceiling, until a deadline.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from .ring import Ring, partition_of, ring_for
from .router import KEYED, session_of

TAKE_WINDOW = 60.0  # seconds a new owner asks the previous one for sessions it lacks


class Takeovers:
    """Partitions this member took over, and from whom, until the window ends."""

    def __init__(self) -> None:
        self.previous: dict[int, str] = {}
        self.since = -math.inf

    def ring_changed(self, old: Ring, new: Ring, me: str, holding: bool, now: float) -> None:
        """Records the partitions ``new`` gives us that ``old`` gave to others.

        A member whose old ring was itself alone and that holds no session has
        just joined: what it now owns was the others', by the ring without it."""
        if set(old.members) <= {me} and not holding:
            old = ring_for(set(new.members) - {me})
        for p, (was, owner) in enumerate(zip(old.owners, new.owners)):
            if owner == me and was is not None and was != me:
                self.previous[p] = was
        self.since = now

    def active(self, now: float) -> bool:
        """Whether any partition may still have sessions on their way here."""
        if self.previous and now - self.since > TAKE_WINDOW:
            self.previous.clear()
        return bool(self.previous)

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


def split(state: list, budget: int) -> list[list]:
    """A session's state as parts of about ``budget`` bytes at most."""
    sid, classname, data, data_version, variables, ctime, atime, timeout = state
    parts, chunk, size = [], [], len(data)
    for var in variables:
        cost = _var_cost(var[0], var[1])
        if chunk and size + cost > budget:
            parts.append(chunk)
            chunk, size = [], 0
        chunk.append(var)
        size += cost
    parts.append(chunk)
    return [
        [sid, classname, data if i == 0 else b"", data_version if i == 0 else 0, chunk, ctime, atime, timeout]
        for i, chunk in enumerate(parts)
    ]


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
