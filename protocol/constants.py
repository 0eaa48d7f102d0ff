"""Command numbers, status codes and error codes of the msession wire protocol.

The numbers below 1024 are those of the old Mohawk Software daemon (see
``PROTOCOL.md``), so that traces stay comparable. Numbers from 1100 up and
error codes from 16 up are ours.
"""

from __future__ import annotations

import enum

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8086
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
HEADER_SIZE = 4


class Status(enum.IntEnum):
    ERR = 0
    OK = 1


class Cmd(enum.IntEnum):
    CTL = 2
    SETVAL = 3
    GETVAL = 4
    CREATE = 5
    DROP = 6
    GETALL = 7
    FIND = 8
    COUNT = 9
    FLUSH = 10
    SLOCK = 11
    SUNLOCK = 12
    TIMEOUT = 13
    INC = 14
    DATAGET = 15
    DATASET = 16
    LIST = 17
    LISTVAR = 18
    UNIQ = 19
    RANDSTR = 20
    PLUGIN = 21
    CALL = 22
    SERIALIZE = 23
    RESTORE = 24
    EXEC = 25
    PING = 1026
    HELLO = 1100
    INFO = 1101
    STATUS = 1102  # the cluster as the asked node sees it
    ROUTES = 1103  # who owns which partition: lets a client send requests straight to owners
    # Between members of a farm (see docs/cluster.md); clients never send these.
    FWD = 1200  # [hops, cmd, args]: run a request forwarded by another member
    HANDOFF = 1201  # [[session state, ...]]: sessions moving to their new owner
    TAKE = 1202  # [sid]: the new owner asks the previous one for a session it still holds


class Err(enum.IntEnum):
    NOERROR = 0
    NOSESSION = 1
    DUPSESSION = 2
    NOWLOCK = 3
    NOVALUE = 4
    LOCKED = 5
    NOSEND = 6
    NOCONNECT = 7
    BADCONN = 8
    BADHDR = 9
    BADVER = 10
    BADLEN = 11
    BUFFER = 12
    DENIED = 13
    NOFN = 14
    UNKNOWN = 15
    # Ours.
    BADARG = 16
    BUSY = 17
    TIMEOUT = 18
    UNAVAILABLE = 19  # the member owning the session could not be reached (retry)


class Ctl(enum.IntEnum):
    """The ``which`` argument of CTL, in the order of the old extension."""

    EXIST = 0
    TTL = 1
    AGE = 2
    TLA = 3
    CTIME = 4
    TOUCH = 5
    NOW = 6


def error_name(code: int) -> str:
    try:
        return Err(code).name
    except ValueError:
        return f"E{code}"
