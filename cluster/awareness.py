"""Lifeguard's local health ("awareness") score (sans-I/O).

A node that misses its own probes' acks, does not hear the nacks it asked
for, or runs its timers late is more likely slow itself than surrounded by
failed peers. It raises its score; successful probes lower it. Its probe
interval and probe timeout are multiplied by ``score + 1``, so a struggling
node waits longer before accusing anybody (up to ``max_score`` times).
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("max_score", "score")

    def __init__(self, max_score: int):
        self.max_score = max(1, max_score)
        self.score = 0

    def apply(self, delta: int) -> int:
        """Adds ``delta`` and clamps to ``[0, max_score - 1]``; returns the new score."""
        self.score = min(self.max_score - 1, max(0, self.score + delta))
        return self.score

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
