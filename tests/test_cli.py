"""The ``msession`` command against a real node process."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import NodeProcess, run, wait_for
from protocol.client import Client
from protocol.codec import encode_request, parse_response
from protocol.constants import Cmd, error_name


@pytest.fixture(scope="module")
def node(shared_node_process):
    return shared_node_process


def out(node, *args):
    return run(node, *args).stdout.decode()


def test_every_function_from_the_shell(node):
    assert out(node, "ping") == "OK\n"
    assert "sessions\t" in out(node, "info")
    assert out(node, "create", "c1", "cart", "DATA") == "OK\n"
    assert out(node, "getdata", "c1") == "DATA\n"
    assert out(node, "set", "c1", "user", "alice") == "OK\n"
    assert out(node, "get", "c1", "user") == "alice\n"
    assert out(node, "get", "c1", "nope", "fallback") == "fallback\n"
    assert out(node, "set_array", "c1", "a=1", "b=x=y") == ""
    assert out(node, "get-array", "c1") == "user\talice\na\t1\nb\tx=y\n"
    assert out(node, "inc", "c1", "hits") == "1\n"
    assert out(node, "inc", "c1", "hits", "9") == "10\n"
    assert out(node, "find", "user", "alice") == "c1\n"
    assert "c1\n" in out(node, "list")
    assert "c1\talice\n" in out(node, "listvar", "user")
    assert int(out(node, "count")) >= 1
    assert out(node, "setdata", "c2", "blob") == "OK\n"
    assert out(node, "timeout", "c2") == "1440\n"
    assert out(node, "timeout", "c2", "60") == "60\n"
    assert int(out(node, "ctl", "c2", "ttl")) in (59, 60)
    assert out(node, "ctl", "c2") == "1\n"
    key = out(node, "lock", "c2").strip()
    assert int(key) > 0
    assert run(node, "lock", "c2", "0", check=False).returncode == 1
    assert out(node, "unlock", "c2", key) == key + "\n"
    uniq = out(node, "uniq", "32").strip()
    assert len(uniq) == 32 and out(node, "ctl", uniq, "EXIST") == "1\n"
    assert len(out(node, "randstr", "12").strip()) == 12
    assert out(node, "destroy", "c2") == "OK\n"


def test_json_output(node):
    run(node, "create", "j1")
    run(node, "set", "j1", "k", "v")
    assert json.loads(out(node, "--json", "get-array", "j1")) == {"k": "v"}
    assert json.loads(out(node, "--json", "inc", "j1", "n")) == 1
    assert json.loads(out(node, "--json", "create", "j2")) is True
    assert "j1" in json.loads(out(node, "--json", "list"))
    proc = run(node, "--json", "get", "missing", "k", check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"error": "NOSESSION", "message": "no such session"}


def test_errors_are_one_line_and_exit_1(node):
    proc = run(node, "create", "e1", check=False)
    proc = run(node, "create", "e1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "msession: DUPSESSION: session already exists\n"
    proc = run(node, "call", "nope", check=False)
    assert proc.returncode == 1 and b"NOFN" in proc.stderr
    proc = run(node, "uniq", "0", check=False)
    assert proc.returncode == 1 and b"BADARG" in proc.stderr


def test_usage_errors_exit_2(node):
    assert run(node, "get", check=False).returncode == 2
    assert run(node, "nosuchcommand", check=False).returncode == 2
    assert run(node, "set_array", "s", "novalue", check=False).returncode != 0


def test_node_from_environment(node):
    assert run(None, "ping", env={"MSESSION_NODES": f"127.0.0.1:1,{node.address}"}).stdout == b"OK\n"


def test_unreachable_node_is_noconnect():
    proc = run(None, "--node", "127.0.0.1:1", "ping", check=False)
    assert proc.returncode == 1 and b"NOCONNECT" in proc.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "msession"
    proc = subprocess.run([str(script), "--help"], capture_output=True, timeout=30)
    assert proc.returncode == 0 and b"serve" in proc.stdout


def test_serve_reads_config_file_and_environment(tmp_path):
    cfg = tmp_path / "msession.toml"
    cfg.write_text('session_timeout = 77\nplugins = ["stats"]\n[plugin_options.stats]\nmax_classes = 5\n')
    node = NodeProcess("--config", str(cfg), env={"MSESSION_LOCK_LEASE": "12.5"})
    try:
        run(node, "create", "s")
        assert out(node, "timeout", "s") == "77\n"
        assert json.loads(out(node, "call", "stats"))["created"] == 1
    finally:
        node.stop()


def test_serve_refuses_bad_configuration(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("session_timeout = -1\n")
    proc = run(None, "serve", "--port", "0", "--config", str(cfg), check=False)
    assert proc.returncode == 2 and b"session_timeout must be positive" in proc.stderr
    proc = run(None, "serve", "--port", "0", "--plugin", "nosuchplugin", check=False)
    assert proc.returncode == 2 and b"no plugin named 'nosuchplugin'" in proc.stderr


def test_serve_reports_a_port_in_use(node):
    proc = run(None, "serve", "--port", str(node.port), check=False)
    assert proc.returncode != 0 and b"cannot listen on 127.0.0.1:" in proc.stderr
    assert b"Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_is_clean_with_busy_connections(sig):
    """Open connections, a held lock and a waiting locker do not delay or break shutdown."""
    node = NodeProcess()
    holder = Client(port=node.port)
    waiter_sock = socket.create_connection((node.host, node.port))
    try:
        holder.lock("s")
        waiter_sock.sendall(encode_request(1, Cmd.SLOCK, [b"s", 60000]))
        wait_for(lambda: holder.info()["lock_waiters"] == 1, 5, "the locker waiting")
        idle = socket.create_connection((node.host, node.port))
        t = time.monotonic()
        assert node.stop(sig) == 0  # not killed after stop()'s 10 s grace
        assert time.monotonic() - t < 5, "busy connections delayed shutdown"
        answers = []
        with waiter_sock.makefile("rb") as f:
            while head := f.read(4):
                answers.append(parse_response(f.read(int.from_bytes(head, "big"))))
        # its SLOCK did not run: the connection closes with BUSY (the client asks elsewhere)
        assert [(a.id, a.ok, error_name(a.code)) for a in answers] == [(None, False, "BUSY")]
        idle.close()
    finally:
        holder.close()
        waiter_sock.close()
        node.stop()
    log = node.read_log()
    assert "shutting down" in log and "Traceback" not in log
