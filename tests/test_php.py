"""PHP: the PHPUnit suite (client, msession_* functions, save handler) against a
real node, and the web-farm test: two ``php -S`` web servers sharing sessions
through msession, driven by virtual users.

The msession nodes of the web farm are conftest.py's 3-node ``farm``. Each web server
is given every node, starting from a different one (web server i talks to
node i first), so with a farm the two web servers use different nodes.

PHP must be installed (``bash deploy/install.sh --test`` as root installs
php-cli, php-msgpack and phpunit): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from node.farm import child_env, die_with_parent
from cluster.ring import Ring
from procs import ROOT, NodeProcess, node_info, wait_for

from bench.php_farm import PhpServer as BenchPhpServer  # noqa: E402

PHP_DIR = ROOT / "clients" / "php"
INSTALL_HINT = "run `bash deploy/install.sh --test` as root (Debian packages php-cli php-msgpack phpunit)"


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


@functools.cache
def _need_php() -> str:
    php = _need("php")
    mods = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout.lower().split()
    if "msgpack" not in mods:
        pytest.fail(f"the PHP extension msgpack is missing: {INSTALL_HINT}", pytrace=False)
    return php


# -- PHPUnit ------------------------------------------------------------------------


def test_phpunit_suite(farm, tmp_path):
    """Client, every msession_* function and the save handler, against a real
    node; client-side routing against a real 3-node farm."""
    _need_php()
    phpunit = _need("phpunit")
    node = NodeProcess("--plugin", "stats")
    try:
        env = child_env(extra={
            "MSESSION_TEST_NODES": node.address,
            "MSESSION_TEST_FARM": ",".join(farm.addresses),
            "TMPDIR": str(tmp_path),  # the routing table cache files
            # the persistent-connection tests start (and restart) nodes of their own
            "MSESSION_TEST_SERVE": json.dumps([sys.executable, "-m", "node.cli", "serve"]),
            "MSESSION_TEST_ROOT": str(ROOT),
        })
        # Its own process group: on a timeout, the nodes and fake nodes PHPUnit
        # started go with it (a PHP fatal error skips their tearDown too); it dies with
        # pytest, as every process the tests start (die_with_parent).
        phpunit_proc = subprocess.Popen(
            [phpunit, "-c", str(PHP_DIR / "phpunit.xml")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            out, err = phpunit_proc.communicate(timeout=180)
        finally:
            try:
                os.killpg(phpunit_proc.pid, signal.SIGKILL)  # whatever it left behind
            except ProcessLookupError:
                pass
            phpunit_proc.wait()
        proc = subprocess.CompletedProcess(phpunit_proc.args, phpunit_proc.returncode, out, err)
    finally:
        node.stop()
    assert proc.returncode == 0, f"PHPUnit failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "OK (" in proc.stdout and "Skipped" not in proc.stdout, proc.stdout


# -- the web farm -------------------------------------------------------------------


class PhpServer(BenchPhpServer):
    """``php -S`` with several workers running the farm page with msession's
    save handler (bench/php_farm.py's server: its own process group and TMPDIR)."""

    def __init__(self, save_path: str, mode: str, workers: int = 4, extra_ini: dict | None = None):
        _need_php()
        ini = {
            "auto_prepend_file": str(PHP_DIR / "session.php"),
            "session.save_path": save_path,
            "session.use_strict_mode": "1",
            "msession.mode": mode,
            "display_errors": "stderr",
            "log_errors": "0",
            **(extra_ini or {}),
        }
        super().__init__(ini, workers, log=True)


@contextmanager
def web_farm(nodes: list[str], mode: str, **kw):
    """Two web servers; server i lists the nodes starting from node i."""
    servers: list[PhpServer] = []
    try:
        for i in range(2):
            order = nodes[i % len(nodes):] + nodes[: i % len(nodes)]
            servers.append(PhpServer(",".join(order), mode, **kw))
        yield servers
    finally:
        for s in servers:
            s.stop()


def get(server: PhpServer, sid: str | None, **params) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        headers = {"Cookie": f"PHPSESSID={sid}"} if sid else {}
        conn.request("GET", f"/counter.php?{query}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"HTTP {resp.status}: {body!r}\n{server.log.decode(errors='replace')}"
        try:
            return json.loads(body)
        except ValueError:
            raise AssertionError(f"not JSON: {body!r}\n{server.log.decode(errors='replace')}") from None
    finally:
        conn.close()


def _user_sequential(servers, requests: int) -> list[int]:
    """One virtual user: requests alternate between the web servers."""
    first = get(servers[0], None)
    sid, values = first["sid"], [first["value"]]
    for i in range(1, requests):
        answer = get(servers[i % 2], sid)
        assert answer["sid"] == sid, "the session changed"
        values.append(answer["value"])
    return values


@pytest.mark.parametrize("mode", ["lock", "merge"])
def test_farm_every_answer_is_the_previous_plus_one(farm, mode):
    users, requests = 8, 15
    with web_farm(farm.addresses, mode) as servers, ThreadPoolExecutor(users) as pool:
        results = list(pool.map(lambda _: _user_sequential(servers, requests), range(users)))
        log = b"".join(s.log for s in servers).decode(errors="replace")
    for values in results:
        assert values == list(range(1, requests + 1)), f"lost or duplicated update: {values}\n{log}"
    assert "Warning" not in log and "Fatal" not in log, log


def test_farm_lock_mode_concurrent_requests_of_one_user_lose_nothing(farm):
    users, rounds, burst = 3, 4, 4
    with web_farm(farm.addresses, "lock") as servers, ThreadPoolExecutor(users * burst) as pool:
        sids = [get(servers[0], None, key="n")["sid"] for _ in range(users)]  # n = 1 each

        def ajax(sid: str, i: int) -> int:
            return get(servers[i % 2], sid, key="n", sleep=20)["value"]

        answers: dict[str, list[int]] = {sid: [1] for sid in sids}
        for _ in range(rounds):
            futures = [(sid, pool.submit(ajax, sid, i)) for sid in sids for i in range(burst)]
            for sid, f in futures:
                answers[sid].append(f.result(timeout=60))
        log = b"".join(s.log for s in servers).decode(errors="replace")
    total = 1 + rounds * burst
    for sid, values in answers.items():
        assert sorted(values) == list(range(1, total + 1)), f"{sid}: {sorted(values)}\n{log}"
    assert "Warning" not in log and "Fatal" not in log, log


def test_farm_merge_mode_concurrent_requests_to_different_keys_lose_nothing(farm):
    users, rounds, keys = 3, 4, ["a", "b", "c", "d"]
    with web_farm(farm.addresses, "merge") as servers, ThreadPoolExecutor(users * len(keys)) as pool:
        sids = [get(servers[0], None, key="start")["sid"] for _ in range(users)]

        def ajax(sid: str, i: int, key: str) -> int:
            return get(servers[i % 2], sid, key=key, sleep=20)["value"]

        for r in range(rounds):
            futures = {(sid, k): pool.submit(ajax, sid, i + r, k) for sid in sids for i, k in enumerate(keys)}
            for (sid, k), f in futures.items():
                assert f.result(timeout=60) == r + 1, f"{sid} {k}: lost an update in round {r}"
        final = [get(servers[1], sid, key="start")["value"] for sid in sids]  # start: 1 -> 2
        log = b"".join(s.log for s in servers).decode(errors="replace")
    assert final == [2] * users
    assert "Warning" not in log and "Fatal" not in log, log


@contextmanager
def ajax_load(servers, sids: list[str]):
    """AJAX bursts from each user (session) while the block runs: 4 requests
    at once, alternating web servers, each incrementing the session's counter
    in lock mode and holding the lock 30 ms. Yields ``more(n)``, which returns
    once n more rounds of bursts have been answered (so a farm change happens
    under load). Afterwards it checks that every update counted once and that
    no request warned."""
    burst, max_rounds = 4, 400
    answers = {sid: [1] for sid in sids}
    done = [0]
    stop = threading.Event()

    def ajax(sid: str, i: int) -> int:
        return get(servers[i % 2], sid, key="n", sleep=30)["value"]

    with ThreadPoolExecutor(len(sids) * burst + 1) as pool:

        def drive() -> int:
            rounds = 0
            while not stop.is_set() and rounds < max_rounds:  # bounded
                futures = [(sid, pool.submit(ajax, sid, i)) for sid in sids for i in range(burst)]
                for sid, f in futures:
                    answers[sid].append(f.result(timeout=60))
                rounds += 1
                done[0] = rounds
            return rounds

        def more(n: int) -> None:
            target = done[0] + n
            wait_for(lambda: done[0] >= target or driver.done(), 60, f"{n} more rounds of AJAX bursts")
            assert not driver.done() or driver.exception() is None, driver.exception()

        driver = pool.submit(drive)
        try:
            yield more
        finally:
            stop.set()
            driver.result(timeout=120)
    log = b"".join(s.log for s in servers).decode(errors="replace")
    for sid, values in answers.items():
        assert sorted(values) == list(range(1, len(values) + 1)), f"{sid}: {sorted(values)}\n{log}"
    assert "Warning" not in log and "Fatal" not in log, log


def test_farm_lock_mode_loses_nothing_while_a_member_joins_and_leaves(farms):
    # Locked sessions move to a member that joins, and back when it leaves
    # (SIGTERM: a rolling restart), while their users' AJAX bursts hold the
    # locks: every update counts once and no request warns (a lock left
    # behind on the old owner made the holder's unlock fail, and let a second
    # request in at the new owner).
    farm = farms(2, prefix="pj")
    later = Ring(["pj1", "pj2", "pj3"])
    users = 6
    with web_farm(list(farm.addresses), "lock") as servers:  # the first two members only
        made = [get(servers[0], None, key="n")["sid"] for _ in range(60)]
        moving = [sid for sid in made if later.owner(sid.encode()) == "pj3"]
        assert len(moving) >= users // 2  # (about 20 expected)
        sids = moving[: users // 2] + [sid for sid in made if sid not in moving][: users - users // 2]
        with ajax_load(servers, sids) as more:
            more(2)
            joiner = farm.add(name="pj3")
            farm.wait_converged()
            wait_for(lambda: node_info(joiner)["sessions"] > 0, 10, "sessions to move to the new member")
            more(2)
            joiner.stop(signal.SIGTERM)
            farm.nodes.remove(joiner)
            farm.wait_converged()
            more(2)


def test_farm_lock_mode_loses_nothing_in_a_rolling_restart(farms):
    # Every member in turn stopped with SIGTERM and started again on its
    # address, as an upgrade goes, while AJAX bursts hold the sessions' locks:
    # each web server lists every member, so its requests reach a member as
    # it drains; every update counts once and no request warns.
    farm = farms(3, prefix="pr")
    with web_farm(list(farm.addresses), "lock") as servers:
        sids = [get(servers[0], None, key="n")["sid"] for _ in range(6)]
        with ajax_load(servers, sids) as more:
            for old in list(farm.nodes):
                more(2)
                old.stop(signal.SIGTERM)
                farm.nodes.remove(old)
                farm.wait_converged()
                farm.add("--port", str(old.port), name=old.name)
                farm.wait_converged()
            more(2)
