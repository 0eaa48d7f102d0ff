"""The queue of updates waiting to be piggybacked (sans-I/O).

As memberlist's ``TransmitLimitedQueue``: one entry per member name (a newer
update about a member replaces the queued one, which would only be stale);
each packet takes the entries sent the fewest times first, newest first among
equals, as many as fit in the space left; an entry is dropped once sent
``limit`` times, where the caller computes ``limit = retransmit_mult x
ceil(log10(N + 1))`` for the current cluster size.

Entries are stored already encoded, so packing a packet is concatenation.
"""

from __future__ import annotations


class _Entry:
    __slots__ = ("name", "data", "transmits", "id")

    def __init__(self, name: str, data: bytes, ident: int):
        self.name = name
        self.data = data
        self.transmits = 0
        self.id = ident


class BroadcastQueue:
    __slots__ = ("_entries", "_next_id", "_dirty", "_order")

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._next_id = 0
        self._order: list[_Entry] = []
        self._dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def queue(self, name: str, data: bytes) -> int:
        """Queues ``data`` about member ``name``, replacing any older entry; returns its id."""
        self._next_id += 1
        self._entries[name] = _Entry(name, data, self._next_id)
        self._dirty = True
        return self._next_id

    def pending(self, name: str, ident: int) -> bool:
        """Whether the entry ``ident`` about ``name`` is still queued (not yet sent ``limit`` times)."""
        e = self._entries.get(name)
        return e is not None and e.id == ident

    def peek(self, space: int) -> list[bytes]:
        """What ``take`` would return, without counting it as sent."""
        return [e.data for e in self._fit(space)]

    def take(self, space: int, limit: int) -> list[bytes]:
        """Entries that fit in ``space`` bytes, counted as sent once more."""
        taken = self._fit(space)
        if taken:
            for e in taken:
                e.transmits += 1
                if e.transmits >= limit:
                    del self._entries[e.name]
            self._dirty = True
        return [e.data for e in taken]

    def _fit(self, space: int) -> list[_Entry]:
        if not self._entries or space <= 0:
            return []
        if self._dirty:
            self._order = sorted(self._entries.values(), key=lambda e: (e.transmits, -e.id))
            self._dirty = False
        used = 0
        taken: list[_Entry] = []
        for e in self._order:
            cost = len(e.data)
            if used + cost > space:
                if used + 16 > space:
                    break  # nothing useful can fit any more
                continue
            used += cost
            taken.append(e)
        return taken
