"""bench/php_farm.py's measure(): what it started is stopped whatever fails
(fakes in place of the servers: no process is started)."""

from __future__ import annotations

import pytest

from bench import php_farm
from bench.servers import BenchError


class _Backend:
    port = 1

    def __init__(self, stopped: list):
        self.stopped = stopped

    def start(self):
        return self

    def stop(self) -> None:
        self.stopped.append("backend")


def test_measure_stops_the_first_web_server_when_the_second_fails(monkeypatch):
    stopped: list = []
    made: list = []

    class FakePhpServer:
        def __init__(self, ini, workers: int = 4, log: bool = False):
            if made:
                raise BenchError("php -S did not start")
            made.append(self)
            self.port = 2

        def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(php_farm, "PhpServer", FakePhpServer)
    monkeypatch.setattr(php_farm, "MsessionServer", lambda: _Backend(stopped))
    with pytest.raises(BenchError):
        php_farm.measure("msession", 0.01)
    assert stopped == [made[0], "backend"]
