"""A plugin loaded by import path in the tests ("sample_plugin:Echo")."""


class Echo:
    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.events = []

    def setup(self, ctx):
        self.store = ctx.store

    def escape(self, session, val, param):
        if val == b"upper":
            return self.prefix.encode() + param.upper()
        if val == b"vars" and session is not None:
            return len(session.vars)
        if val == b"boom":
            raise RuntimeError("escape failed")
        return None

    def functions(self):
        return {"add": lambda a, b: int(a) + int(b), "boom": self.boom, "sessions": lambda: len(self.store)}

    def boom(self):
        raise ValueError("function failed")

    def on_create(self, session):
        self.events.append(("create", session.sid))

    def on_destroy(self, session):
        self.events.append(("destroy", session.sid))

    def on_expire(self, session):
        self.events.append(("expire", session.sid))
