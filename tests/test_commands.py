"""node/commands.py's Node, in process (no server): whole-store answers and
the limits a node checks arguments against."""

import dataclasses

import pytest

from node.commands import CommandError, Node
from node.config import Config
from protocol.constants import Cmd


def test_whole_store_answers_agree_on_which_sessions_are_alive_before_housekeeping():
    """A session whose timeout ran out inside a second (deadline 10.3) is gone
    at 10.5 for COUNT, INFO and the listings alike, though housekeeping has not
    reaped it yet."""
    node = Node(Config(session_timeout=10), clock=lambda: 0.0)
    node.execute(Cmd.CREATE, [b"old"], 0.3)  # deadline 10.3
    node.execute(Cmd.CREATE, [b"new"], 5.0)  # deadline 15.0
    for sid in (b"old", b"new"):
        node.execute(Cmd.SETVAL, [sid, b"k", b"v"], 0.3 if sid == b"old" else 5.0)
    for now in (10.2, 10.5, 10.5, 11.0):
        alive = node.execute(Cmd.LIST, [], now)
        assert node.execute(Cmd.COUNT, [], now) == len(alive), now
        assert node.execute(Cmd.INFO, [], now)["sessions"] == len(alive), now
        assert sorted(node.execute(Cmd.FIND, [b"k", b"v"], now)) == sorted(alive), now
        assert sorted(node.execute(Cmd.LISTVAR, [b"k"], now)) == sorted(alive), now
    assert node.execute(Cmd.LIST, [], 10.5) == [b"new"]


def test_a_nodes_limits_cannot_change_under_it():
    """Node copies its config's limits for the quick argument paths; the
    config is frozen, so the copies cannot go stale. Other limits take a
    new Config (dataclasses.replace) and a new Node."""
    config = Config(max_timeout=100, max_id_len=4, max_uniq_len=4, session_timeout=50).validate()
    node = Node(config, clock=lambda: 0.0)
    for name, value in (("max_timeout", 5), ("max_id_len", 10), ("max_lock_wait", 1.0), ("session_timeout", 7)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(node.config, name, value)
    node.execute(Cmd.CREATE, [b"s"], 0.0)
    assert node.execute(Cmd.TIMEOUT, [b"s", 100], 0.0) == 100
    with pytest.raises(CommandError, match="between 1 and 100"):
        node.execute(Cmd.TIMEOUT, [b"s", 101], 0.0)
    with pytest.raises(CommandError, match="longer than 4"):
        node.execute(Cmd.CREATE, [b"abcde"], 0.0)

    smaller = Node(dataclasses.replace(config, max_timeout=50, max_id_len=10, max_uniq_len=10).validate(), clock=lambda: 0.0)
    smaller.execute(Cmd.CREATE, [b"s"], 0.0)
    with pytest.raises(CommandError, match="between 1 and 50"):
        smaller.execute(Cmd.TIMEOUT, [b"s", 51], 0.0)
    assert smaller.execute(Cmd.CREATE, [b"abcde"], 0.0) is True
    assert node.config.max_timeout == 100  # the first node's config is untouched
