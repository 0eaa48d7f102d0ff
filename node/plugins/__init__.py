"""Personality plugins: server-side Python extensions loaded by configuration.

A plugin is an object with any of these members (all synchronous, all
optional; they run on the node's event loop, so they must not block):

``setup(ctx)``
    called once with a ``PluginContext`` (the store, the clock, its options).
``escape(session, val, param)``
    answers ``PLUGIN`` (``msession_plugin``); ``session`` is the live
    ``Session`` or None. Return None to let the next plugin answer.
``functions()``
    returns ``{name: callable}``; ``CALL name p1..p4`` calls ``callable(*params)``
    with the parameters as bytes.
``on_create(session)``, ``on_destroy(session)``, ``on_expire(session)``
    hooks run after those events.

Results may be ``str``, ``bytes``, ``int`` or ``float`` and reach the client as
a string. A plugin is named in the configuration either by its entry point in
the group ``msession.plugins`` (``"stats"``) or by an import path
(``"package.module:attribute"``); a class is instantiated with the options
given in ``[plugin_options.NAME]``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

ENTRY_POINT_GROUP = "msession.plugins"


class PluginError(Exception):
    pass


@dataclass
class PluginContext:
    store: Any
    clock: Callable[[], float]
    options: dict = field(default_factory=dict)


def resolve(spec: str) -> Any:
    """Finds the object a plugin spec names (entry point or import path)."""
    if ":" not in spec and "." not in spec:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                return ep.load()
        raise PluginError(f"no plugin named {spec!r} in entry point group {ENTRY_POINT_GROUP}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r}: {exc}") from None
    if not attr:
        for attr in ("plugin", "Plugin"):
            if hasattr(module, attr):
                break
        else:
            raise PluginError(f"module {module_name!r} defines neither 'plugin' nor 'Plugin'")
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None


def to_wire(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, str):
        return result.encode()
    if isinstance(result, bool):
        return b"1" if result else b"0"
    if isinstance(result, (int, float)):
        return str(result).encode()
    raise PluginError(f"plugin returned {type(result).__name__}, expected str, bytes or a number")


class PluginManager:
    def __init__(self):
        self.plugins: list[Any] = []
        self.functions: dict[bytes, Callable] = {}

    def load(self, specs: list[str], options: dict[str, dict], store, clock) -> None:
        for spec in specs:
            obj = resolve(spec)
            opts = dict(options.get(spec, {}))
            plugin = obj(**opts) if isinstance(obj, type) else obj
            self.add(plugin, PluginContext(store, clock, opts), store)

    def add(self, plugin: Any, ctx: PluginContext, store) -> None:
        if hasattr(plugin, "setup"):
            plugin.setup(ctx)
        for name, fn in (plugin.functions() if hasattr(plugin, "functions") else {}).items():
            key = name.encode() if isinstance(name, str) else bytes(name)
            if key in self.functions:
                raise PluginError(f"plugin function {name!r} is defined twice")
            self.functions[key] = fn
        for hook in ("on_create", "on_destroy", "on_expire"):
            if hasattr(plugin, hook):
                getattr(store.hooks, hook).append(getattr(plugin, hook))
        self.plugins.append(plugin)

    def escape(self, session, val: bytes, param: bytes) -> bytes | None:
        for plugin in self.plugins:
            if hasattr(plugin, "escape"):
                result = plugin.escape(session, val, param)
                if result is not None:
                    return to_wire(result)
        return None

    def call(self, name: bytes, params: list[bytes]) -> bytes | None:
        fn = self.functions.get(name)
        if fn is None:
            return None
        return to_wire(fn(*params))
