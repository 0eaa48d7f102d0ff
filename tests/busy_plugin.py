"""A test plugin whose CALL blocks the node's event loop ("tests.busy_plugin:Busy").

``CALL block MS`` sleeps ``MS`` milliseconds in the handler itself (time.sleep,
not trio.sleep): the whole node stalls, gossip included, as a node whose loop is
busy with a slow request would. ``CALL blocked`` answers the total milliseconds
blocked so far. Loaded by the node subprocess, whose cwd is the repository root,
as ``--plugin tests.busy_plugin:Busy`` (``tests`` is a namespace package).
"""

from __future__ import annotations

import time

MAX_BLOCK_MS = 5000


class Busy:
    def __init__(self):
        self.blocked_ms = 0

    def functions(self):
        return {"block": self.block, "blocked": lambda: self.blocked_ms}

    def block(self, ms: bytes = b"100") -> int:
        wanted = int(ms)
        if not 0 <= wanted <= MAX_BLOCK_MS:
            raise ValueError(f"block takes 0..{MAX_BLOCK_MS} ms")
        started = time.monotonic()
        time.sleep(wanted / 1000)
        took = round((time.monotonic() - started) * 1000)
        self.blocked_ms += took
        return took
