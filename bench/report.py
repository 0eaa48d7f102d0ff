"""Merging worker results, the table, the JSON file, machine facts."""

from __future__ import annotations

import array
import datetime
import os
import platform
import sys
from dataclasses import asdict, dataclass, field


@dataclass
class PhaseResult:
    system: str
    mode: str  # "unpipelined" | "pipelined"
    depth: int
    seconds: float
    ops: int
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    error_kinds: dict
    dead_connections: int
    server_cpu_pct: float  # percent of one core
    loadgen_cpu_pct: float  # all workers together, percent of one core
    loadgen_worker_cpu_pct: list = field(default_factory=list)
    machine_busy_pct: float = 0.0  # every process and the kernel, percent of one core (/proc/stat)
    machine_steal_pct: float = 0.0  # time the hypervisor gave our vCPUs to someone else
    other_cpu_pct: float = 0.0  # machine busy - server - loadgen (other processes, softirqs)

    def loadgen_bound(self, cores: int) -> bool:
        """True when a worker ran flat out or the machine had no CPU left."""
        busiest = max(self.loadgen_worker_cpu_pct, default=0.0)
        return busiest >= 90.0 or self.server_cpu_pct + self.loadgen_cpu_pct >= 90.0 * cores


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    k = max(0, min(n - 1, int(q * n + 0.999999) - 1))
    return sorted_values[k]


def merge(system: str, mode: str, depth: int, seconds: float, results: list[dict],
          server_cpu_seconds: float, server_wall: float,
          machine: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> PhaseResult:
    lat = array.array("d")
    for r in results:
        lat.extend(r["latencies"])
    ordered = sorted(lat)
    del lat
    ops = sum(r["ops"] for r in results)
    kinds: dict = {}
    for r in results:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    workers = [100.0 * r["cpu_seconds"] / r["wall_seconds"] if r["wall_seconds"] > 0 else 0.0 for r in results]
    server_pct = 100.0 * server_cpu_seconds / server_wall if server_wall > 0 else 0.0
    busy_pct = 100.0 * machine[0] / server_wall if server_wall > 0 else 0.0
    return PhaseResult(
        system=system,
        mode=mode,
        depth=depth,
        seconds=seconds,
        ops=ops,
        ops_per_s=ops / seconds if seconds > 0 else 0.0,
        p50_ms=1000 * percentile(ordered, 0.50),
        p90_ms=1000 * percentile(ordered, 0.90),
        p99_ms=1000 * percentile(ordered, 0.99),
        max_ms=1000 * (ordered[-1] if ordered else 0.0),
        errors=sum(r["errors"] for r in results),
        error_kinds=kinds,
        dead_connections=sum(r["dead_connections"] for r in results),
        server_cpu_pct=server_pct,
        loadgen_cpu_pct=sum(workers),
        loadgen_worker_cpu_pct=[round(w, 1) for w in workers],
        machine_busy_pct=busy_pct,
        machine_steal_pct=100.0 * machine[2] / server_wall if server_wall > 0 else 0.0,
        other_cpu_pct=max(0.0, busy_pct - server_pct - sum(workers)),
    )


COLUMNS = [
    ("system", "<", lambda r: r.system),
    ("mode", "<", lambda r: r.mode if r.depth == 1 else f"{r.mode} ({r.depth})"),
    ("ops/s", ">", lambda r: f"{r.ops_per_s:,.0f}"),
    ("p50 ms", ">", lambda r: f"{r.p50_ms:.3f}"),
    ("p99 ms", ">", lambda r: f"{r.p99_ms:.3f}"),
    ("errors", ">", lambda r: str(r.errors)),
    ("server CPU %", ">", lambda r: f"{r.server_cpu_pct:.0f}"),
    ("loadgen CPU %", ">", lambda r: f"{r.loadgen_cpu_pct:.0f}"),
]


def table(results: list[PhaseResult]) -> str:
    rows = [[name for name, _, _ in COLUMNS]] + [[fn(r) for _, _, fn in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        cells = [f"{cell:{COLUMNS[i][1]}{widths[i]}}" for i, cell in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
        if j == 0:
            lines.append("|" + "|".join(("-" * (w + 1) + ":") if COLUMNS[i][1] == ">" else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info(redis_version: str) -> dict:
    import msgpack
    import trio

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "redis": redis_version,
        "trio": trio.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def to_json(machine: dict, config: dict, results: list[PhaseResult], ratios: dict) -> dict:
    return _rounded({"machine": machine, "config": config, "results": [asdict(r) for r in results], **ratios})
