"""The hash ring: which member owns which session (sans-I/O, pure).

Theory of operation
-------------------
The hash space is cut into ``PARTITIONS`` (4096) equal partitions, Dynamo's
"strategy 3": a session id belongs to the partition given by the top 12 bits
of its MD5 digest (read big-endian; a hash every client language has built
in, not a security measure), so partitions hold the same share of sessions
and only whole partitions ever move.

Partitions are given to members by *rendezvous hashing with a cap*:

1. Every (member, partition) pair has a 64-bit weight read from SHAKE-128 of
   the member's name (a standard function: the same on every machine and
   Python version). Each partition goes to its heaviest member. On its own
   this moves exactly the partitions that must move when a member joins
   (those the newcomer wins) or leaves (the leaver's), nothing else.
2. Loads then follow a binomial law (with 100 members a few hold 1.3x the
   average), so a member above ``cap = max(ceil(Q/N), floor(SLACK * Q/N))``
   gives up its lightest partitions, each to the heaviest member still under
   the cap. Only these few partitions can move for another reason than the
   change itself.

So the busiest member holds at most ``SLACK`` (1.12) times the average, and
a join or leave moves at most ``1/N + MOVE_MARGIN`` of the sessions: the 1/N
share that must move, its binomial noise (at most the cap), and the cap's
reshuffles (measured: under 1% over random farms of 3 to 100 members;
property-tested in ``tests/test_ring.py``). Computing a ring of 100 members
takes about 40 ms; it is done once per membership change and cached.

The ring is a pure function of the set of member names: every node with the
same view computes the same owners, and a node needs to know nothing else.
The preference list of a partition (its owner, then the next distinct owners
clockwise) names the members that will hold its replicas.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from array import array
from typing import Iterable

PARTITIONS = 4096  # a power of two: the partition is the top bits of the hash
_SHIFT = 64 - (PARTITIONS.bit_length() - 1)
SLACK = 1.12
MOVE_MARGIN = 0.03  # the stated bound: a join or leave moves <= 1/N + 3% of sessions
_INDEX_BITS = 12  # a weight's low bits hold its member's index: ties break the same everywhere
MAX_MEMBERS = 1 << _INDEX_BITS
RULES = "md5"  # the placement rules' version, part of the ring id: "md5" = sessions partitioned by MD5


def partition_of(sid: bytes) -> int:
    """The partition of a session id (stable across processes and versions)."""
    return int.from_bytes(hashlib.md5(sid, usedforsecurity=False).digest()[:8], "big") >> _SHIFT


def _weights(name: str, index: int, partitions: int) -> array:
    """The member's weight for every partition, its index in the low bits.

    One SHAKE-128 output read as little-endian 64-bit words; the index goes
    in with two big-integer operations instead of a Python loop."""
    size = 8 * partitions
    raw = int.from_bytes(hashlib.shake_128(b"msession-ring\0" + name.encode()).digest(size), "little")
    raw = (raw & _mask(partitions)) | (_ones(partitions) * index)
    out = array("Q", raw.to_bytes(size, "little"))
    if sys.byteorder == "big":
        out.byteswap()
    return out


@functools.lru_cache(maxsize=4)
def _ones(partitions: int) -> int:
    return int.from_bytes((1).to_bytes(8, "little") * partitions, "little")


@functools.lru_cache(maxsize=4)
def _mask(partitions: int) -> int:
    word = ((1 << 64) - 1) ^ ((1 << _INDEX_BITS) - 1)
    return int.from_bytes(word.to_bytes(8, "little") * partitions, "little")


class Ring:
    """Owners of the ``PARTITIONS`` partitions for one set of members."""

    __slots__ = ("members", "owners", "_by_member", "id")

    def __init__(self, members: Iterable[str], partitions: int = PARTITIONS, slack: float = SLACK):
        self.members = tuple(sorted(set(members)))
        n = len(self.members)
        if n > MAX_MEMBERS:
            raise ValueError(f"a ring holds at most {MAX_MEMBERS} members, not {n}")
        self.owners: list[str | None] = [None] * partitions
        self._by_member: dict[str, list[int]] = {m: [] for m in self.members}
        if n:
            rows = [_weights(m, i, partitions) for i, m in enumerate(self.members)]
            best = list(map(max, *rows)) if n > 1 else list(rows[0])
            low = MAX_MEMBERS - 1
            owner = [w & low for w in best]
            cap = max(-(-partitions // n), math.floor(partitions / n * slack))
            load = [0] * n
            for i in owner:
                load[i] += 1
            if max(load) > cap:
                evicted = []
                for i in range(n):
                    if load[i] > cap:
                        mine = sorted((best[p], p) for p in range(partitions) if owner[p] == i)
                        evicted.extend(mine[: load[i] - cap])  # its lightest
                        load[i] = cap
                for _w, p in sorted(evicted, reverse=True):
                    j = max(row[p] for i, row in enumerate(rows) if load[i] < cap) & low
                    owner[p] = j
                    load[j] += 1
            for p, i in enumerate(owner):
                member = self.members[i]
                self.owners[p] = member
                self._by_member[member].append(p)
        # Names the view and the placement rules: two nodes with the same id agree on
        # every owner. RULES changes whenever the rules do (the session hash...).
        digest = hashlib.blake2b("\0".join((RULES, *self.members)).encode(), digest_size=4).hexdigest()
        self.id = digest

    def __len__(self) -> int:
        return len(self.members)

    def owner(self, sid: bytes) -> str | None:
        """The member owning ``sid``; None when the ring has no members."""
        return self.owners[partition_of(sid)]

    def partitions_of(self, member: str) -> list[int]:
        return list(self._by_member.get(member, ()))

    def preference_list(self, partition: int, n: int) -> list[str]:
        """The owner of ``partition``, then the next distinct owners clockwise (n at most)."""
        out: list[str] = []
        q = len(self.owners)
        for i in range(q):
            member = self.owners[(partition + i) % q]
            if member is not None and member not in out:
                out.append(member)
                if len(out) == min(n, len(self.members)):
                    break
        return out

    def summary(self) -> dict:
        """Partitions and share of the hash space per member, for ``msession status``."""
        q = len(self.owners)
        return {
            "ring": self.id,
            "partitions": q,
            "members": {m: {"partitions": len(p), "share": len(p) / q} for m, p in self._by_member.items()},
        }


@functools.lru_cache(maxsize=16)
def _cached(members: frozenset[str]) -> Ring:
    return Ring(members)


def ring_for(members: Iterable[str]) -> Ring:
    """The ring of a set of members, shared by every caller with the same set."""
    return _cached(frozenset(members))
