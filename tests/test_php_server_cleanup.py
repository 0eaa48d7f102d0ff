"""bench/php_farm.py's ``PhpServer`` (``php -S`` with workers) leaves nothing
behind when the process that started it is SIGKILLed: no php process of its
group, and its port closed. Skips only when php is missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from node.farm import die_with_parent
from procs import ROOT, wait_for

WORKERS = 3
STARTER = """
import sys, time
from bench.php_farm import PhpServer
server = PhpServer({}, workers=%d)
print(server.proc.pid, server.port, server.tmp, flush=True)
time.sleep(120)
""" % WORKERS


def _group(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()
        # fields[0] is field 3 (state), fields[2] field 5 (pgrp)
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry))
    return pids


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_php_server_workers_die_with_a_killed_starter():
    if shutil.which("php") is None:
        pytest.skip("php is not installed")
    starter = subprocess.Popen([sys.executable, "-c", STARTER], cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               preexec_fn=die_with_parent)
    pgid = port = tmp = None
    try:
        line = starter.stdout.readline().split()
        assert len(line) == 3, f"the starter did not start php -S (exit {starter.poll()})"
        pgid, port, tmp = int(line[0]), int(line[1]), line[2].decode()
        # the master, its workers (and whatever supervises them) are up: the case to test
        wait_for(lambda: len(_group(pgid)) >= WORKERS + 1, 10, "php -S and its workers running")
        assert _port_open(port)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        wait_for(lambda: not _group(pgid) and not _port_open(port), 10,
                 "every php process of the group gone and the port closed after the starter's SIGKILL")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
        starter.stdout.close()
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)  # whatever a failure left behind
            except ProcessLookupError:
                pass
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
