"""The arguments of two requests members send each other on the data port
(PROTOCOL.md 6.6), built and read here and nowhere else:

    FWD    [hops, cmd, args]                a request forwarded to its owner
    HELLO  [version, {"member": true}]      a member's first request on a link

Kept apart from the gossip codec (``messages.py``), so that it imports nothing
of the node (``CommandError`` is ``node.commands``'s).
"""

from __future__ import annotations

from node.commands import CommandError
from protocol.constants import PROTOCOL_VERSION


def fwd_args(hops: int, cmd: int, args: list) -> list:
    """FWD's arguments: ``args`` of ``cmd``, passed on ``hops`` times so far."""
    return [hops, cmd, args]


def parse_fwd(args) -> tuple[int, list, int]:
    """The request inside FWD's arguments, as ``(cmd, args, hops)``. Runs for
    every forwarded request: type checks only, then the fields.

    CommandError BADARG unless ``[hops >= 0, cmd, [args]]`` (ints are ints,
    not booleans)."""
    if (type(args) is not list or len(args) != 3 or type(args[0]) is not int or type(args[1]) is not int
            or args[0] < 0 or type(args[2]) is not list):
        raise CommandError("BADARG", "usage: FWD hops cmd [args]")
    return args[1], args[2], args[0]


def member_hello(version: int = PROTOCOL_VERSION) -> list:
    """HELLO's arguments by which a member says it is one (its links send it first)."""
    return [version, {"member": True}]


def is_member_hello(args) -> bool:
    """Whether HELLO's arguments, as the server decodes them, say the sender
    is a member of the farm (map keys arrive as bytes: ``raw=True``)."""
    return type(args) is list and len(args) > 1 and type(args[1]) is dict and args[1].get(b"member") is True
