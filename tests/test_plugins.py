import json

import pytest

from conftest import make_config
from node.plugins import PluginError, PluginManager, resolve
from node.plugins.stats import StatsPlugin
from node.server import Server
from protocol.client import AsyncClient, MsessionError


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


async def start(nursery, clock, **cfg):
    server = Server(make_config(**cfg), clock=clock)
    await nursery.start(server.run)
    return server


async def test_stats_plugin_by_entry_point_counts_lifecycle_events(nursery):
    clock = Clock()
    server = await start(nursery, clock, plugins=["stats"], session_timeout=10)
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("a", "cart")
        await c.create("b", "cart")
        await c.create("c", "user")
        await c.setdata("d", b"x")  # created by DATASET, no classname
        await c.destroy("a")
        await c.timeout("c", 100)
        clock.t += 11  # b and d expire; c has a longer timeout
        assert await c.count() == 1  # due sessions no longer count...
        server.node.housekeeping(clock())  # ...and the reaper removes them
        stats = json.loads(await c.call("stats"))
        assert stats == {"created": 4, "destroyed": 1, "expired": 2, "live": 1, "uptime": 11.0}
        assert json.loads(await c.call("classes")) == {"user": 1}
        assert json.loads(await c.call("top_classes", "5")) == [["user", 1]]
        await c.set("c", "k", "vvv")
        clock.t += 2
        info = json.loads(await c.plugin("c", "info"))
        assert info == {"classname": "user", "variables": 1, "bytes": 4, "age": 13.0, "idle": 2.0, "timeout": 100}
        assert await c.plugin("c", "size") == b"4"
        with pytest.raises(MsessionError) as exc:
            await c.plugin("c", "unknown")
        assert exc.value.code == "NOFN"
        with pytest.raises(MsessionError) as exc:
            await c.call("top_classes", "many")
        assert exc.value.code == "UNKNOWN" and "plugin error" in exc.value.message


async def test_plugin_by_import_path_with_options_and_hooks(nursery):
    clock = Clock()
    server = await start(
        nursery, clock, plugins=["sample_plugin:Echo"], plugin_options={"sample_plugin:Echo": {"prefix": ">"}},
        session_timeout=5,
    )
    echo = server.node.plugins.plugins[0]
    async with AsyncClient(*server.ports[0]) as c:
        await c.create("s")
        await c.set("s", "a", "1")
        assert await c.plugin("s", "upper", "abc") == b">ABC"
        assert await c.plugin("s", "vars") == b"1"
        assert await c.call("add", "2", "40") == b"42"
        assert await c.call("sessions") == b"1"
        for fn, args in (("plugin", ("s", "boom")), ("call", ("boom",))):
            with pytest.raises(MsessionError) as exc:
                await getattr(c, fn)(*args)
            assert exc.value.code == "UNKNOWN"
        with pytest.raises(MsessionError) as exc:
            await c.call("add", "x", "y")
        assert exc.value.code == "UNKNOWN"
        await c.create("t")
        await c.destroy("s")
        clock.t += 6
        assert await c.count() == 0
        server.node.housekeeping(clock())
        assert await c.ping()  # the node is still up after plugin errors
    assert echo.events == [("create", b"s"), ("create", b"t"), ("destroy", b"s"), ("expire", b"t")]


def test_unknown_plugins_are_clear_errors():
    with pytest.raises(PluginError, match="no plugin named"):
        resolve("nosuchplugin")
    with pytest.raises(PluginError, match="cannot import"):
        resolve("no.such.module:X")
    with pytest.raises(PluginError, match="no attribute"):
        resolve("sample_plugin:Nope")
    assert resolve("stats") is StatsPlugin


def test_duplicate_plugin_functions_are_refused():
    from node.store import Store
    from node.plugins import PluginContext

    m = PluginManager()
    store = Store()
    m.add(StatsPlugin(), PluginContext(store, lambda: 0.0), store)
    with pytest.raises(PluginError, match="defined twice"):
        m.add(StatsPlugin(), PluginContext(store, lambda: 0.0), store)


def test_plugin_results_must_be_strings_or_numbers():
    from node.plugins import to_wire

    assert to_wire("x") == b"x" and to_wire(3) == b"3" and to_wire(True) == b"1" and to_wire(b"\x00") == b"\x00"
    with pytest.raises(PluginError):
        to_wire(object())


def test_stats_overflow_class_is_counted_back_correctly():
    from node.store import Create, Drop, Store
    from node.plugins import PluginContext

    store = Store()
    m = PluginManager()
    stats = StatsPlugin(max_classes=1)
    m.add(stats, PluginContext(store, lambda: 0.0), store)
    store.apply(Create(b"a", 1, b"x"), 0)
    store.apply(Create(b"b", 2, b"y"), 0)  # no room for class y
    assert json.loads(stats.classes()) == {"(other)": 1, "x": 1}
    store.apply(Drop(b"a", 3), 0)  # room again, but b was counted as "(other)"
    store.apply(Drop(b"b", 4), 0)
    assert json.loads(stats.classes()) == {}


def test_a_failing_hook_is_logged(caplog):
    from node.store import Create, Store
    from node.plugins import PluginContext

    class Broken:
        def on_create(self, session):
            raise RuntimeError("hook bug")

    store = Store()
    PluginManager().add(Broken(), PluginContext(store, lambda: 0.0), store)
    with caplog.at_level("INFO", logger="msession.plugins"):
        store.apply(Create(b"a", 1), 0)
    assert store.get(b"a", 0) is not None
    assert "hook bug" in caplog.text
