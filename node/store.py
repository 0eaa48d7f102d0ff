"""The session store of one node (sans-I/O: the caller passes the time).

Theory of operation
-------------------
A session holds variables (name -> value, both bytes), an opaque data string,
an optional classname, its creation time, last access time and inactivity
timeout. Every change is an *update* (the dataclasses below) stamped with a
hybrid-logical-clock version and applied by ``apply()``. Variables and data
carry the version of their last write and a write with an older version is
ignored (per-variable last-writer-wins), so two replicas that receive the same
updates in any order end in the same state: that is what replication will ship
between nodes. ``IncVar`` is resolved on the node that receives it into the
new value (a replicated PN-counter is future work, see README).

Expiry costs O(expired): each session sits in the bucket of the whole second at
which it expires (``ceil(last access + timeout)``); a heap holds the bucket
seconds. An access that moves the deadline to another second moves the session
between two sets (O(1)); ``expire(now)`` pops only the buckets that are due.
A session past its deadline is also treated as gone by any read, so answers are
exact between two ``expire`` calls.

``count(now)`` agrees with ``sessions(now)`` without looking at every session.
The buckets of whole seconds up to ``now`` are due (not counted, left to the
reaper) and later buckets are alive, except the bucket of the second ``now``
falls in, whose sessions count looks at: those due at ``now`` are not counted
(and left to the reaper too).
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .hlc import HLC
from .logs import RateLimitedLog

_hook_log = RateLimitedLog(logging.getLogger("msession.plugins"))

_INTEGER = re.compile(rb"-?[0-9]{1,20}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TOMBSTONE_KEEP = 300.0  # seconds a dropped id refuses older copies (handoffs finish well within)
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


_ALPHABET_BYTES = ID_ALPHABET.encode()
_UNBIASED = 256 - 256 % len(ID_ALPHABET)  # bytes below this map evenly onto the alphabet


def random_id(length: int) -> bytes:
    """``length`` characters of [a-zA-Z0-9] from the OS CSPRNG (never /dev/random)."""
    out = bytearray()
    while len(out) < length:
        chunk = secrets.token_bytes(length - len(out) + 16)
        out += bytes(_ALPHABET_BYTES[b % len(ID_ALPHABET)] for b in chunk if b < _UNBIASED)
    return bytes(out[:length])


class StoreError(Exception):
    """A contract error: ``name`` is an error name of the protocol."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message


class Session:
    __slots__ = ("sid", "classname", "data", "data_version", "vars", "ctime", "atime", "timeout", "bucket")

    def __init__(self, sid: bytes, classname: bytes, data: bytes, version: int, now: float, timeout: int):
        self.sid = sid
        self.classname = classname
        self.data = data
        self.data_version = version
        self.vars: dict[bytes, tuple[bytes, int]] = {}
        self.ctime = now
        self.atime = now
        self.timeout = timeout
        self.bucket = 0

    @property
    def deadline(self) -> float:
        return self.atime + self.timeout

    def values(self) -> dict[bytes, bytes]:
        return {name: v for name, (v, _) in self.vars.items()}


# ---------------------------------------------------------------------------
# Updates: every change to a session is one of these.


@dataclass(slots=True)
class Create:
    sid: bytes
    version: int
    classname: bytes = b""
    data: bytes = b""
    timeout: int = 0  # 0: the store's default


@dataclass(slots=True)
class Drop:
    sid: bytes
    version: int


@dataclass(slots=True)
class SetVars:
    sid: bytes
    version: int
    pairs: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class SetData:
    sid: bytes
    version: int
    data: bytes
    create: bool = True


@dataclass(slots=True)
class IncVar:
    sid: bytes
    version: int
    name: bytes
    delta: int = 1


@dataclass(slots=True)
class SetTimeout:
    sid: bytes
    version: int
    timeout: int


Update = Create | Drop | SetVars | SetData | IncVar | SetTimeout


@dataclass
class Hooks:
    """Callbacks run after a session is created, destroyed or expired."""

    on_create: list[Callable[[Session], None]] = field(default_factory=list)
    on_destroy: list[Callable[[Session], None]] = field(default_factory=list)
    on_expire: list[Callable[[Session], None]] = field(default_factory=list)


class Store:
    def __init__(self, default_timeout: int = 1440, hooks: Hooks | None = None, hlc: HLC | None = None):
        self.default_timeout = default_timeout
        self.hooks = hooks or Hooks()
        self.hlc = hlc or HLC()
        self._sessions: dict[bytes, Session] = {}
        self._buckets: dict[int, set[bytes]] = {}
        self._bucket_heap: list[int] = []
        self.expired_total = 0
        self.hook_errors = 0
        # Recently dropped ids and the version of the drop: a copy of the
        # session arriving from elsewhere (a late handoff) must not bring it
        # back. Kept TOMBSTONE_KEEP seconds, oldest first.
        self._dropped: dict[bytes, tuple[int, float]] = {}

    # -- reading -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: bytes, now: float, touch: bool = True) -> Session | None:
        """The live session ``sid`` or None; an access refreshes its last access."""
        s = self._sessions.get(sid)
        if s is None:
            return None
        atime = s.atime
        if atime + s.timeout <= now:
            self._remove(s)
            self._expired([s])
            return None
        if touch and now > atime:  # _touch(s, now), inlined: this is every request's path
            s.atime = now
            second = math.ceil(now + s.timeout)
            if second != s.bucket:
                self._rebucket(s, second)
        return s

    def require(self, sid: bytes, now: float, touch: bool = True) -> Session:
        s = self.get(sid, now, touch)
        if s is None:
            raise StoreError("NOSESSION", "no such session")
        return s

    def sessions(self, now: float) -> Iterator[Session]:
        """Every live session; does not touch. Sessions past their deadline are
        skipped here and left to the reaper, which removes them in batches."""
        return iter([s for s in self._sessions.values() if s.atime + s.timeout > now])

    def count(self, now: float) -> int:
        """Live sessions: as many as ``sessions(now)`` gives. In O(due buckets)
        plus the sessions of the bucket of the second ``now`` falls in (COUNT,
        INFO and STATUS ask: no request's path)."""
        second = math.ceil(now)
        due = 0
        if second > now and second in self._buckets:
            sessions = self._sessions
            due = sum(1 for sid in self._buckets[second] if sessions[sid].atime + sessions[sid].timeout <= now)
        heap, stack = self._bucket_heap, [0]
        while stack:  # the heap entries <= now form a subtree at the root
            i = stack.pop()
            if i < len(heap) and heap[i] <= now:
                due += len(self._buckets[heap[i]])
                stack += (2 * i + 1, 2 * i + 2)
        return len(self._sessions) - due

    # -- changing ----------------------------------------------------------

    def version(self, now: float) -> int:
        return self.hlc.tick(now)

    def apply(self, u: Update, now: float):
        """Applies one update; returns the command's result or raises StoreError."""
        if type(u) is SetVars:
            s = self.require(u.sid, now)
            for name, value in u.pairs.items():
                old = s.vars.get(name)
                if old is None or old[1] <= u.version:
                    s.vars[name] = (value, u.version)
            return True
        if type(u) is SetData:
            s = self.get(u.sid, now)
            if s is None:
                if not u.create:
                    raise StoreError("NOSESSION", "no such session")
                self._insert(Create(u.sid, u.version, data=u.data), now)
            elif s.data_version <= u.version:
                s.data = u.data
                s.data_version = u.version
            return True
        if type(u) is IncVar:
            s = self.require(u.sid, now)
            old = s.vars.get(u.name)
            if old is None:
                current = 0
            elif _INTEGER.fullmatch(old[0]):
                current = int(old[0])
            else:
                raise StoreError("NOVALUE", "variable does not hold an integer")
            value = current + u.delta
            if not INT64_MIN <= value <= INT64_MAX:
                raise StoreError("BADARG", "counter would overflow a signed 64-bit integer")
            s.vars[u.name] = (str(value).encode(), u.version)
            return value
        if type(u) is Create:
            s = self.get(u.sid, now)
            if s is not None:
                raise StoreError("DUPSESSION", "session already exists")
            self._insert(u, now)
            return True
        if type(u) is Drop:
            s = self._sessions.get(u.sid)
            if s is not None:
                self._remove(s)
                self._run(self.hooks.on_destroy, s)
            self._bury(u.sid, u.version, now)
            return True
        if type(u) is SetTimeout:
            s = self.require(u.sid, now)
            s.timeout = u.timeout
            self._touch(s, now, force=True)
            return u.timeout
        raise TypeError(f"not an update: {u!r}")

    def new_id(self, length: int, now: float, taken: Callable[[bytes], bool] = lambda sid: False, tries: int = 16) -> bytes:
        """A random id of ``length`` characters naming no live session."""
        for _ in range(tries):
            sid = random_id(length)
            if self.get(sid, now, touch=False) is None and not taken(sid):
                return sid
        raise StoreError("DUPSESSION", f"no unused id of {length} characters found")

    # -- moving sessions between members ----------------------------------

    def export(self, s: Session) -> list:
        """The whole state of a session, as a wire value (see ``merge_in``)."""
        return [
            s.sid, s.classname, s.data, s.data_version,
            [[name, value, version] for name, (value, version) in s.vars.items()],
            s.ctime, s.atime, s.timeout,
        ]

    def take(self, sid: bytes) -> Session | None:
        """Removes a session that moves to another member: no hooks run, it
        was neither destroyed nor expired."""
        s = self._sessions.get(sid)
        if s is not None:
            self._remove(s)
        return s

    @staticmethod
    def check_state(state: Any) -> tuple:
        """A state of ``export``'s shape, checked and parsed (the variables
        as ``(name, value, version)`` tuples); ValueError if malformed."""
        try:
            sid, classname, data, data_version, variables, ctime, atime, timeout = state
            if not (type(sid) is bytes and sid and type(classname) is bytes and type(data) is bytes):
                raise ValueError
            if type(data_version) is not int or type(timeout) is not int or timeout <= 0:
                raise ValueError
            ctime, atime = float(ctime), float(atime)
            pairs = [(n, v, ver) for n, v, ver in variables]
            for n, v, ver in pairs:
                if type(n) is not bytes or type(v) is not bytes or type(ver) is not int:
                    raise ValueError
        except (TypeError, ValueError):
            raise ValueError("malformed session state") from None
        return sid, classname, data, data_version, pairs, ctime, atime, timeout

    def merge_in(self, state: list, now: float) -> bool:
        """Merges a session exported elsewhere into this store.

        Per variable and for the data, the later version wins, so merging the
        same state twice, or a state and writes made here meanwhile, in any
        order, ends the same. Returns False (and changes nothing) for a state
        that is past its deadline. Raises ValueError on a malformed state.
        """
        sid, classname, data, data_version, pairs, ctime, atime, timeout = self.check_state(state)
        if atime + timeout <= now:
            return False
        newest = max([data_version] + [ver for _, _, ver in pairs])
        self._forget_drops(now)
        tomb = self._dropped.get(sid)
        if tomb is not None and newest <= tomb[0]:
            return False  # a copy from before it was dropped here
        self.hlc.observe(newest, now)  # versions made here later must sort after these
        s = self._sessions.get(sid)
        if s is None or s.deadline <= now:
            if s is not None:
                self._remove(s)
            s = Session(sid, classname, data, data_version, ctime, timeout)
            s.atime = atime
            self._sessions[sid] = s
            self._place(s, math.ceil(s.deadline))
        else:
            if data_version > s.data_version:
                s.data, s.data_version = data, data_version
            s.ctime = min(s.ctime, ctime)
            if atime > s.atime:
                s.timeout = timeout
            self._touch(s, max(s.atime, atime), force=True)
        for name, value, version in pairs:
            old = s.vars.get(name)
            if old is None or old[1] < version:
                s.vars[name] = (value, version)
        return True

    def _bury(self, sid: bytes, version: int, now: float) -> None:
        """Records a drop (and forgets old ones)."""
        self._forget_drops(now)
        self._dropped.pop(sid, None)  # re-insert: the dict stays in time order
        self._dropped[sid] = (version, now)

    def _forget_drops(self, now: float) -> None:
        dropped = self._dropped
        while dropped:
            first = next(iter(dropped))
            if now - dropped[first][1] <= TOMBSTONE_KEEP:
                break
            del dropped[first]

    # -- expiry ------------------------------------------------------------

    def expire(self, now: float, limit: int | None = None) -> list[Session]:
        """Removes sessions whose deadline has passed, at most ``limit``; O(expired)."""
        heap, buckets, out = self._bucket_heap, self._buckets, []
        while heap and heap[0] <= now:
            bucket = buckets[heap[0]]
            while bucket and (limit is None or len(out) < limit):
                out.append(self._sessions.pop(bucket.pop()))
            if bucket:
                break  # the limit: the rest of this second's sessions stay due
            del buckets[heapq.heappop(heap)]
        self._expired(out)
        return out

    def _expired(self, out: list[Session]) -> None:
        """Counts and reports sessions just removed because they expired."""
        if out:
            self.expired_total += len(out)
            for s in out:
                self._run(self.hooks.on_expire, s)

    def next_expiry(self) -> float | None:
        return float(self._bucket_heap[0]) if self._bucket_heap else None

    # -- internals ---------------------------------------------------------

    def _insert(self, u: Create, now: float) -> Session:
        s = Session(u.sid, u.classname, u.data, u.version, now, u.timeout or self.default_timeout)
        self._sessions[u.sid] = s
        self._place(s, math.ceil(s.deadline))
        self._run(self.hooks.on_create, s)
        return s

    def _remove(self, s: Session) -> None:
        del self._sessions[s.sid]
        bucket = self._buckets.get(s.bucket)
        if bucket is not None:
            bucket.discard(s.sid)

    def _touch(self, s: Session, now: float, force: bool = False) -> None:
        if now > s.atime or force:
            s.atime = max(now, s.atime)
            second = math.ceil(s.atime + s.timeout)
            if second != s.bucket:
                self._rebucket(s, second)

    def _rebucket(self, s: Session, second: int) -> None:
        bucket = self._buckets.get(s.bucket)
        if bucket is not None:
            bucket.discard(s.sid)
        self._place(s, second)

    def _place(self, s: Session, second: int) -> None:
        s.bucket = second
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
            heapq.heappush(self._bucket_heap, second)
        bucket.add(s.sid)

    def _run(self, hooks: list, s: Session) -> None:
        for hook in hooks:
            try:
                hook(s)
            except Exception:
                # A plugin's bug must not lose or corrupt a session.
                self.hook_errors += 1
                _hook_log.info("plugin hook %r failed", getattr(hook, "__qualname__", hook), exc_info=True)
