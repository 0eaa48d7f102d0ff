"""The suspicion timer with Lifeguard's independent confirmations (sans-I/O).

A member suspected by us is declared dead when its timer runs out. The timer
starts at ``max_timeout`` and shrinks toward ``min_timeout`` as other members
independently suspect the same member (each distinct accuser counts once)::

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

``k`` is how many confirmations bring it to ``min``; with ``k == 0`` (a tiny
cluster with nobody to confirm) the timer is ``min`` from the start. The
deadline is always measured from ``start``, so a confirmation that arrives
after the shortened deadline makes the timer due at once.
"""

from __future__ import annotations

import math


def suspicion_bounds(mult: int, max_mult: int, n: int, interval: float) -> tuple[float, float]:
    """``(min, max)`` timeouts for a cluster of ``n`` live members (memberlist's formula)."""
    low = mult * max(1.0, math.log10(max(1, n))) * interval
    return low, low * max_mult


class Suspicion:
    __slots__ = ("incarnation", "k", "min_timeout", "max_timeout", "start", "accusers", "deadline")

    def __init__(self, incarnation: int, accuser: str, k: int, min_timeout: float, max_timeout: float, now: float):
        self.incarnation = incarnation
        self.k = max(0, k)
        self.min_timeout = min_timeout
        self.max_timeout = max(min_timeout, max_timeout)
        self.start = now
        self.accusers = {accuser}
        self.deadline = now + self._timeout()

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Counts one more independent accuser; returns whether it was new.

        Confirmations beyond ``k`` change nothing but are still reported as
        new, so the caller re-broadcasts them (others may need them)."""
        if accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        self.deadline = self.start + self._timeout()
        return True

    def _timeout(self) -> float:
        if self.k < 1:
            return self.min_timeout
        c = min(self.confirmations, self.k)
        frac = math.log(c + 1) / math.log(self.k + 1)
        return max(self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac)
