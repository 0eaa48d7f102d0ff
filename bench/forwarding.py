"""What forwarding costs: requests to a member for its own sessions and for
another member's, in a farm of two on loopback.

    .venv/bin/python -m bench.forwarding [--requests 4000]

One client sends GETVAL one request at a time to member A, first for sessions
A owns ("local"), then for sessions B owns ("forwarded"); it reports requests/s,
mean latency and the CPU each node spent per request (from /proc/PID/stat).
Nodes are children of this process, on loopback, stopped on exit.
"""

from __future__ import annotations

import argparse
import time

from cluster.ring import Ring
from protocol.client import Client

from .php_farm import MsessionFarm


def run(requests: int) -> list[dict]:
    farm = MsessionFarm(2)
    try:
        a, b = farm.nodes
        with Client(nodes=[farm.addresses[0]]) as c:
            status = c.status()  # as A sees the farm: A's name, and the members the ring is made of
        me = status["name"]
        names = [m["name"] for m in status["members"]]
        ring = Ring(names)
        if ring.id != status["ring"]:  # the owners below are computed here: they must be the farm's
            raise RuntimeError(f"ring {ring.id} computed here is not the farm's {status['ring']}")
        other = next(n for n in names if n != me)
        pool = [b"fwd-%d" % i for i in range(20000)]
        local = [s for s in pool if ring.owner(s) == me][:200]
        remote = [s for s in pool if ring.owner(s) == other][:200]
        rows = []
        with Client(nodes=[farm.addresses[0]]) as c:
            for sid in local + remote:
                c.setdata(sid, b"")
                c.set(sid, "a", "x" * 100)
            for label, sids in (("local", local), ("forwarded", remote)):
                before = (a.cpu_seconds(), b.cpu_seconds())
                start = time.perf_counter()
                for i in range(requests):
                    c.get(sids[i % len(sids)], "a")
                elapsed = time.perf_counter() - start
                after = (a.cpu_seconds(), b.cpu_seconds())
                rows.append({
                    "path": label,
                    "req_s": requests / elapsed,
                    "latency_us": elapsed / requests * 1e6,
                    "cpu_us_a": (after[0] - before[0]) / requests * 1e6,
                    "cpu_us_b": (after[1] - before[1]) / requests * 1e6,
                })
        return rows
    finally:
        farm.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per path (default 4000)")
    ns = parser.parse_args(argv)
    rows = run(ns.requests)
    print("| path | req/s | latency µs | CPU µs/req at A | at B |")
    print("|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['path']} | {r['req_s']:,.0f} | {r['latency_us']:.0f} | {r['cpu_us_a']:.0f} | {r['cpu_us_b']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
