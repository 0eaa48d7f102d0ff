"""Logging that a misbehaving client or plugin cannot turn into a flood."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``period`` seconds, then counts what it drops.

    Any client can provoke a log line per bad frame; a flood must not fill the
    disk or block the event loop on a full stderr pipe.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, period: float = 10.0):
        self.logger, self.burst, self.period = logger, burst, period
        self._window = -period
        self._count = self._dropped = 0

    def info(self, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._window >= self.period:
            if self._dropped:
                self.logger.info("%d similar log lines suppressed", self._dropped)
            self._window, self._count, self._dropped = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.info(msg, *args, exc_info=exc_info)
        else:
            self._dropped += 1
