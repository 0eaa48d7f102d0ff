"""Which member runs a request, and how answers from several combine (sans-I/O).

Every member can take every command. A command naming a session runs on the
session's owner under the receiving member's ring; a whole-farm command runs
on every live member and the answers are merged; the rest runs where it
arrives. A forwarded request carries a hop count: a member whose own view
says someone else owns the session passes it on, at most ``MAX_HOPS`` times,
and then refuses with BUSY rather than serve a session it does not own. So a
request is always served by the owner under the view of the member serving it.
"""

from __future__ import annotations

from typing import Any

from protocol.constants import Cmd

from .ring import Ring

KEYED = frozenset({
    Cmd.CTL, Cmd.SETVAL, Cmd.GETVAL, Cmd.CREATE, Cmd.DROP, Cmd.GETALL, Cmd.SLOCK,
    Cmd.SUNLOCK, Cmd.TIMEOUT, Cmd.INC, Cmd.DATAGET, Cmd.DATASET, Cmd.PLUGIN,
})
GATHER = frozenset({Cmd.COUNT, Cmd.LIST, Cmd.FIND, Cmd.LISTVAR})
MAX_HOPS = 2

LOCAL, FORWARD, SCATTER, REFUSE = "local", "forward", "scatter", "refuse"


def session_of(args: Any) -> bytes | None:
    """The session id a keyed request names, as the node will read it; None
    when it is not a valid id (the node's own checks then give the error)."""
    if type(args) is not list or not args:
        return None
    value = args[0]
    if type(value) is bytes:
        return value or None
    if type(value) is int:
        return str(value).encode()
    return None


def plan(cmd: int, args: Any, hops: int, ring: Ring, me: str) -> tuple[str, str | None]:
    """Where a request runs: (LOCAL, None), (FORWARD, owner), (SCATTER, None)
    or (REFUSE, owner) when it has been passed on too often."""
    if cmd in KEYED:
        sid = session_of(args)
        if sid is None:
            return LOCAL, None
        owner = ring.owner(sid)
        if owner is None or owner == me:
            return LOCAL, None
        if hops >= MAX_HOPS:
            return REFUSE, owner
        return FORWARD, owner
    if cmd in GATHER and hops == 0:
        return SCATTER, None
    return LOCAL, None


def merge(cmd: int, answers: list[Any]) -> Any:
    """One answer from the answers of every member, each session once."""
    if cmd == Cmd.COUNT:
        return sum(answers)
    if cmd == Cmd.LISTVAR:
        out: dict = {}
        for answer in answers:
            out.update(answer)
        return out
    seen: dict[bytes, None] = {}  # LIST and FIND: ids, in a stable order, once
    for answer in answers:
        for sid in answer:
            seen[sid] = None
    return list(seen)
