"""The commands' quick argument paths (node/commands.py: well-formed session
ids, names, waits and leases skip the full checks) answer exactly as the full
checks do, for any arguments: a property test."""

from hypothesis import given, settings
from hypothesis import strategies as st

from node.commands import CommandError, LockWait, Node
from node.config import Config

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 7, 999, 300_000, 300_001]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1000.0, 1.5, -0.0]),
    st.binary(max_size=6), st.sampled_from([b"", b"s", b"t", b"abcd", b"abcde", b"60", b"-1"]),
    st.text(max_size=4),
)
_arg = st.one_of(_scalar, st.lists(_scalar, max_size=2), st.dictionaries(_scalar, _scalar, max_size=3))
_sid = st.sampled_from([b"s", b"t", b"abcd", b"abcde", b"", "s", 5, None])
# SETVAL GETVAL CREATE DROP GETALL SLOCK SUNLOCK TIMEOUT INC DATAGET DATASET
_cmd = st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16])
# the rest of the arguments: random, or one of the edge cases each quick path must refuse or accept as the full check
_rest = st.one_of(st.lists(_arg, max_size=3),
                  st.sampled_from([[True], [False], [1.0], [1.5], [b"5"], [-1], [0], [2**64], [None], [[]], [{}]]))
_op = st.tuples(_cmd, _sid, _rest, st.booleans())


def _run(node: Node, cmd: int, args: list, now: float):
    try:
        return ("ok", node.execute(cmd, args, now))
    except CommandError as exc:
        return ("error", exc.name, exc.message)


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=30))
def test_quick_argument_paths_answer_exactly_as_the_full_checks(ops):
    """Two nodes run the same requests; one has its quick paths turned off, so
    every argument goes through the full checks: same answers, same error
    names and messages, same sessions and lock holders."""
    config = Config(max_id_len=4, max_name_len=3)
    mono = [0.0]  # both nodes' lease clock: a short lease must not end between the two calls
    quick = Node(config, clock=lambda: 0.0, lock_clock=lambda: mono[0])
    full = Node(config, clock=lambda: 0.0, lock_clock=lambda: mono[0])
    full._max_id_len = full._max_name_len = full._max_wait_ms = full._max_lease_ms = -1
    full._max_timeout = full._max_key = -1
    keys: list[dict] = [{}, {}]  # each node's lock keys (random: they differ)
    for i, (cmd, sid, rest, own_key) in enumerate(ops):
        mono[0] = i / 100  # (leases of a few ms end between requests, never within one)
        answers = []
        for n, node in enumerate((quick, full)):
            args = [sid, *rest]
            if cmd == 11 and len(args) > 1 and type(args[1]) is int and args[1] > 0:
                args[1] = 0  # a valid wait becomes 0: there is no event loop here (bad ones stay)
            if cmd == 12 and own_key and sid in keys[n]:
                args = [sid, keys[n][sid]]  # the right key, as a client would send it
            answer = _run(node, cmd, args, float(i))
            if cmd == 11 and answer[0] == "ok":
                keys[n][sid] = answer[1]
            if answer[0] == "ok" and type(answer[1]) is LockWait:
                answer = ("ok", "waits", answer[1].wait)  # a valid wait not written as a positive int
            if cmd in (11, 12) and answer[0] == "ok" and answer[1] == keys[n].get(sid):
                answer = ("ok", "its key")  # SLOCK and SUNLOCK answer the key
            answers.append(answer)
        assert answers[0] == answers[1], (cmd, sid, rest, answers)
    for sid in (b"s", b"t", b"abcd"):
        assert _run(quick, 7, [sid], 1e6) == _run(full, 7, [sid], 1e6)
        assert bool(quick.locks.holder(sid)) == bool(full.locks.holder(sid))
