"""Hybrid logical clock: versions that order every change to a session.

A version is one integer: the upper 48 bits are milliseconds of wall time, the
lower 16 bits a logical counter. ``tick(wall)`` returns a version greater than
every version this clock has issued or observed, and close to wall time, so
versions from different nodes compare by "which change happened later" even
when clocks drift a little (Kulkarni et al., 2014). Replicas merge per-variable
last-writer-wins by comparing versions; the node id breaks ties once
replication exists.
"""

from __future__ import annotations

LOGICAL_BITS = 16


class HLC:
    __slots__ = ("last",)

    def __init__(self, last: int = 0):
        self.last = last

    def tick(self, wall: float) -> int:
        physical = int(wall * 1000) << LOGICAL_BITS
        self.last = physical if physical > self.last else self.last + 1
        return self.last

    def observe(self, remote: int, wall: float) -> int:
        """Merges a version received from elsewhere; returns the next version."""
        if remote > self.last:
            self.last = remote
        return self.tick(wall)


def wall_ms(version: int) -> int:
    return version >> LOGICAL_BITS
