"""The cluster side of the ``msession`` command: serve's cluster flags, ``status``
(its formatting as a pure function, and its errors) and the ``farm`` launcher."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from node.farm import child_env, die_with_parent
from node import cli
from node import config as config_mod
from node import farm
from procs import ROOT, NodeProcess, free_port, run, wait_for
from protocol.client import MsessionError


def run_cli(*args, env=None):
    """``msession ARGS`` with no node given; its exit status is the caller's to check."""
    return run(None, *args, check=False, env=env)


# -- serve flags -----------------------------------------------------------------------------

def serve_config(*argv, env=None, path=None):
    ns = cli.build_parser().parse_args(["serve", *argv])
    return config_mod.load(path, env=env or {}, overrides=cli.serve_overrides(ns))


def test_serve_cluster_flags_reach_the_config():
    cfg = serve_config("--name", "web1", "--gossip-port", "7000", "--seeds", "10.0.0.1:7946,10.0.0.2:7946",
                       "--seeds", "h3:7946", "--advertise", "10.0.0.9", "--forward-timeout", "2.5")
    assert cfg.name == "web1"
    assert cfg.gossip_port == 7000
    assert cfg.seeds == ["10.0.0.1:7946", "10.0.0.2:7946", "h3:7946"]
    assert cfg.advertise == "10.0.0.9"
    assert cfg.forward_timeout == 2.5


def test_serve_flags_beat_env_and_env_fills_the_rest():
    env = {"MSESSION_SEEDS": "a:1, b:2", "MSESSION_GOSSIP_PORT": "7001", "MSESSION_NAME": "from-env"}
    cfg = serve_config(env=env)
    assert (cfg.seeds, cfg.gossip_port, cfg.name) == (["a:1", "b:2"], 7001, "from-env")
    cfg = serve_config("--gossip-port", "-1", "--seeds", "c:3", env=env)
    assert (cfg.seeds, cfg.gossip_port, cfg.name) == (["c:3"], -1, "from-env")
    assert serve_config("--seeds", "", env=env).seeds == []  # an empty flag clears the env's seeds


def test_serve_cluster_defaults():
    cfg = serve_config()
    assert (cfg.name, cfg.gossip_port, cfg.seeds, cfg.advertise, cfg.forward_timeout) == ("", 7946, [], "", 5.0)


@pytest.mark.parametrize("args, message", [
    (["--gossip-port", "99999"], "gossip_port must be 0..65535"),
    (["--seeds", "nonsense"], "seed 'nonsense' must be host:port"),
    (["--seeds", "h:1,h2:notaport"], "seed 'h2:notaport' must be host:port"),
    (["--port", "7000", "--gossip-port", "7000"], "give each its own port"),
    (["--forward-timeout", "0"], "forward_timeout must be positive"),
    (["--name", "two words"], "name must be"),
])
def test_bad_serve_flags_are_one_clear_line(args, message):
    proc = run_cli("serve", "--bind", "127.0.0.1", "--port", "0", *args)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert message in err and err.startswith("msession: ") and err.count("\n") == 1, err


def test_serve_help_says_seeds_are_gossip_addresses():
    out = run_cli("serve", "--help").stdout.decode()
    assert "GOSSIP addresses" in " ".join(out.split())


# -- status formatting -----------------------------------------------------------------------

def member(name, i, state="alive", inc=1, parts=1366, sessions=0):
    return {"name": name, "node": f"127.0.0.{10 + i}:8086", "gossip": f"127.0.0.{10 + i}:7946",
            "state": state, "incarnation": inc, "partitions": parts, "share": parts / 4096, "sessions": sessions}


def status_map(members, **kw):
    return {"name": "node1", "cluster": True, "node": "127.0.0.11:8086", "gossip": "127.0.0.11:7946",
            "ring": "1a2b3c4d", "partitions": 4096, "health": 0, "members": members, **kw}


def rows(text):
    return [line.split() for line in text.splitlines()[1:-1]]


def test_status_table_healthy_farm():
    text = cli.status_table(status_map([
        member("node1", 1, parts=1366, sessions=120), member("node2", 2, parts=1365, sessions=95),
        member("node3", 3, parts=1365, sessions=101),
    ]))
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "GOSSIP", "STATE", "INC", "PARTS", "SHARE", "SESSIONS"]
    assert rows(text)[0] == ["node1", "127.0.0.11:8086", "127.0.0.11:7946", "alive", "1", "1366", "33.3%", "120"]
    assert len(lines) == 5 and text.endswith("\n")
    # columns line up: every row as long as the header's columns need
    starts = [lines[0].index(h) for h in ("NODE", "GOSSIP", "STATE")]
    for line in lines[1:4]:
        assert [line[s - 1] for s in starts] == [" ", " ", " "]
    summary = lines[-1]
    assert summary.startswith("ring 1a2b3c4d seen by node1 (127.0.0.11:8086): 4096 partitions, 3 members")
    assert "(3 alive, 0 suspect, 0 dead, 0 left)" in summary
    assert "316 sessions" in summary
    assert "load max/avg 1.00" in summary
    assert "unassigned" not in summary and "health" not in summary


def test_status_table_suspect_dead_left_and_uncounted_sessions():
    text = cli.status_table(status_map([
        member("node1", 1, parts=2048, sessions=10),
        member("node2", 2, state="suspect", inc=3, parts=2048, sessions=None),
        member("node3", 3, state="dead", inc=2, parts=0, sessions=None),
        member("node4", 4, state="left", inc=5, parts=0, sessions=None),
    ], health=2))
    r = {row[0]: row for row in rows(text)}
    assert r["node2"][3:] == ["suspect", "3", "2048", "50.0%", "?"]
    assert r["node3"][3:] == ["dead", "2", "0", "0.0%", "?"]
    assert r["node4"][3] == "left"
    summary = text.splitlines()[-1]
    assert "(1 alive, 1 suspect, 1 dead, 1 left)" in summary
    assert "at least 10 sessions (node2, node3, node4 not counted)" in summary
    # dead and left members own nothing and do not pull the average down
    assert "load max/avg 1.00" in summary
    assert "local health 2" in summary


def test_status_table_uneven_load_and_unassigned_partitions():
    text = cli.status_table(status_map([member("a", 1, parts=3000, sessions=1), member("b", 2, parts=1000, sessions=2)]))
    summary = text.splitlines()[-1]
    assert "4096 partitions (96 unassigned)" in summary
    assert "load max/avg 1.50" in summary  # 3000 / (4000 / 2)
    assert "3 sessions" in summary


def test_status_table_alive_member_without_partitions_counts_in_the_average():
    text = cli.status_table(status_map([member("a", 1, parts=4096), member("b", 2, parts=0)]))
    assert "load max/avg 2.00" in text


def test_status_table_standalone_and_empty():
    text = cli.status_table({"name": "solo", "cluster": False, "node": "127.0.0.1:8086", "gossip": None,
                             "ring": "00000000", "partitions": 4096, "health": 0,
                             "members": [member("solo", 0, parts=4096, sessions=7) | {"gossip": None}]})
    assert rows(text)[0][2] == "-"
    assert text.splitlines()[-1] == "standalone node seen by solo (127.0.0.1:8086): no gossip, no ring; 7 sessions"
    # what a node started with --gossip-port -1 answers
    text = cli.status_table({"name": "standalone", "cluster": False, "node": "127.0.0.1:8086", "gossip": None,
                             "ring": None, "partitions": 0, "health": 0, "members": []})
    assert text == "standalone node standalone (127.0.0.1:8086): no gossip, no ring\n"
    text = cli.status_table(status_map([]))
    assert len(text.splitlines()) == 2 and "0 members" in text and "load n/a" in text
    text = cli.status_table(status_map([member("solo", 1, parts=4096, sessions=3)]))
    assert "4096 partitions, 1 member (1 alive," in text and "100.0%" in text


# -- status errors -------------------------------------------------------------------------

def test_status_of_an_unreachable_node_is_one_line():
    addr = f"127.0.0.1:{free_port()}"
    for args in (["status", "--node", addr], ["--node", addr, "status"], ["status", "--node", addr, "--json"]):
        proc = run_cli(*args)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert err.startswith(f"msession status: cannot reach {addr}") and err.count("\n") == 1, err
        if "--json" in args:  # tools get the error as JSON too, as with every command
            answer = json.loads(proc.stdout)
            assert answer["error"] == "NOCONNECT" and answer["message"].startswith(f"cannot reach {addr}")
        else:
            assert proc.stdout == b""


def test_status_of_a_real_standalone_node():
    node = NodeProcess("--gossip-port", "-1")
    try:
        proc = run_cli("status", "--node", node.address)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().startswith("standalone node ") and proc.stdout.count(b"\n") == 1
        proc = run_cli("--node", node.address, "--json", "status")
        assert json.loads(proc.stdout)["cluster"] is False
    finally:
        node.stop()


def test_status_bad_address_is_a_usage_error():
    proc = run_cli("status", "--node", "127.0.0.1:notaport")
    assert proc.returncode == 2 and proc.stderr.decode().startswith("msession status: "), proc.stderr


# -- farm: pure parts --------------------------------------------------------------------------

def test_farm_addresses_stay_on_this_machine():
    assert farm.node_addresses("127.0.0.11", 3) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert farm.node_addresses("127.0.0.254", 3)[-1] == "127.0.1.0"
    for base, n in (("10.0.0.1", 2), ("192.168.1.5", 1), ("127.255.255.253", 3), ("127.0.0.0", 1), ("nope", 1)):
        with pytest.raises(farm.FarmError):
            farm.node_addresses(base, n)
    with pytest.raises(farm.FarmError):
        farm.node_addresses("127.0.0.11", 0)


def test_child_env_drops_msession_variables_and_changes_nothing(monkeypatch):
    monkeypatch.setenv("MSESSION_PORT", "1")
    monkeypatch.setenv("MSESSION_NODES", "a:1")
    monkeypatch.setenv("OTHER", "x")
    before = dict(os.environ)
    env = farm.child_env(extra={"MSESSION_TEST": "y"})
    assert env["OTHER"] == "x" and env["MSESSION_TEST"] == "y"
    assert "MSESSION_PORT" not in env and "MSESSION_NODES" not in env
    named = farm.child_env(["MSESSION_PORT"])
    assert "MSESSION_PORT" not in named and named["MSESSION_NODES"] == "a:1"
    assert farm.child_env(False)["MSESSION_PORT"] == "1"
    assert dict(os.environ) == before


def test_wait_converged_waits_through_a_node_not_ready_but_not_through_a_bug(monkeypatch):
    raised: list[BaseException] = []

    class FakeClient:
        def __init__(self, nodes, **kw):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def status(self):
            raise raised[0]

    monkeypatch.setattr(farm, "Client", FakeClient)
    for not_ready in (MsessionError("NOCONNECT", "no node answered"), ConnectionRefusedError("refused")):
        raised[:] = [not_ready]
        missing = farm.wait_converged(["127.0.0.1:1"], ["a"], 0.05, interval=0.01)
        assert missing is not None and "STATUS failed" in missing
    for bug in (AttributeError("'NoneType' object has no attribute 'x'"), TypeError("bad call")):
        raised[:] = [bug]
        with pytest.raises(type(bug)):
            farm.wait_converged(["127.0.0.1:1"], ["a"], 5.0, interval=0.01)


def test_farm_node_commands_seed_to_the_first_two():
    ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]
    cmds = farm.node_commands(ips, 8086, 7946, ["--log-level", "debug"])
    assert cmds[0] == ["serve", "--name", "node1", "--bind", "127.0.0.11", "--port", "8086",
                       "--gossip-port", "7946", "--log-level", "debug"]
    assert cmds[1][cmds[1].index("--seeds") + 1] == "127.0.0.11:7946"
    for cmd in cmds[2:]:
        assert cmd[cmd.index("--seeds") + 1] == "127.0.0.11:7946,127.0.0.12:7946"
    assert farm.node_commands(ips[:2], 8086, 7946, [])[1][-2:] == ["--seeds", "127.0.0.11:7946"]


@pytest.mark.parametrize("args, message", [
    (["--nodes", "2", "--base-ip", "10.0.0.1"], "leaves 127.0.0.0/8"),
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--nodes", "2", "--gossip-port", "0"], "--gossip-port must be 1..65535"),
    (["--nodes", "2", "--port", "7946"], "give each its own port"),
])
def test_farm_refuses_bad_options(args, message):
    proc = run_cli("farm", *args)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("msession farm: ") and message in err and err.count("\n") == 1, err


def test_farm_reports_a_node_that_cannot_start():
    # Arguments after "--" go to every node; this one makes each node refuse to start.
    proc = run_cli("farm", "--nodes", "2", "--base-ip", "127.0.0.51", "--port", "0", "--gossip-port",
                   str(free_port()), "--", "--max-frame", "1")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert re.search(r"msession farm: node\d \(pid \d+, [\d.:]+\) exited with status 2; its last lines:", err), err
    assert "node1: msession: max_frame must be at least 1024 bytes" in err
    assert proc.stdout == b""


# -- farm: a real one ------------------------------------------------------------------------

def free_ports_on(ips):
    """A TCP port and a TCP+UDP port free on every one of ``ips``."""
    for _ in range(50):
        port, gport = free_port(ips[0]), free_port(ips[0])
        socks = []
        try:
            for ip in ips:
                for p, kinds in ((port, [socket.SOCK_STREAM]), (gport, [socket.SOCK_STREAM, socket.SOCK_DGRAM])):
                    for kind in kinds:
                        s = socket.socket(socket.AF_INET, kind)
                        socks.append(s)
                        s.bind((ip, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        if port != gport:
            return port, gport
    raise RuntimeError("no free ports")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:][:1] == b"Z"  # a zombie not yet reaped by init


def test_farm_of_three_starts_reports_and_stops(tmp_path):
    ips = ["127.0.0.41", "127.0.0.42", "127.0.0.43"]
    port, gport = free_ports_on(ips)
    log_path = tmp_path / "farm.log"
    env = child_env()
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "farm", "--nodes", "3", "--base-ip", ips[0],
             "--port", str(port), "--gossip-port", str(gport)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, preexec_fn=die_with_parent,
        )
    lines: queue.Queue = queue.Queue()

    def read_stdout():
        for raw in launcher.stdout:
            lines.put(raw.decode())

    threading.Thread(target=read_stdout, daemon=True).start()
    pids: dict[str, int] = {}
    try:
        nodes_line = None
        deadline = time.monotonic() + 40
        while nodes_line is None:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no MSESSION_NODES line within 40 s; launcher log:\n{log_path.read_text()}")
            m = re.match(r"(node\d)\s+(\S+)\s+gossip (\S+)\s+pid (\d+)$", line.strip())
            if m:
                pids[m.group(1)] = int(m.group(4))
            elif line.startswith("MSESSION_NODES="):
                nodes_line = line.strip()
        addrs = [f"{ip}:{port}" for ip in ips]
        assert nodes_line == "MSESSION_NODES=" + ",".join(addrs)
        assert sorted(pids) == ["node1", "node2", "node3"]

        rings = set()
        for addr in (addrs[0], addrs[2]):
            proc = run_cli("status", "--node", addr, "--json")
            assert proc.returncode == 0, proc.stderr.decode()
            status = json.loads(proc.stdout)
            assert status["cluster"] is True and status["node"] == addr
            members = status["members"]
            assert [m["name"] for m in members] == ["node1", "node2", "node3"]
            assert [m["state"] for m in members] == ["alive"] * 3
            assert [m["node"] for m in members] == addrs
            assert [m["gossip"] for m in members] == [f"{ip}:{gport}" for ip in ips]
            assert sum(m["partitions"] for m in members) == status["partitions"] == 4096
            rings.add(status["ring"])
        assert len(rings) == 1  # the same view, the same ring
        # the text form, asked through $MSESSION_NODES as a user would after `export`
        proc = run_cli("status", env={"MSESSION_NODES": nodes_line.split("=", 1)[1]})
        assert proc.returncode == 0, proc.stderr.decode()
        text = proc.stdout.decode()
        assert text.count(" alive ") == 3 and "(3 alive, 0 suspect, 0 dead, 0 left)" in text, text

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0, log_path.read_text()
        wait_for(lambda: all(_gone(pid) for pid in pids.values()), 10, f"the farm's nodes gone ({pids})")
        log_text = log_path.read_text()
        assert "received SIGTERM: stopping 3 nodes" in log_text and "all nodes stopped" in log_text
        assert re.search(r"^node2: .*msession listening on", log_text, re.M)  # children's stderr, prefixed
    finally:
        if launcher.poll() is None:
            launcher.kill()  # its nodes die with it (PR_SET_PDEATHSIG)
            launcher.wait()
        for pid in pids.values():
            if not _gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        launcher.stdout.close()
