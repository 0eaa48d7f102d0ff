"""Smoke test of the benchmark: ``python -m bench`` drives both systems end to end.

It runs the real thing (an msession node, a redis-server, the load generator
processes) for one second per phase on 500 sessions, and checks the shape of
the output, not the numbers. It skips only when redis-server is missing and we
are not root (as root the bench installs it with apt-get).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from node.farm import child_env
from procs import ROOT


def _have_redis() -> bool:
    return bool(shutil.which("redis-server")) or os.access("/usr/bin/redis-server", os.X_OK)


def test_bench_runs_both_systems(tmp_path):
    if not _have_redis() and os.geteuid() != 0:
        pytest.skip("redis-server is not installed and we are not root (sudo apt-get install redis-server)")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--seconds", "1", "--warmup", "0", "--sessions", "500", "--json", str(out)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    report = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report

    lines = proc.stdout.strip().splitlines()
    rows = [line.split("|")[1:3] for line in lines if line.startswith("| ")]
    cells = {(system.strip(), mode.strip().split()[0]) for system, mode in rows}
    for system in ("msession", "redis"):
        for mode in ("unpipelined", "pipelined"):
            assert (system, mode) in cells, report

    m = re.fullmatch(r"ratio_vs_redis: (\d+\.\d\d)", lines[-1])
    assert m, report
    assert float(m.group(1)) > 0, report

    data = json.loads(out.read_text())
    assert len(data["results"]) == 4
    assert all(r["ops"] > 0 and r["errors"] == 0 for r in data["results"]), data["results"]
    assert data["ratio_vs_redis"] > 0
