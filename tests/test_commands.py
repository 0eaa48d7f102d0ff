"""node/commands.py's Node, in process (no server): whole-store answers and
the limits a node checks arguments against."""

from node.commands import Node
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

