"""Session locks with FIFO waiters and leases (sans-I/O: the caller passes time).

Theory of operation
-------------------
A lock belongs to a session id (not to the session record: a save handler may
lock an id before the session is first written, and a session destroyed while
locked stays locked until its holder unlocks). Taking a free lock returns a
random non-zero key below 2**53 (exact in every client language) and sets a
lease deadline. A locker that finds the lock held may queue a ``Waiter``;
waiters are granted strictly in arrival order, when the holder unlocks or its
lease runs out. ``release`` with a wrong key fails and keeps the lock.

Every grant returns the ``Waiter`` objects that became holders, so the I/O
layer can wake exactly those; nothing here blocks or sleeps.

In a farm a lock moves with its session (docs/cluster.md). ``give_up`` takes
a lock out of the table as a wire value ``[key, lease_ms left, moves]`` and
returns its waiters, marked ``moved`` (the I/O layer sends them to the new
owner); ``adopt`` installs such a lock on the new owner, where its holder's
key still unlocks it. A state can arrive twice (a TAKE and a HANDOFF in
flight, a retried TAKE): a lock that moved and has ended here (released,
expired, passed on, or given up again) keeps its key and its count of moves
in ``_ended`` for ``ENDED_KEEP`` seconds, and a copy that has moved no more
times than that is late: refused rather than locking the session again. A
lock that really comes back (A to B to C, then back to B) has moved more.
"""

from __future__ import annotations

import heapq
import math
import os
import struct
from collections import deque
from typing import Any

from .store import StoreError

MAX_KEY = 2**53 - 1
ENDED_KEEP = 120.0  # seconds an adopted lock's key is remembered after it ended (> HANDOFF_TIMEOUT + GIVEN_KEEP)


class Waiter:
    __slots__ = ("lease", "key", "handle", "moved")

    def __init__(self, lease: float, handle: Any = None):
        self.lease = lease
        self.key = 0  # set when granted
        self.handle = handle  # for the I/O layer (e.g. a trio.Event)
        self.moved = False  # the lock moved to another member with its session: ask there


class _Lock:
    __slots__ = ("key", "deadline", "waiters", "entry", "moves")

    def __init__(self, key: int, deadline: float):
        self.key = key
        self.deadline = deadline
        self.moves = 0  # times it moved to another member with its session (``give_up``, ``adopt``)
        self.waiters: deque[Waiter] = deque()
        # This lock's live entry in the lease heap (None while it has none):
        # its deadline is never later than ``deadline``. Other entries naming
        # the same sid are stale and skipped.
        self.entry: tuple[float, bytes, int] | None = None


_KEY_BLOCK = 64  # keys drawn per os.urandom call (one getrandom system call)
_COMPACT_SLACK = 64  # the lease heap is rebuilt when it holds more than 2 x locks + this
_unpack_keys = struct.Struct(f">{_KEY_BLOCK}Q").unpack
_spare_keys: list[int] = []
os.register_at_fork(after_in_child=_spare_keys.clear)  # a forked child must not reuse our keys


def _new_key() -> int:
    """A key uniform in 1 .. MAX_KEY from the OS CSPRNG: 53 random bits, 0 redrawn.
    Keys come from a block of ``os.urandom`` output, drawn a block at a time."""
    while True:
        if not _spare_keys:
            _spare_keys.extend(_unpack_keys(os.urandom(8 * _KEY_BLOCK)))
        key = _spare_keys.pop() & MAX_KEY
        if key:
            return key


class LockTable:
    def __init__(self):
        self._locks: dict[bytes, _Lock] = {}
        self._leases: list[tuple[float, bytes, int]] = []  # (deadline, sid, key), lazy
        # key of a lock that moved and ended here => (when, its moves, its deadline), oldest first
        self._ended: dict[int, tuple[float, int, float]] = {}
        self.lease_expiries = 0

    def __len__(self) -> int:
        return len(self._locks)

    def waiting(self) -> int:
        """Lockers queued behind held locks (O(locks held))."""
        return sum(len(lock.waiters) for lock in self._locks.values())

    def all_waiters(self) -> list[Waiter]:
        """Every locker queued, on every lock (O(locks held))."""
        return [waiter for lock in self._locks.values() for waiter in lock.waiters]

    def holder(self, sid: bytes) -> int:
        """The key holding ``sid``, or 0."""
        lock = self._locks.get(sid)
        return lock.key if lock else 0

    def try_acquire(self, sid: bytes, now: float, lease: float) -> int:
        """Takes the lock if free and nobody is queued; returns the key or 0."""
        lock = self._locks.get(sid)
        if lock is not None:
            return 0
        key = _new_key()
        self._install(sid, key, now + lease)
        return key

    def _install(self, sid: bytes, key: int, deadline: float) -> _Lock:
        """A lock held by ``key`` until ``deadline``, with its lease-heap entry."""
        self._locks[sid] = lock = _Lock(key, deadline)
        lock.entry = entry = (deadline, sid, key)
        heapq.heappush(self._leases, entry)
        return lock

    def _forget(self, sid: bytes, lock: _Lock) -> None:
        """Removes a lock from the table; its lease-heap entry goes at once if
        it is the heap's last element, else when its time comes (compacted
        when stale entries pile up)."""
        del self._locks[sid]
        leases, entry = self._leases, lock.entry
        if entry is not None and leases and leases[-1] is entry:
            leases.pop()  # the last element: the heap stays a heap
        elif len(leases) > 2 * len(self._locks) + _COMPACT_SLACK:
            self._compact()  # stale entries of locks freed out of order: amortised O(1)

    def enqueue(self, sid: bytes, waiter: Waiter) -> None:
        lock = self._locks.get(sid)
        if lock is None:
            raise ValueError("enqueue on a free lock: call try_acquire first")
        lock.waiters.append(waiter)

    def cancel(self, sid: bytes, waiter: Waiter) -> None:
        """Removes a waiter that gave up (no-op if it was granted meanwhile)."""
        lock = self._locks.get(sid)
        if lock is not None and waiter.key == 0:
            try:
                lock.waiters.remove(waiter)
            except ValueError:
                pass

    def release(self, sid: bytes, key: int, now: float) -> list[Waiter]:
        lock = self._locks.get(sid)
        if lock is None:
            raise StoreError("NOWLOCK", "session is not locked")
        if lock.key != key:
            raise StoreError("LOCKED", "wrong lock key: the lock is held by another holder")
        return self._pass_on(sid, lock, now)

    def expire(self, now: float) -> list[Waiter]:
        """Ends every lease that has run out; returns the waiters granted."""
        granted: list[Waiter] = []
        leases = self._leases
        while leases and leases[0][0] <= now:
            entry = heapq.heappop(leases)
            sid = entry[1]
            lock = self._locks.get(sid)
            if lock is None or lock.entry is not entry:
                continue  # stale: that lock was released, or has a nearer entry
            lock.entry = None
            if lock.deadline <= now:
                self.lease_expiries += 1
                granted += self._pass_on(sid, lock, now)
            else:  # the lease was passed on (and so extended) since this entry
                lock.entry = entry = (lock.deadline, sid, lock.key)
                heapq.heappush(leases, entry)
        return granted

    def give_up(self, sid: bytes, now: float) -> tuple[list[int] | None, list[Waiter]]:
        """Takes ``sid``'s lock out of the table, as it moves to another member
        with its session: ``([key, lease_ms left, moves], waiters)``, the
        waiters marked ``moved``; ``(None, [])`` if it is free. ``moves``
        counts the lock's moves, this one included. Call ``expire`` first: a
        lease that ran out is not given (it passes on here)."""
        lock = self._locks.get(sid)
        if lock is None:
            return None, []
        self._forget(sid, lock)
        moves = lock.moves + 1
        self._end(lock.key, now, moves, lock.deadline)
        waiters = list(lock.waiters)
        for waiter in waiters:
            waiter.moved = True
        return [lock.key, max(1, math.ceil((lock.deadline - now) * 1000)), moves], waiters

    def adopt(self, sid: bytes, key: int, lease_ms: float, moves: int, now: float, returned: bool = False) -> bool:
        """Installs a lock given up by another member (``give_up``): held by
        ``key`` for ``lease_ms`` more. False (no change) if the lock here is
        held by another key, or this is a late copy: the lock ended here
        (released, expired, passed on or given up) after a move at least as
        recent. The same key twice is no change. ``returned``: a lock we gave
        up ourselves, back because its handoff failed: it keeps the deadline
        it had (none, if that has passed)."""
        held = self._locks.get(sid)
        if held is not None:
            return held.key == key
        deadline = now + lease_ms / 1000.0
        ended = self._ended.get(key)
        if ended is not None and now - ended[0] >= ENDED_KEEP:
            ended = None
        if returned:
            if ended is not None and ended[1] == moves:
                del self._ended[key]
                moves, deadline = moves - 1, ended[2]
                if deadline <= now:
                    return False
        elif ended is not None and moves <= ended[1]:
            return False
        self._install(sid, key, deadline).moves = moves
        return True

    def _end(self, key: int, now: float, moves: int, deadline: float) -> None:
        """Remembers that a lock that moves (or moved) ended here (``adopt``)."""
        ended = self._ended
        while ended:
            first = next(iter(ended))
            if now - ended[first][0] < ENDED_KEEP:
                break
            del ended[first]
        ended.pop(key, None)
        ended[key] = (now, moves, deadline)

    def _compact(self) -> None:
        """Rebuilds the lease heap from the live locks' entries only, in place
        (``expire`` may be walking it: it pops and pushes the same list)."""
        leases = self._leases
        leases[:] = [lock.entry for lock in self._locks.values() if lock.entry is not None]
        heapq.heapify(leases)

    def next_deadline(self) -> float | None:
        """No later than the first lease to end (maybe earlier: entries are lazy)."""
        return self._leases[0][0] if self._leases else None

    def _pass_on(self, sid: bytes, lock: _Lock, now: float) -> list[Waiter]:
        """Ends the current holder's lease: the next waiter gets the lock, or it is freed.

        A lock keeps one lease-heap entry while it is passed on: a later
        deadline needs no new one (``expire`` pushes it again when the old
        one comes up), only a nearer one does. The heap's last element, if it
        is this lock's entry (often so: leases mostly end in the order they
        began), is removed at once; other stale entries wait for their time.
        """
        leases = self._leases
        entry = lock.entry
        if lock.moves:  # (rare: only a lock that came with its session)
            self._end(lock.key, now, lock.moves, lock.deadline)
            lock.moves = 0  # (a waiter gets a new key)
        if not lock.waiters:
            self._forget(sid, lock)
            return []
        waiter = lock.waiters.popleft()
        waiter.key = lock.key = _new_key()
        lock.deadline = deadline = now + waiter.lease
        if entry is None or deadline < entry[0]:
            if entry is not None and leases[-1] is entry:
                leases.pop()
            lock.entry = entry = (deadline, sid, lock.key)
            heapq.heappush(leases, entry)
        return [waiter]
