"""The msession contract, command by command (sans-I/O).

``Node.execute(cmd, args, now)`` validates the arguments of one request and
returns its result as a wire value (``bytes``, ``int``, ``bool``, list, map),
raises ``CommandError`` with a protocol error name, or, for a lock that must be
waited for, returns a ``LockWait`` that the I/O layer waits on (see
``node/server.py``). Argument rules and results are documented in
``protocol/PROTOCOL.md``; keep the two in step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from protocol.constants import PROTOCOL_VERSION, Cmd, Ctl, Err

from . import store as st
from .config import Config
from .locks import MAX_KEY, LockTable, Waiter
from .plugins import PluginManager

SERVER_NAME = "msession"
_MAX_U64 = 2**64 - 1
_MAX_U32 = 2**32 - 1
EXPIRE_BATCH = 10000


class CommandError(Exception):
    """A request's error answer. ``counted``: already in a node's
    ``command_errors`` (``Node.execute`` counts what it raises; an error a
    member answered was counted there); the server counts the others, e.g.
    a request refused while routing it."""

    def __init__(self, name: str, message: str, *, counted: bool = False):
        super().__init__(message)
        self.name = name
        self.code = int(Err[name])
        self.message = message
        self.counted = counted


class _RunLocal:
    def __repr__(self) -> str:
        return "RUN_LOCAL"


RUN_LOCAL = _RunLocal()  # a farm's remote step found the request should run here after all


@dataclass(slots=True)
class LockWait:
    """SLOCK found the lock held: wait up to ``wait`` seconds on ``waiter``."""

    sid: bytes
    waiter: Waiter
    wait: float


# ----------------------------------------------------------------------------
# STATUS and ROUTES answers (PROTOCOL.md 6.5): a standalone node's here, a farm
# member's from cluster/runtime.py, one shape for both.


def status_map(name: str, node: str, *, cluster: bool = False, gossip: str | None = None, ring: str | None = None,
               partitions: int = 0, health: int = 0, members: list | None = None) -> dict:
    return {
        "name": name, "cluster": cluster, "node": node, "gossip": gossip,
        "ring": ring, "partitions": partitions, "health": health, "members": members or [],
    }


def routes_map(ring: str | None = None, partitions: int = 0, members: list | None = None, owners: bytes = b"") -> dict:
    return {"ring": ring, "partitions": partitions, "members": members or [], "owners": owners}


# ----------------------------------------------------------------------------
# Argument checking


def _arity(args: list, lo: int, hi: int, usage: str) -> None:
    if not lo <= len(args) <= hi:
        raise CommandError("BADARG", f"usage: {usage}")


def _bytes(value: Any, what: str, max_len: int | None = None, allow_empty: bool = True) -> bytes:
    if type(value) is bytes:
        out = value
    elif type(value) is int:
        out = str(value).encode()  # a number given where a string is expected
    else:
        raise CommandError("BADARG", f"{what} must be a string, not {_typename(value)}")
    if not allow_empty and not out:
        raise CommandError("BADARG", f"{what} must not be empty")
    if max_len is not None and len(out) > max_len:
        raise CommandError("BADARG", f"{what} is longer than {max_len} bytes")
    return out


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if type(value) is bytes:
        try:
            value = int(value)
        except ValueError:
            raise CommandError("BADARG", f"{what} must be an integer") from None
    elif type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise CommandError("BADARG", f"{what} must be an integer, not {_typename(value)}")
    if not lo <= value <= hi:
        raise CommandError("BADARG", f"{what} must be between {lo} and {hi}, not {value}")
    return value


def _seconds_ms(value: Any, what: str, hi: float) -> float:
    ms = _int(value, what, 0, int(hi * 1000))
    return ms / 1000.0


def _typename(value: Any) -> str:
    return {bytes: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "map", type(None): "nil"}.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------


class Node:
    """One node's state and the contract's semantics."""

    def __init__(self, config: Config, clock: Callable[[], float], lock_clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        # Leases run on a monotonic clock: a wall-clock step must not end them.
        self.lock_clock = lock_clock
        self.store = st.Store(default_timeout=config.session_timeout)
        self.locks = LockTable()
        self.plugins = PluginManager()
        self.plugins.load(config.plugins, config.plugin_options, self.store, clock)
        self.stats = {"commands": 0, "errors": 0}
        self._handlers: dict[int, Callable] = {
            Cmd.CTL: self.ctl,
            Cmd.SETVAL: self.setval,
            Cmd.GETVAL: self.getval,
            Cmd.CREATE: self.create,
            Cmd.DROP: self.drop,
            Cmd.GETALL: self.getall,
            Cmd.FIND: self.find,
            Cmd.COUNT: self.count,
            Cmd.SLOCK: self.slock,
            Cmd.SUNLOCK: self.sunlock,
            Cmd.TIMEOUT: self.timeout,
            Cmd.INC: self.inc,
            Cmd.DATAGET: self.dataget,
            Cmd.DATASET: self.dataset,
            Cmd.LIST: self.list,
            Cmd.LISTVAR: self.listvar,
            Cmd.UNIQ: self.uniq,
            Cmd.RANDSTR: self.randstr,
            Cmd.PLUGIN: self.plugin,
            Cmd.CALL: self.call,
            Cmd.PING: self.ping,
            Cmd.HELLO: self.hello,
            Cmd.INFO: self.info,
            Cmd.STATUS: self.status,  # a farm member answers it in cluster/runtime.py
            Cmd.ROUTES: self.routes,  # likewise
        }
        self.started = clock()
        # Callables adding their counters to INFO (the server adds its own).
        self.info_providers: list[Callable[[], dict]] = []
        # Called when a lease now ends before the next housekeeping the I/O
        # layer has scheduled (a waiter depends on it): run housekeeping sooner.
        self.kick: Callable[[], None] = lambda: None
        self._next_lease_check = math.inf  # lock clock
        # Limits the quick paths of argument checking compare with (Config is frozen).
        self._max_id_len = config.max_id_len
        self._max_name_len = config.max_name_len
        self._max_wait_ms = int(config.max_lock_wait * 1000)
        self._max_lease_ms = int(config.max_lock_lease * 1000)
        self._max_timeout = config.max_timeout
        self._max_key = _MAX_U64

    def execute(self, cmd: int, args: list, now: float) -> Any:
        self.stats["commands"] += 1
        try:
            handler = self._handlers.get(cmd)
            if handler is None:
                if cmd in (Cmd.FLUSH, Cmd.SERIALIZE, Cmd.RESTORE, Cmd.EXEC):
                    raise CommandError("UNKNOWN", f"command {Cmd(cmd).name} ({cmd}) is not supported by this server")
                raise CommandError("UNKNOWN", f"unknown command {cmd}")
            return handler(args, now)
        except st.StoreError as exc:
            self.stats["errors"] += 1
            raise CommandError(exc.name, exc.message, counted=True) from None
        except CommandError as exc:
            self.stats["errors"] += 1
            exc.counted = True
            raise

    # -- helpers -------------------------------------------------------------

    def _sid(self, value: Any) -> bytes:
        if type(value) is bytes and 0 < len(value) <= self._max_id_len:
            return value  # the usual case, as _bytes would find it
        return _bytes(value, "session id", self.config.max_id_len, allow_empty=False)

    def _name(self, value: Any) -> bytes:
        if type(value) is bytes and 0 < len(value) <= self._max_name_len:
            return value
        return _bytes(value, "variable name", self.config.max_name_len, allow_empty=False)

    def _classname_data(self, rest: list) -> tuple[bytes, bytes]:
        """The optional ``[classname [data]]`` of CREATE and UNIQ."""
        classname = _bytes(rest[0], "classname", self.config.max_name_len) if rest else b""
        data = _bytes(rest[1], "data") if len(rest) > 1 else b""
        return classname, data

    def _timeout(self, value: Any) -> int:
        return _int(value, "timeout", 1, self.config.max_timeout)

    # -- the contract ------------------------------------------------------------

    def ping(self, args, now):
        if args:
            _arity(args, 0, 0, "PING")
        return b"PONG"

    def hello(self, args, now):
        _arity(args, 1, 2, "HELLO version [{client info}]")
        version = _int(args[0], "version", 0, 2**31)
        if version != PROTOCOL_VERSION:
            raise CommandError("BADVER", f"protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}")
        return {
            "version": PROTOCOL_VERSION,
            "server": SERVER_NAME,
            "max_frame": self.config.max_frame,
            "max_id_len": self.config.max_id_len,
            "max_name_len": self.config.max_name_len,
            "now": int(now),
        }

    def info(self, args, now):
        _arity(args, 0, 0, "INFO")
        out = {
            "version": PROTOCOL_VERSION,
            "server": SERVER_NAME,
            "uptime": int(now - self.started),
            "sessions": self.store.count(now),
            "sessions_expired": self.store.expired_total,
            "locks": len(self.locks),
            "lock_waiters": self.locks.waiting(),
            "lock_lease_expiries": self.locks.lease_expiries,
            "commands": self.stats["commands"],
            "command_errors": self.stats["errors"],
            "plugin_hook_errors": self.store.hook_errors,
        }
        for provider in self.info_providers:
            out.update(provider())
        return out

    def status(self, args, now):
        _arity(args, 0, 0, "STATUS")
        return status_map(self.config.name or "standalone", f"{self.config.bind}:{self.config.port}")

    def routes(self, args, now):
        _arity(args, 0, 0, "ROUTES")
        return routes_map()

    def count(self, args, now):
        _arity(args, 0, 0, "COUNT")
        return self.store.count(now)

    def create(self, args, now):
        _arity(args, 1, 3, "CREATE session [classname [data]]")
        sid = self._sid(args[0])
        return self.store.apply(st.Create(sid, self.store.version(now), *self._classname_data(args[1:])), now)

    def drop(self, args, now):
        _arity(args, 1, 1, "DROP session")
        return self.store.apply(st.Drop(self._sid(args[0]), self.store.version(now)), now)

    def setval(self, args, now):
        if not 2 <= len(args) <= 3:
            _arity(args, 2, 3, "SETVAL session name value | SETVAL session {name: value, ...}")
        sid = self._sid(args[0])
        if len(args) == 3:
            pairs = {self._name(args[1]): _bytes(args[2], "value")}
        elif type(args[1]) is dict:
            pairs = {}
            max_name = self._max_name_len
            for k, v in args[1].items():  # in order, so the first bad pair is the one reported
                if type(k) is bytes and 0 < len(k) <= max_name and type(v) is bytes:
                    pairs[k] = v
                else:
                    name = self._name(k)  # the name is checked before the value, as ever
                    pairs[name] = _bytes(v, "value")
        else:
            raise CommandError("BADARG", "SETVAL with two arguments takes a map of name => value")
        return self.store.apply(st.SetVars(sid, self.store.version(now), pairs), now)

    def getval(self, args, now):
        if not 2 <= len(args) <= 3:
            _arity(args, 2, 3, "GETVAL session name [default]")
        s = self.store.require(self._sid(args[0]), now)
        var = s.vars.get(self._name(args[1]))
        if var is not None:
            return var[0]
        return args[2] if len(args) > 2 else None

    def getall(self, args, now):
        if len(args) != 1:
            _arity(args, 1, 1, "GETALL session")
        return self.store.require(self._sid(args[0]), now).values()

    def find(self, args, now):
        _arity(args, 2, 2, "FIND name value")
        name, value = self._name(args[0]), _bytes(args[1], "value")
        out = []
        for s in self.store.sessions(now):
            var = s.vars.get(name)
            if var is not None and var[0] == value:
                out.append(s.sid)
        return out

    def list(self, args, now):
        _arity(args, 0, 0, "LIST")
        return [s.sid for s in self.store.sessions(now)]

    def listvar(self, args, now):
        _arity(args, 1, 1, "LISTVAR name")
        name = self._name(args[0])
        out = {}
        for s in self.store.sessions(now):
            var = s.vars.get(name)
            if var is not None:
                out[s.sid] = var[0]
        return out

    def inc(self, args, now):
        _arity(args, 2, 3, "INC session name [delta]")
        sid, name = self._sid(args[0]), self._name(args[1])
        delta = _int(args[2], "delta", -(2**63), 2**63 - 1) if len(args) > 2 else 1
        return self.store.apply(st.IncVar(sid, self.store.version(now), name, delta), now)

    def dataget(self, args, now):
        _arity(args, 1, 1, "DATAGET session")
        return self.store.require(self._sid(args[0]), now).data

    def dataset(self, args, now):
        _arity(args, 2, 2, "DATASET session data")
        sid, data = self._sid(args[0]), _bytes(args[1], "data")
        return self.store.apply(st.SetData(sid, self.store.version(now), data), now)

    def timeout(self, args, now):
        if not 1 <= len(args) <= 2:
            _arity(args, 1, 2, "TIMEOUT session [seconds]")
        sid = self._sid(args[0])
        if len(args) == 1:
            return self.store.require(sid, now).timeout
        seconds = args[1]
        if type(seconds) is not int or not 1 <= seconds <= self._max_timeout:
            seconds = self._timeout(seconds)
        s = self.store.require(sid, now)  # an access: restarts the inactivity timer
        if s.timeout == seconds:
            return seconds  # the PHP handler sets the same timeout on every read: nothing to change
        return self.store.apply(st.SetTimeout(sid, self.store.version(now), seconds), now)

    def ctl(self, args, now):
        _arity(args, 1, 2, "CTL session [EXIST|TTL|AGE|TLA|CTIME|TOUCH|NOW]")
        sid = self._sid(args[0])
        which = Ctl.EXIST
        if len(args) > 1:
            raw = args[1]
            if type(raw) is bytes and raw.upper().decode("ascii", "replace") in Ctl.__members__:
                which = Ctl[raw.upper().decode()]
            else:
                which = Ctl(_int(raw, "which", 0, len(Ctl) - 1))
        if which == Ctl.NOW:
            return int(now)
        s = self.store.get(sid, now, touch=which == Ctl.TOUCH)
        if which == Ctl.EXIST:
            return 1 if s is not None else 0
        if s is None:
            raise CommandError("NOSESSION", "no such session")
        if which == Ctl.TTL:
            return max(0, int(s.deadline - now))
        if which == Ctl.AGE:
            return int(now - s.ctime)
        if which in (Ctl.TLA, Ctl.TOUCH):
            return int(s.atime)
        return int(s.ctime)  # CTIME

    def uniq_args(self, args) -> tuple[int, bytes, bytes]:
        """UNIQ's checked arguments: (length, classname, data). A farm's
        member uses it too before drawing the id it creates at the owner."""
        _arity(args, 1, 3, "UNIQ num_chars [classname [data]]")
        return _int(args[0], "num_chars", 1, self.config.max_uniq_len), *self._classname_data(args[1:])

    def uniq(self, args, now):
        length, classname, data = self.uniq_args(args)
        sid = self.store.new_id(length, now, taken=lambda s: self.locks.holder(s) != 0)
        self.store.apply(st.Create(sid, self.store.version(now), classname, data), now)
        return sid

    def randstr(self, args, now):
        _arity(args, 1, 1, "RANDSTR num_chars")
        return st.random_id(_int(args[0], "num_chars", 1, self.config.max_randstr_len))

    def slock(self, args, now):
        n = len(args)
        if not 1 <= n <= 3:
            _arity(args, 1, 3, "SLOCK session [wait_ms [lease_ms]]")
        sid = self._sid(args[0])
        wait, lease = self.config.lock_wait, self.config.lock_lease
        if n > 1 and (ms := args[1]) is not None:
            if type(ms) is int and 0 <= ms <= self._max_wait_ms:
                wait = ms / 1000.0  # as _seconds_ms finds it
            else:
                wait = _seconds_ms(ms, "wait_ms", self.config.max_lock_wait)
        if n > 2 and (ms := args[2]) is not None:
            if type(ms) is int and 0 <= ms <= self._max_lease_ms:
                lease = ms / 1000.0
            else:
                lease = _seconds_ms(ms, "lease_ms", self.config.max_lock_lease)
        if lease <= 0:
            raise CommandError("BADARG", "lease_ms must be positive")
        self.store.get(sid, now)  # a lock is an access
        mono = self.lock_clock()
        granted = self.locks.expire(mono)  # a lease that ran out frees the lock now
        self.wake(granted)
        key = self.locks.try_acquire(sid, mono, lease)
        if key:
            return key
        if wait <= 0:
            raise CommandError("LOCKED", "session is locked")
        waiter = Waiter(lease)
        self.locks.enqueue(sid, waiter)
        self._watch_leases()
        return LockWait(sid, waiter, wait)

    def sunlock(self, args, now):
        if len(args) != 2:
            _arity(args, 2, 2, "SUNLOCK session key")
        sid = self._sid(args[0])
        key = args[1]
        if type(key) is not int or not 0 <= key <= self._max_key:
            key = _int(key, "key", 0, _MAX_U64)
        granted = self.locks.release(sid, key, self.lock_clock())
        self.wake(granted)
        return key

    def plugin(self, args, now):
        _arity(args, 2, 3, "PLUGIN session val [param]")
        sid = self._sid(args[0])
        val = _bytes(args[1], "val")
        param = _bytes(args[2], "param") if len(args) > 2 else b""
        s = self.store.get(sid, now, touch=False)  # inspecting a session does not keep it alive
        try:
            result = self.plugins.escape(s, val, param)
        except Exception as exc:
            raise CommandError("UNKNOWN", f"plugin error: {type(exc).__name__}: {exc}") from None
        if result is None:
            if s is None:
                raise CommandError("NOSESSION", "no such session")
            raise CommandError("NOFN", f"no plugin answers {val!r}")
        return result

    def call(self, args, now):
        _arity(args, 1, 5, "CALL fn_name [p1 [p2 [p3 [p4]]]]")
        name = _bytes(args[0], "function name", allow_empty=False)
        params = [_bytes(p, "parameter") for p in args[1:]]
        try:
            result = self.plugins.call(name, params)
        except Exception as exc:
            raise CommandError("UNKNOWN", f"plugin error: {type(exc).__name__}: {exc}") from None
        if result is None:
            raise CommandError("NOFN", f"no plugin function {name.decode('utf-8', 'replace')!r}")
        return result

    # -- time ----------------------------------------------------------------

    # -- sessions moving between farm members (cluster/runtime.py moves the bytes)

    def export_moving(self, s) -> list:
        """The state of session ``s`` leaving for another member, removed from
        here with its lock (never two holders): the store's state, plus
        ``[key, lease_ms left, moves]`` when it is locked (``give_up_lock``,
        which sends its waiters after it)."""
        state = self.store.export(s)
        self.store.take(s.sid)
        lock = self.give_up_lock(s.sid)
        if lock is not None:
            state.append(lock)
        return state

    def check_moving(self, state: Any) -> None:
        """ValueError unless ``state`` is a session state from another member:
        the store's, maybe followed by its lock (``check_lock``)."""
        if type(state) is not list or len(state) not in (8, 9):
            raise ValueError("malformed session state")
        self.store.check_state(state[:8])
        if len(state) == 9:
            self.check_lock(state[8])

    def merge_moving(self, state: Any, now: float, returned: bool = False, checked: bool = False) -> tuple[bool, bool]:
        """Merges a session state from another member (``returned``: ours,
        back from a handoff that failed; ``checked``: ``check_moving`` passed
        already) and installs the lock that came with it (a lock is the id's,
        whatever became of the record): (merged, and no lock came or it was
        taken). ValueError if malformed (nothing merged)."""
        if not checked:
            self.check_moving(state)
        merged = self.store.merge_in(state[:8], now)
        return merged, len(state) == 8 or self.adopt_lock(state[0], state[8], returned)

    def give_up_lock(self, sid: bytes) -> list[int] | None:
        """``sid``'s lock, taken out as the session moves to another member
        (``LockTable.give_up``): ``[key, lease_ms left, moves]`` or None. Its
        waiters are woken, marked ``moved``: the server sends them on."""
        mono = self.lock_clock()
        self.wake(self.locks.expire(mono))  # a lease that ran out passes on here, not there
        wire, waiters = self.locks.give_up(sid, mono)
        self.wake(waiters)
        return wire

    def adopt_lock(self, sid: bytes, wire: Any, returned: bool = False) -> bool:
        """Installs a lock that came with its session (``LockTable.adopt``);
        its lease is cut to our ``max_lock_lease`` (members may differ while
        a farm's configuration changes). ValueError if ``wire`` is malformed
        (``check_lock``)."""
        key, lease_ms, moves = self.check_lock(wire)
        adopted = self.locks.adopt(sid, key, min(lease_ms, self._max_lease_ms), moves, self.lock_clock(), returned)
        self._watch_leases()
        return adopted

    @staticmethod
    def check_lock(wire: Any) -> tuple[int, int, int]:
        """``[key, lease_ms, moves]`` of a moving lock, checked; ValueError if malformed."""
        if type(wire) is not list or len(wire) != 3 or any(type(x) is not int for x in wire):
            raise ValueError("malformed lock")
        key, lease_ms, moves = wire
        if not (1 <= key <= MAX_KEY and 1 <= lease_ms <= _MAX_U32 and 1 <= moves <= _MAX_U32):
            raise ValueError("malformed lock")
        return key, lease_ms, moves

    def unlock_abandoned(self, sid: bytes, key: int) -> bool:
        """Hands on a lock granted to a client that will never hear of it;
        False if this node does not hold it (it may have moved on)."""
        if self.locks.holder(sid) != key:
            return False
        self.wake(self.locks.release(sid, key, self.lock_clock()))
        return True

    def wake(self, granted: list[Waiter]) -> None:
        for waiter in granted:
            if waiter.handle is not None:
                waiter.handle()
        if granted:
            self._watch_leases()  # the new holder's lease may end soon

    def _watch_leases(self) -> None:
        due = self.locks.next_deadline()
        if due is not None and due < self._next_lease_check:
            self._next_lease_check = due
            self.kick()

    def housekeeping(self, now: float) -> float:
        """Expires sessions and lock leases; returns when to run again.

        Expires at most ``EXPIRE_BATCH`` sessions a call, so a mass expiry
        (a million sessions created in the same second) does not stall every
        connection: the caller runs again at once while more are due."""
        mono = self.lock_clock()
        self.wake(self.locks.expire(mono))
        if len(self.store.expire(now, EXPIRE_BATCH)) == EXPIRE_BATCH:
            return now
        due = [now + 1.0]
        if self.store.next_expiry() is not None:
            due.append(self.store.next_expiry())
        if self.locks.next_deadline() is not None:
            due.append(now + self.locks.next_deadline() - mono)
        wake = min(due)
        self._next_lease_check = mono + (wake - now)
        return wake
