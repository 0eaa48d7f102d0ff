"""When a client connection must be closed, and why (sans-I/O).

A connection has one deadline at a time:

- while no frame is incomplete, the *idle* deadline: ``idle_timeout`` after the
  last bytes arrived. It is moved forward only when it comes nearer than
  ``idle_timeout``, and then to ``1.25 x idle_timeout`` ahead, so a busy
  connection rarely changes it (an idle one is closed after 1 to 1.25 times
  ``idle_timeout``);
- while a frame is incomplete, that frame's deadline: ``frame_timeout`` after
  it began, so a client cannot hold a connection by sending a byte at a time.

A frame that completes goes back under the idle deadline before it is
answered, so a slow reader of a large answer gets ``idle_timeout``. The server
copies ``deadline`` into the connection's cancel scope after each call (and
skips calls that cannot change it), and lifts the deadline while a lock is
waited for, which has a limit of its own.
"""

from __future__ import annotations

IDLE_SLACK = 1.25


class ConnDeadline:
    __slots__ = ("idle_timeout", "frame_timeout", "deadline", "partial_since")

    def __init__(self, idle_timeout: float, frame_timeout: float, now: float):
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.partial_since: float | None = None  # when the incomplete frame began
        self.deadline = now + idle_timeout * IDLE_SLACK

    def received(self, now: float, frame_complete: bool) -> None:
        """Bytes arrived; ``frame_complete``: a whole frame is now buffered."""
        if self.partial_since is None:
            if self.deadline < now + self.idle_timeout:
                self.deadline = now + self.idle_timeout * IDLE_SLACK
        elif frame_complete:
            self._idle(now)

    def answered(self, now: float, pending: bool) -> None:
        """Every complete frame was answered; ``pending``: part of a frame is buffered."""
        if not pending:
            if self.partial_since is not None:
                self._idle(now)
        elif self.partial_since is None:
            self.partial_since = now  # a new frame has begun
            self.deadline = now + min(self.frame_timeout, self.idle_timeout)

    def waited(self, now: float) -> None:
        """A lock wait ended (it has its own limit): the idle clock starts again."""
        if self.partial_since is None:
            self.deadline = max(self.deadline, now + self.idle_timeout * IDLE_SLACK)

    def reason(self) -> str:
        """Why the connection is closed when the deadline passes."""
        if self.partial_since is not None:
            return f"frame not completed within {self.frame_timeout:g} s: closing"
        return f"idle (or not reading answers) for {self.idle_timeout:g} s: closing"

    def _idle(self, now: float) -> None:
        self.partial_since = None
        self.deadline = now + self.idle_timeout * IDLE_SLACK
