"""FWD's envelope and a member's HELLO (cluster/peer_wire.py): what the cluster
builds is what the server reads, through the real codec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cluster.peer_wire import fwd_args, is_member_hello, member_hello, parse_fwd
from node.commands import CommandError
from protocol.codec import ClientProtocol, decode_request
from protocol.constants import PROTOCOL_VERSION, Cmd

ROOT = Path(__file__).resolve().parent.parent


def over_the_wire(cmd: int, args: list) -> list:
    """``args`` as the server decodes them from a request a member sends."""
    _rid, data = ClientProtocol(1 << 20).request(cmd, args)
    _rid, got_cmd, got = decode_request(data[4:])  # (the frame's 4-byte length first)
    assert got_cmd == cmd
    return got


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


@given(hops=st.integers(0, 2**32), cmd=st.sampled_from(list(Cmd)), args=st.lists(values, max_size=5))
def test_a_forwarded_request_arrives_whole(hops, cmd, args):
    # The cluster passes Cmd members (an IntEnum); the server reads plain ints.
    got_cmd, got_args, got_hops = parse_fwd(over_the_wire(Cmd.FWD, fwd_args(hops, cmd, args)))
    assert (got_cmd, got_args, got_hops) == (cmd, args, hops)
    assert type(got_cmd) is int and type(got_hops) is int


def test_the_envelope_is_hops_cmd_args():
    assert fwd_args(1, Cmd.GETVAL, [b"s", b"k"]) == [1, Cmd.GETVAL, [b"s", b"k"]]
    assert parse_fwd([0, 7, []]) == (7, [], 0)


@pytest.mark.parametrize("args", [
    None, b"x", {}, [], [1], [1, Cmd.PING], [1, 2, [], 4],
    [-1, Cmd.PING, []], [b"x", Cmd.PING, []], [1, b"x", []], [None, None, None],
    [1, Cmd.PING, None], [1, Cmd.PING, b"x"], [1, Cmd.PING, (1,)],
    [True, Cmd.PING, []], [1, True, []], [1.0, Cmd.PING, []], [1, float(Cmd.PING), []],
    [1, Cmd.PING, []],  # an IntEnum is not what the wire gives: refused as the server always did
])
def test_anything_else_is_the_usage_error(args):
    with pytest.raises(CommandError) as err:
        parse_fwd(args)
    assert (err.value.name, str(err.value)) == ("BADARG", "usage: FWD hops cmd [args]")


def test_a_member_says_so_in_its_hello():
    hello = member_hello()
    assert hello[0] == PROTOCOL_VERSION
    assert is_member_hello(over_the_wire(Cmd.HELLO, hello))
    assert is_member_hello(over_the_wire(Cmd.HELLO, member_hello(7)))


@pytest.mark.parametrize("args", [
    [PROTOCOL_VERSION],
    [PROTOCOL_VERSION, {}],
    [PROTOCOL_VERSION, {"member": False}],
    [PROTOCOL_VERSION, {"member": 1}],  # true, not truthy
    [PROTOCOL_VERSION, {"member": "yes"}],
    [PROTOCOL_VERSION, {"Member": True}],
    [PROTOCOL_VERSION, [b"member", True]],
    [PROTOCOL_VERSION, {"client": "php", "name": "x"}],
])
def test_a_client_hello_is_not_a_member(args):
    assert not is_member_hello(over_the_wire(Cmd.HELLO, args))


def test_only_decoded_arguments_count():
    # The server's decoder gives bytes keys; a str key never arrives, and
    # what is not HELLO's argument list is no member either.
    assert not is_member_hello([PROTOCOL_VERSION, {"member": True}])
    assert is_member_hello([PROTOCOL_VERSION, {b"member": True, b"other": 1}])
    for args in (None, b"", {}, (PROTOCOL_VERSION, {b"member": True})):
        assert not is_member_hello(args)


def test_the_membership_core_imports_nothing_of_the_node():
    # the gossip codec, the membership and its simulator are sans-I/O: the node's
    # commands, store and plugins stay out (FWD and HELLO live in peer_wire.py)
    code = (
        "import sys, cluster.membership, cluster.sim, cluster.messages\n"
        "print(sorted(n for n in sys.modules if n == 'node' or n.startswith('node.') or n in ('trio', 'cluster.peer_wire')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
