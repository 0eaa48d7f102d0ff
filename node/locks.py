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
"""

from __future__ import annotations

import heapq
import os
import struct
from collections import deque
from typing import Any

from .store import StoreError

MAX_KEY = 2**53 - 1


class Waiter:
    __slots__ = ("lease", "key", "handle")

    def __init__(self, lease: float, handle: Any = None):
        self.lease = lease
        self.key = 0  # set when granted
        self.handle = handle  # for the I/O layer (e.g. a trio.Event)


class _Lock:
    __slots__ = ("key", "deadline", "waiters", "entry")

    def __init__(self, key: int, deadline: float):
        self.key = key
        self.deadline = deadline
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
        self.lease_expiries = 0

    def __len__(self) -> int:
        return len(self._locks)

    def waiting(self) -> int:
        """Lockers queued behind held locks (O(locks held))."""
        return sum(len(lock.waiters) for lock in self._locks.values())

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
        self._locks[sid] = lock = _Lock(key, now + lease)
        lock.entry = entry = (now + lease, sid, key)
        heapq.heappush(self._leases, entry)
        return key

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
        if not lock.waiters:
            del self._locks[sid]
            if entry is not None and leases[-1] is entry:
                leases.pop()  # the last element: the heap stays a heap
            elif len(leases) > 2 * len(self._locks) + _COMPACT_SLACK:
                self._compact()  # stale entries of locks freed out of order: amortised O(1)
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
