"""The ``stats`` plugin: session lifecycle statistics, per classname.

Enable it with ``plugins = ["stats"]`` in the configuration. It answers:

- ``msession_call("stats")``: JSON ``{"created", "destroyed", "expired", "live",
  "uptime"}`` since the node started;
- ``msession_call("classes")``: JSON ``{classname: live sessions}``;
- ``msession_call("top_classes", n)``: the ``n`` classnames with most live
  sessions, as JSON ``[[classname, count], ...]``;
- ``msession_plugin(session, "info")``: JSON describing one session (classname,
  number of variables, bytes held, age and idle seconds); ``"size"`` returns
  only the bytes held.

Option ``max_classes`` (default 10000) bounds how many classnames are tracked;
sessions of further classnames are counted under ``"(other)"``.
"""

from __future__ import annotations

import json
from collections import Counter


class StatsPlugin:
    def __init__(self, max_classes: int = 10000):
        self.max_classes = int(max_classes)
        self.created = self.destroyed = self.expired = 0
        self.live_by_class: Counter[str] = Counter()
        self._clock = None
        self._started = 0.0
        self._overflow: set[bytes] = set()  # sessions counted under "(other)"

    def setup(self, ctx) -> None:
        self._clock = ctx.clock
        self._started = ctx.clock()

    def _gone(self, session) -> None:
        if session.sid in self._overflow:
            self._overflow.discard(session.sid)
            name = "(other)"
        else:
            name = session.classname.decode("utf-8", "replace")
        self.live_by_class[name] -= 1
        if self.live_by_class[name] <= 0:
            del self.live_by_class[name]

    def on_create(self, session) -> None:
        self.created += 1
        name = session.classname.decode("utf-8", "replace")
        if name not in self.live_by_class and len(self.live_by_class) >= self.max_classes:
            self._overflow.add(session.sid)
            name = "(other)"
        self.live_by_class[name] += 1

    def on_destroy(self, session) -> None:
        self.destroyed += 1
        self._gone(session)

    def on_expire(self, session) -> None:
        self.expired += 1
        self._gone(session)

    def functions(self):
        return {"stats": self.stats, "classes": self.classes, "top_classes": self.top_classes}

    def stats(self) -> str:
        return json.dumps(
            {
                "created": self.created,
                "destroyed": self.destroyed,
                "expired": self.expired,
                "live": self.created - self.destroyed - self.expired,
                "uptime": round(self._clock() - self._started, 3),
            }
        )

    def classes(self) -> str:
        return json.dumps(dict(sorted(self.live_by_class.items())))

    def top_classes(self, n: bytes = b"10") -> str:
        try:
            count = int(n)
        except ValueError:
            raise ValueError("top_classes takes a number") from None
        return json.dumps([[k, v] for k, v in self.live_by_class.most_common(max(0, count))])

    def escape(self, session, val: bytes, param: bytes):
        if session is None:
            return None
        size = len(session.data) + sum(len(k) + len(v) for k, (v, _) in session.vars.items())
        if val == b"size":
            return size
        if val == b"info":
            now = self._clock()
            return json.dumps(
                {
                    "classname": session.classname.decode("utf-8", "replace"),
                    "variables": len(session.vars),
                    "bytes": size,
                    "age": round(now - session.ctime, 3),
                    "idle": round(now - session.atime, 3),
                    "timeout": session.timeout,
                }
            )
        return None
