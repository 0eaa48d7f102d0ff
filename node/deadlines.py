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
answered, so a slow reader of a large answer gets ``idle_timeout``. While a
request waits with a limit of its own (a lock, a member's answer) there is no
deadline (``waiting()``/``waited()``). The server copies ``deadline`` into the
connection's cancel scope when a call says it moved.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

IDLE_SLACK = 1.25


class HasFrame(Protocol):  # what received() needs of protocol.codec.FrameDecoder
    def has_frame(self) -> bool: ...


class ConnDeadline:
    __slots__ = ("idle_timeout", "frame_timeout", "deadline", "partial_since", "_held")

    def __init__(self, idle_timeout: float, frame_timeout: float, now: float):
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.partial_since: float | None = None  # when the incomplete frame began
        self.deadline = now + idle_timeout * IDLE_SLACK
        self._held = self.deadline  # the deadline waiting() lifted

    # received() and answered() run for every batch a connection reads: they
    # return whether ``deadline`` moved, so the caller copies it only then.

    def received(self, now: float, frames: HasFrame) -> bool:
        """Bytes arrived into ``frames`` (a ``FrameDecoder``; asked whether a
        whole frame is buffered only while one was incomplete)."""
        if self.partial_since is None:
            if self.deadline < now + self.idle_timeout:  # the idle deadline comes near: move it
                self.deadline = now + self.idle_timeout * IDLE_SLACK
                return True
            return False
        if frames.has_frame():
            self._idle(now)
            return True
        return False

    def answered(self, clock: Callable[[], float], pending: int) -> bool:
        """Every complete frame was answered; ``pending``: bytes of an
        incomplete frame still buffered. ``clock`` is read only when the
        deadline moves (not in the usual case: nothing incomplete, before or
        now)."""
        if not pending:
            if self.partial_since is not None:
                self._idle(clock())
                return True
            return False
        if self.partial_since is None:
            now = clock()
            self.partial_since = now  # a new frame has begun
            self.deadline = now + min(self.frame_timeout, self.idle_timeout)
            return True
        return False

    def waiting(self) -> None:
        """A request waits, with a limit of its own (a lock's wait, a member's
        answer): no deadline meanwhile. Lifted even when the idle deadline
        falls after the wait's end: were the loop to stall past both, both
        would fire at once and the client would get the idle TIMEOUT instead
        of its request's own answer."""
        if self.deadline != math.inf:
            self._held = self.deadline
            self.deadline = math.inf

    def waited(self, now: float) -> None:
        """The wait is over: the idle clock starts again (the idle deadline
        moved only when it comes near, as ``received()`` moves it)."""
        if self.deadline == math.inf:
            self.deadline = self._held
        if self.partial_since is None and self.deadline < now + self.idle_timeout:
            self.deadline = now + self.idle_timeout * IDLE_SLACK

    def reason(self) -> str:
        """Why the connection is closed when the deadline passes."""
        if self.partial_since is not None:
            return f"frame not completed within {self.frame_timeout:g} s: closing"
        return f"idle (or not reading answers) for {self.idle_timeout:g} s: closing"

    def _idle(self, now: float) -> None:
        self.partial_since = None
        self.deadline = now + self.idle_timeout * IDLE_SLACK
