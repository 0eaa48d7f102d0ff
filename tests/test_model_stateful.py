"""Model-based test: a real node against a plain-Python model of the contract.

A hypothesis ``RuleBasedStateMachine`` drives one ``msession serve``
subprocess through the blocking ``protocol.client.Client`` and compares every
answer with the model below (sessions -> vars, data, classname, timeout; and
the lock table), written from ``/work/shared/msession-api.md`` and the
project's argument rules (ids 1..max_id_len bytes, names 1..max_name_len
bytes, timeouts 1..max_timeout seconds, UNIQ 1..max_uniq_len characters).

Where the contract is silent about which of two errors wins (a bad argument on
a missing session), the model accepts either.

Session ids and names come from small pools so that collisions happen,
including binary ones (NUL, invalid UTF-8) and ones just inside and just
outside the length limits. The node is shared by all examples: each example
destroys every session first and uses its own id prefix, so a lock left over
from an earlier example cannot interfere.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from protocol.client import Client, MsessionError

# The node's defaults (node/config.py), which the model relies on.
DEFAULT_TIMEOUT = 1440
MAX_ID_LEN = 256
MAX_NAME_LEN = 1024
MAX_TIMEOUT = 365 * 86400
MAX_UNIQ_LEN = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LOCK_KEY_LIMIT = 2**53  # keys are exact in every client language
ID_SAFE = re.compile(rb"[A-Za-z0-9,-]+")  # what PHP accepts in a session id

# -- pools ---------------------------------------------------------------------

# ("p", suffix): the example's prefix + suffix; ("raw", id): exactly id;
# ("len", n): prefix padded to n bytes; ("u", k): the k-th id UNIQ returned.
SID_KEYS = [
    ("p", b"a"),
    ("p", b"b"),
    ("p", b"\x00z"),
    ("p", b"\xff\xfe"),
    ("p", "é".encode()),
]
EDGE_SID_KEYS = [("len", MAX_ID_LEN), ("len", MAX_ID_LEN + 1), ("raw", b"")]
# Mostly valid ids of the pool, sometimes an edge case or an id UNIQ returned.
sid_keys = st.sampled_from(["pool"] * 6 + ["edge", "uniq"]).flatmap(
    lambda kind: st.sampled_from(SID_KEYS)
    if kind == "pool"
    else st.sampled_from(EDGE_SID_KEYS)
    if kind == "edge"
    else st.integers(0, 5).map(lambda k: ("u", k))
)
GOOD_NAMES = [b"n", b"m", b"\x00", b"\xff\xc3(", "ü".encode()]
EDGE_NAMES = [b"N" * MAX_NAME_LEN, b"N" * (MAX_NAME_LEN + 1), b""]
names = st.sampled_from(GOOD_NAMES * 4 + EDGE_NAMES)
# Integers are written -?[0-9]+ here: the model counts nothing else as one (see
# test_inc_rejects_python_only_integer_syntax for the grey zone).
values = st.sampled_from(
    [b"", b"0", b"7", b"-3", b"abc", b"\x00\xff", b"1.5", str(INT64_MAX).encode(), str(INT64_MIN).encode()]
)
datas = st.sampled_from([b"", b"data", b"\x00\xff\xfe binary", b"x" * 1000])
classnames = st.one_of(st.none(), st.sampled_from([b"", b"Cls", b"c\x00\xff", b"C" * (MAX_NAME_LEN + 1)]))
timeouts = st.sampled_from([600, DEFAULT_TIMEOUT, 86400, MAX_TIMEOUT, MAX_TIMEOUT + 1, 0, -1])
deltas = st.sampled_from([1, 1, 1, -1, 5, INT64_MAX, INT64_MIN])
uniq_lengths = st.sampled_from([1, 2, 8, 32, MAX_UNIQ_LEN, 0, -1, MAX_UNIQ_LEN + 1])

_example_counter = itertools.count()


def b(s: str) -> bytes:
    """The client's str back to the bytes the node holds."""
    return s.encode("utf-8", "surrogateescape")


def is_int_value(v: bytes) -> bool:
    return re.fullmatch(rb"-?[0-9]+", v) is not None


def valid_sid(sid: bytes) -> bool:
    return 1 <= len(sid) <= MAX_ID_LEN


def valid_name(name: bytes) -> bool:
    return 1 <= len(name) <= MAX_NAME_LEN


@dataclass
class MSession:
    vars: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    classname: bytes = b""
    timeout: int = DEFAULT_TIMEOUT


class Outcome:
    def __init__(self, fn, *args, **kwargs):
        try:
            self.value = fn(*args, **kwargs)
            self.error = None
        except MsessionError as exc:
            self.value = None
            self.error = exc.code

    def __repr__(self):
        return f"error {self.error}" if self.error else f"value {self.value!r}"


class SessionMachine(RuleBasedStateMachine):
    client: Client  # set by the test

    def __init__(self):
        super().__init__()
        self.c = type(self).client
        self.prefix = f"ex{next(_example_counter)}.".encode()
        self.sessions: dict[bytes, MSession] = {}
        self.locks: dict[bytes, int] = {}
        self.uniq_ids: list[bytes] = []

    # -- plumbing -------------------------------------------------------------

    @initialize(first=st.lists(st.sampled_from(SID_KEYS), max_size=len(SID_KEYS), unique=True))
    def start_clean(self, first):
        for sid in self.c.list():
            assert self.c.destroy(sid) is True
        assert self.c.count() == 0
        for key in first:  # start with some sessions, so that fewer steps end in NOSESSION
            self.create(key, None, None)

    def teardown(self):
        for sid, key in self.locks.items():
            try:
                self.c.unlock(sid, key)
            except MsessionError:
                pass

    def sid(self, key) -> bytes:
        kind, arg = key
        if kind == "p":
            return self.prefix + arg
        if kind == "len":
            return self.prefix + b"L" * (arg - len(self.prefix))
        if kind == "u":
            return self.uniq_ids[arg % len(self.uniq_ids)] if self.uniq_ids else self.prefix + b"a"
        return arg

    def expect_error(self, out: Outcome, *codes: str) -> None:
        assert out.error in codes, f"expected {' or '.join(codes)}, got {out!r}"

    def expect_value(self, out: Outcome, value) -> None:
        assert out.error is None, f"expected {value!r}, got {out!r}"
        assert out.value == value, f"expected {value!r}, got {out!r}"

    def expect(self, out: Outcome, errs: list[str], value) -> bool:
        """One of ``errs`` if any applies, else the value ``value()``; True on success."""
        if errs:
            self.expect_error(out, *errs)
            return False
        self.expect_value(out, value())
        return True

    def arg_errors(self, sid: bytes | None = None, *names: bytes, need_session: bool = True) -> list[str]:
        """Acceptable errors for these arguments ([] if none applies)."""
        errs = []
        if sid is not None and not valid_sid(sid):
            return ["BADARG"]
        if any(not valid_name(n) for n in names):
            errs.append("BADARG")
        if need_session and sid is not None and sid not in self.sessions:
            errs.append("NOSESSION")
        return errs

    # -- sessions -------------------------------------------------------------

    @rule(key=sid_keys, classname=classnames, data=st.one_of(st.none(), datas))
    def create(self, key, classname, data):
        sid = self.sid(key)
        out = Outcome(self.c.create, sid, classname, data)
        if not valid_sid(sid) or (classname is not None and len(classname) > MAX_NAME_LEN):
            self.expect_error(out, "BADARG")
        elif sid in self.sessions:
            self.expect_error(out, "DUPSESSION")
        else:
            self.expect_value(out, True)
            self.sessions[sid] = MSession(data=data or b"", classname=classname or b"")

    @rule(key=sid_keys)
    def destroy(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.destroy, sid)
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
        else:
            self.expect_value(out, True)  # missing or not
            self.sessions.pop(sid, None)

    @rule(key=sid_keys, name=names, value=values)
    def set(self, key, name, value):
        sid = self.sid(key)
        out = Outcome(self.c.set, sid, name, value)
        errs = self.arg_errors(sid, name)
        if self.expect(out, errs, lambda: True):
            self.sessions[sid].vars[name] = value

    @rule(key=sid_keys, name=names, default=st.sampled_from([None, b"DEFAULT", b""]))
    def get(self, key, name, default):
        sid = self.sid(key)
        out = Outcome(self.c.get, sid, name, default)
        errs = self.arg_errors(sid, name)
        self.expect(out, errs, lambda: self.sessions[sid].vars.get(name, default))

    @rule(key=sid_keys)
    def get_array(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.get_array, sid)
        errs = self.arg_errors(sid)
        if errs:
            self.expect_error(out, *errs)
        else:
            assert out.error is None, out
            assert {b(k): v for k, v in out.value.items()} == self.sessions[sid].vars

    @rule(key=sid_keys, pairs=st.dictionaries(names, values, max_size=3))
    def set_array(self, key, pairs):
        sid = self.sid(key)
        out = Outcome(self.c.set_array, sid, pairs)
        errs = self.arg_errors(sid, *pairs)
        if self.expect(out, errs, lambda: None):  # on error nothing applied: atomic
            self.sessions[sid].vars.update(pairs)

    @rule(key=sid_keys)
    def getdata(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.getdata, sid)
        errs = self.arg_errors(sid)
        self.expect(out, errs, lambda: self.sessions[sid].data)

    @rule(key=sid_keys, data=datas)
    def setdata(self, key, data):
        sid = self.sid(key)
        out = Outcome(self.c.setdata, sid, data)
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
            return
        self.expect_value(out, True)
        if sid in self.sessions:
            self.sessions[sid].data = data
        else:
            self.sessions[sid] = MSession(data=data)  # DATASET creates

    @rule(key=sid_keys, name=names, delta=deltas)
    def inc(self, key, name, delta):
        sid = self.sid(key)
        out = Outcome(self.c.inc, sid, name, delta)
        errs = self.arg_errors(sid, name)
        if errs:
            self.expect_error(out, *errs)
            return
        variables = self.sessions[sid].vars
        current = variables.get(name, b"0")  # a missing variable counts as 0
        if not is_int_value(current):
            self.expect_error(out, "NOVALUE")
            return
        new = int(current) + delta
        if not INT64_MIN <= new <= INT64_MAX:
            self.expect_error(out, "BADARG")  # contract silent; the value is kept
            return
        self.expect_value(out, new)
        variables[name] = str(new).encode()

    @rule(key=sid_keys, k=st.integers(0, 7), delta=deltas)
    def inc_existing_var(self, key, k, delta):
        """INC on a variable the session has (so NOVALUE and overflow happen)."""
        s = self.sessions.get(self.sid(key))
        name = sorted(s.vars)[k % len(s.vars)] if s is not None and s.vars else b"n"
        self.inc(key, name, delta)

    @rule(name=names, value=values)
    def find(self, name, value):
        out = Outcome(self.c.find, name, value)
        if not valid_name(name):
            self.expect_error(out, "BADARG")
            return
        assert out.error is None, out
        found = [b(s) for s in out.value]
        assert len(found) == len(set(found)), f"duplicates in {found!r}"
        assert set(found) == {sid for sid, s in self.sessions.items() if s.vars.get(name) == value}

    @rule()
    def list(self):
        ids = [b(s) for s in self.c.list()]
        assert len(ids) == len(set(ids)), f"duplicates in {ids!r}"
        assert set(ids) == set(self.sessions)

    @rule(name=names)
    def listvar(self, name):
        out = Outcome(self.c.listvar, name)
        if not valid_name(name):
            self.expect_error(out, "BADARG")
            return
        assert out.error is None, out
        assert {b(k): v for k, v in out.value.items()} == {
            sid: s.vars[name] for sid, s in self.sessions.items() if name in s.vars
        }

    @rule()
    def count(self):
        assert self.c.count() == len(self.sessions)

    @rule(key=sid_keys)
    def timeout_get(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.timeout, sid)
        errs = self.arg_errors(sid)
        self.expect(out, errs, lambda: self.sessions[sid].timeout)

    @rule(key=sid_keys, seconds=timeouts)
    def timeout_set(self, key, seconds):
        # Only timeouts far longer than a test run are valid in the pool, so
        # nothing expires behind the model's back.
        sid = self.sid(key)
        out = Outcome(self.c.timeout, sid, seconds)
        errs = self.arg_errors(sid)
        if valid_sid(sid) and not 1 <= seconds <= MAX_TIMEOUT:
            errs.append("BADARG")
        if self.expect(out, errs, lambda: seconds):
            self.sessions[sid].timeout = seconds

    @rule(key=sid_keys)
    def ctl_exist(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.ctl, sid, "EXIST")
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
        else:
            self.expect_value(out, 1 if sid in self.sessions else 0)

    @rule(key=sid_keys)
    def ctl_ttl(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.ctl, sid, "TTL")
        errs = self.arg_errors(sid)
        if errs:
            self.expect_error(out, *errs)
            return
        assert out.error is None, out
        timeout = self.sessions[sid].timeout
        assert timeout - 10 <= out.value <= timeout, (out.value, timeout)

    # -- locks ----------------------------------------------------------------

    @rule(key=sid_keys)
    def lock(self, key):
        sid = self.sid(key)
        out = Outcome(self.c.lock, sid, wait=0, lease=600)
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
        elif sid in self.locks:
            self.expect_error(out, "LOCKED")
        else:
            # Locks belong to ids, whether or not a session exists.
            assert out.error is None, out
            assert type(out.value) is int and 0 < out.value < LOCK_KEY_LIMIT, out
            assert out.value not in self.locks.values(), "a key was handed out twice"
            self.locks[sid] = out.value

    @rule(key=sid_keys, other_key=st.sampled_from([1, 2**52, 0]))
    def unlock_with_held_key(self, key, other_key):
        sid = self.sid(key)
        held = self.locks.get(sid)
        out = Outcome(self.c.unlock, sid, held if held is not None else other_key)
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
        elif held is None:
            self.expect_error(out, "NOWLOCK")
        else:
            self.expect_value(out, held)
            del self.locks[sid]

    @rule(key=sid_keys, wrong=st.sampled_from([1, 0, 2**53 - 1, 2**64 - 1]))
    def unlock_with_wrong_key(self, key, wrong):
        sid = self.sid(key)
        held = self.locks.get(sid)
        if held is not None and wrong == held:
            wrong = held ^ 1
        out = Outcome(self.c.unlock, sid, wrong)
        if not valid_sid(sid):
            self.expect_error(out, "BADARG")
        elif held is None:
            self.expect_error(out, "NOWLOCK")
        else:
            self.expect_error(out, "LOCKED")  # and the lock is kept

    # -- uniq -----------------------------------------------------------------

    @rule(num_chars=uniq_lengths, classname=classnames, data=st.one_of(st.none(), datas))
    def uniq(self, num_chars, classname, data):
        out = Outcome(self.c.uniq, num_chars, classname, data)
        if not 1 <= num_chars <= MAX_UNIQ_LEN or (classname is not None and len(classname) > MAX_NAME_LEN):
            self.expect_error(out, "BADARG")
            return
        assert out.error is None, out
        sid = b(out.value)
        assert len(sid) == num_chars, out
        assert ID_SAFE.fullmatch(sid), f"uniq returned {sid!r}"
        assert sid not in self.sessions, f"uniq returned {sid!r}, which exists"
        assert sid not in self.locks, f"uniq returned {sid!r}, which is locked"
        self.sessions[sid] = MSession(data=data or b"", classname=classname or b"")
        self.uniq_ids.append(sid)
        # Reserved atomically: it exists now.
        assert self.c.ctl(sid, "EXIST") == 1

    # -- invariants -----------------------------------------------------------

    @invariant()
    def count_matches_model(self):
        assert self.c.count() == len(self.sessions)


def test_session_model(shared_node_process):
    node = shared_node_process
    with Client(node.host, node.port) as client:
        SessionMachine.client = client
        run_state_machine_as_test(
            SessionMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    node.read_log()
    assert "Traceback" not in node.log.decode(errors="replace")


# -----------------------------------------------------------------------------
# The grey zone of "integer value": what the model does not generate.


@pytest.mark.parametrize("value", [b"1_0", b"1__0", b"-1_000"])
def test_inc_rejects_python_only_integer_syntax(shared_node_process, value):
    """INC must fail with NOVALUE on a value that is not an integer. Digit
    grouping with underscores is Python literal syntax, not an integer in PHP
    (``(int)"1_0"`` is 1, ``is_numeric("1_0")`` is false) nor in any C
    ``strtol``; the node must not read ``"1_0"`` as 10."""
    node = shared_node_process
    with Client(node.host, node.port) as c:
        sid = b"inc-syntax-" + value
        c.destroy(sid)
        c.create(sid)
        c.set(sid, "n", value)
        with pytest.raises(MsessionError) as exc:
            c.inc(sid, "n")
        assert exc.value.code == "NOVALUE", exc.value
        assert c.get(sid, "n") == value
        c.destroy(sid)
