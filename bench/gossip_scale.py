"""Gossip at scale, simulated: how fast one change reaches 1,000 members, at what cost.

    .venv/bin/python -m bench.gossip_scale                 # 1,000 members, prints a table
    .venv/bin/python -m bench.gossip_scale --members 200 --seed 3
    .venv/bin/python -m bench.gossip_scale --detection 300 # crash-detection distribution, N = 5 and 10

The members start from a converged view (everyone's state installed directly,
no joins), run a while in steady state, then three changes are injected one
after the other, each once the previous one has reached everybody:

- ``refute``: one member takes a new incarnation (a meta change: the same
  message a refutation or a restart sends);
- ``leave``: one member leaves gracefully;
- ``kill``: one member crashes; every other member must suspect it, then
  mark it dead.

For each change: when every member had it, in gossip intervals and probe
intervals (p50/p99/max over members) and seconds; bytes and packets sent per
member per second meanwhile, against steady state. Everything is virtual time
(cluster/sim.py), so the numbers are properties of the protocol and its
defaults, not of this machine; only the CPU time is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from cluster.membership import GossipConfig
from cluster.sim import SimCluster, crash_run

from .report import percentile


def _pct(values: list[float], p: float) -> float:
    return percentile(sorted(values), p)


def _sent(c: SimCluster) -> tuple[int, int]:
    hosts = c.up()
    return sum(h.mem.counters["bytes_out"] for h in hosts), sum(h.mem.counters["packets_out"] for h in hosts)


def _wait_for(c: SimCluster, kind: str, name: str, observers: int, limit: float, since: float) -> dict[str, float]:
    """Runs until ``observers`` members logged ``kind`` about ``name``; returns observer -> delay."""
    end = c.now + limit
    seen: dict[str, float] = {}
    pos = len(c.log) - 1
    while pos >= 0 and c.log[pos][0] >= since:
        pos -= 1
    pos += 1
    while True:
        for t, obs, k, m in c.log[pos:]:
            if k == kind and m.name == name and obs not in seen:
                seen[obs] = t - since
        pos = len(c.log)
        if len(seen) >= observers or c.now >= end:
            return seen
        c.run_for(0.05)


def _change(c: SimCluster, cfg: GossipConfig, n_members: int, kind: str, name: str, inject, limit: float) -> dict:
    t0 = c.now
    b0, p0 = _sent(c)
    inject()
    c.net.pump(c.hosts[name])
    seen = _wait_for(c, kind, name, n_members - 1, limit, t0)
    took = max(seen.values()) if seen else float("nan")
    b1, p1 = _sent(c)
    span = max(c.now - t0, 1e-9)
    live = len(c.up())
    delays = list(seen.values()) or [float("nan")]
    return {
        "reached": len(seen),
        "seconds": {"p50": _pct(delays, 0.5), "p99": _pct(delays, 0.99), "max": took},
        "gossip_rounds": {k: round(_pct(delays, q) / cfg.gossip_interval, 1) for k, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        "probe_rounds": {k: round(_pct(delays, q) / cfg.probe_interval, 1) for k, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        "bytes_per_member_s": (b1 - b0) / live / span,
        "packets_per_member_s": (p1 - p0) / live / span,
    }


def run(n: int = 1000, seed: int = 1, config: GossipConfig | None = None, steady: float = 5.0) -> dict:
    cfg = config or GossipConfig()
    cpu0 = time.process_time()
    c = SimCluster(seed=seed, config=cfg)
    names = c.bootstrap(n)
    c.run_for(2.0)  # warm up: timers spread out
    b0, p0 = _sent(c)
    c.run_for(steady)
    b1, p1 = _sent(c)
    result: dict = {
        "members": n,
        "seed": seed,
        "steady": {"bytes_per_member_s": (b1 - b0) / n / steady, "packets_per_member_s": (p1 - p0) / n / steady},
    }
    who = c.rng.sample(names, 3)
    host = c.hosts[who[0]]
    result["refute"] = _change(c, cfg, n, "update", who[0], lambda: host.mem.update_meta({"v": 2}, c.now), 30.0)
    result["leave"] = _change(c, cfg, n, "left", who[1], lambda: c.leave(who[1]), 30.0)
    c.kill(who[1])  # it left: the process is gone
    c.run_for(1.0)
    susp_t0 = c.now
    result["kill"] = _change(c, cfg, n - 1, "dead", who[2], lambda: c.kill(who[2]), 60.0)
    suspected = {}
    for t, obs, m in c.events("suspect", who[2]):
        suspected.setdefault(obs, t - susp_t0)
    result["kill"]["suspected_by"] = len(suspected)
    result["kill"]["suspect_seconds_max"] = max(suspected.values()) if suspected else float("nan")
    result["false_dead"] = sum(1 for _, _, m in c.events("dead") if m.name != who[2])
    result["simulated_s"] = c.now
    result["cpu_s"] = time.process_time() - cpu0
    result["internal_errors"] = sum(h.mem.counters["internal_errors"] for h in c.hosts.values())
    return result


def detection(runs: int, n: int, seed0: int = 0) -> dict:
    """Crash to "dead" at the last member, over ``runs`` seeded runs of ``n`` members."""
    worst = []
    for seed in range(seed0, seed0 + runs):
        _, _, _, dead = crash_run(n, seed)
        worst.append(max(dead.values()) if len(dead) == n - 1 else float("inf"))
    return {
        "members": n,
        "runs": runs,
        "p50": _pct(worst, 0.5),
        "p90": _pct(worst, 0.9),
        "p99": _pct(worst, 0.99),
        "max": max(worst),
        "mean": statistics.fmean(worst),
        "over_2s": sum(w > 2.0 for w in worst),
    }


def table(r: dict) -> str:
    lines = [
        f"{r['members']} simulated members, seed {r['seed']}, defaults of GossipConfig; "
        f"{r['simulated_s']:.1f} simulated s in {r['cpu_s']:.1f} s CPU",
        "",
        "| change | reached | seconds p50 / p99 / max | gossip rounds p50 / p99 / max "
        "| probe rounds p50 / p99 / max | bytes/member/s | packets/member/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| steady state | | | | | {r['steady']['bytes_per_member_s']:.0f} | {r['steady']['packets_per_member_s']:.1f} |",
    ]
    for kind, label in (("refute", "new incarnation"), ("leave", "leave"), ("kill", "crash -> dead")):
        x = r[kind]
        s, g, p = x["seconds"], x["gossip_rounds"], x["probe_rounds"]
        lines.append(
            f"| {label} | {x['reached']} | {s['p50']:.2f} / {s['p99']:.2f} / {s['max']:.2f} "
            f"| {g['p50']} / {g['p99']} / {g['max']} | {p['p50']} / {p['p99']} / {p['max']} "
            f"| {x['bytes_per_member_s']:.0f} | {x['packets_per_member_s']:.1f} |"
        )
    k = r["kill"]
    lines += [
        "",
        f"crash: suspected by {k['suspected_by']} members, the last after {k['suspect_seconds_max']:.2f} s; "
        f"false 'dead' verdicts: {r['false_dead']}; internal errors: {r['internal_errors']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gossip_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--detection", type=int, metavar="RUNS", help="instead: crash-detection distribution at N = 5 and 10")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.detection:
        out = [detection(args.detection, n) for n in (5, 10)]
        for d in out:
            print(
                f"N={d['members']}: crash -> dead at every member over {d['runs']} runs: "
                f"p50 {d['p50']:.2f} s, p90 {d['p90']:.2f} s, p99 {d['p99']:.2f} s, max {d['max']:.2f} s, "
                f"mean {d['mean']:.2f} s, over 2 s: {d['over_2s']}"
            )
    else:
        out = run(args.members, args.seed)
        print(table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
