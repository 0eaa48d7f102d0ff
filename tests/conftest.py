from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node.config import Config  # noqa: E402
from node.server import Server  # noqa: E402
from procs import Farm, NodeProcess, stop_all  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_tests():
    yield
    stop_all()


def _running(node_or_farm):
    try:
        yield node_or_farm
    finally:
        node_or_farm.stop()


@pytest.fixture
def node_process():
    """A real ``msession serve`` process on a free loopback port."""
    yield from _running(NodeProcess())


@pytest.fixture(scope="module")
def shared_node_process():
    yield from _running(NodeProcess())


@pytest.fixture(scope="module")
def farm():
    """Three real nodes on loopback forming one farm (shared by a module's tests)."""
    yield from _running(Farm(3))


@pytest.fixture
def farms():
    """Makes farms for one test (``farms(n, *serve_args, prefix=...)``); all
    are killed at its end, even on failure."""
    made: list[Farm] = []

    def make(n: int, *args: str, prefix: str = "node") -> Farm:
        made.append(Farm(n, *args, prefix=prefix))
        return made[-1]

    try:
        yield make
    finally:
        for f in made:
            f.stop(signal.SIGKILL)


def make_config(**overrides) -> Config:
    return Config(**{"bind": "127.0.0.1", "port": 0, **overrides}).validate()


async def start_server(nursery: trio.Nursery, **overrides) -> Server:
    """Starts an in-process server in ``nursery``; ``server.ports[0]`` is its address."""
    server = Server(make_config(**overrides))
    await nursery.start(server.run)
    return server


@pytest.fixture
async def server(nursery):
    return await start_server(nursery)
