"""Starting and stopping real msession processes for tests (loopback only)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(rb"msession listening on (\S+):(\d+)")


class NodeProcess:
    """``msession serve`` in a child process, on a free loopback port."""

    def __init__(self, *args: str, env: dict | None = None):
        self.args = ["serve", "--bind", "127.0.0.1", "--port", "0", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSESSION_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *self.args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.log = b""
        self.host, self.port = self._wait_ready()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _wait_ready(self, timeout: float = 15.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.log += chunk
                m = READY.search(self.log)
                if m:
                    return m.group(1).decode(), int(m.group(2))
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"node did not start: {self.log.decode(errors='replace')}")

    def read_log(self) -> str:
        if self.proc.stderr.closed:
            return self.log.decode(errors="replace")
        fd = self.proc.stderr.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.log += chunk
        return self.log.decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.read_log()
        if not self.proc.stderr.closed:
            self.proc.stderr.close()
        return self.proc.returncode
