"""Summarizes a py-spy profile of the msession node: ``python -m bench.pyspy_report FILE``.

FILE is py-spy's raw format (collapsed stacks, ``frame;frame;... count`` per
line), as written by ``python -m bench --py-spy FILE.txt`` or
``py-spy record --format raw``. Prints where the samples fall in broad
categories (the first rule that matches a stack wins), then the functions with
the most self time and the lines of ``node/`` and ``protocol/`` with the most
inclusive time.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

# (category, test on the joined stack, test on the leaf frame); first match wins.
RULES = [
    ("commands: store (Store.get/_touch/apply, HLC)", lambda s, leaf: "Node.execute" in s and ("Store." in s or "HLC." in s)),
    ("commands: dispatch and argument checks", lambda s, leaf: "Node.execute" in s),
    ("codec: decode request (decode_request)", lambda s, leaf: "decode_request" in s or "_bad_request" in s),
    ("codec: encode response (Encoder)", lambda s, leaf: "Encoder." in s or leaf.startswith("frame (protocol/codec.py")),
    ("codec: framing (FrameDecoder)", lambda s, leaf: "FrameDecoder" in s),
    ("kernel: send() on the socket", lambda s, leaf: leaf in NODE_SEND_LINES or (_is_syscall_line(leaf) and "send_all" in s)),
    ("kernel: recv() on the socket", lambda s, leaf: leaf in NODE_RECV_LINES or _is_syscall_line(leaf)),
    ("trio: epoll / IO manager", lambda s, leaf: "_io_epoll" in s),
    ("trio: cancel scopes (move_on_after / CancelScope)", lambda s, leaf: "move_on_after" in s or "CancelScope" in s or "CancelStatus" in s),
    ("trio: SocketStream.send_all wrapper (checkpoints, error translation)", lambda s, leaf: "send_all" in s),
    ("trio: SocketStream.receive_some wrapper (checkpoints, _try_sync)", lambda s, leaf: "receive_some" in s),
    ("trio: scheduler (task switches, reschedule, outcome)", lambda s, leaf: "trio/_core/_run.py" in leaf or "outcome" in leaf or "_traps.py" in leaf or "collections/__init__" in leaf),
    ("node/server.py loop itself", lambda s, leaf: "node/server.py" in leaf),
]

SYSCALL_LINES: set[str] = set()
NODE_SEND_LINES: set[str] = set()  # node/server.py calls the socket directly
NODE_RECV_LINES: set[str] = set()


def _is_syscall_line(leaf: str) -> bool:
    # ``return fn(self._sock, *args, **kwargs)`` in trio's _nonblocking_helper: the
    # samples whose leaf is that line are inside the C socket call.
    return leaf in SYSCALL_LINES


def load(path: str) -> list[tuple[list[str], int]]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            out.append((stack.split(";"), int(n)))
    return out


def _find_syscall_lines() -> None:
    import trio  # the installed trio's line numbers

    path = trio._socket.__file__
    with open(path) as f:
        for no, text in enumerate(f, 1):
            if "return fn(self._sock, *args, **kwargs)" in text:
                SYSCALL_LINES.add(f"_SocketType._nonblocking_helper (trio/_socket.py:{no})")


def _find_node_socket_lines() -> None:
    from pathlib import Path

    server = Path(__file__).resolve().parent.parent / "node" / "server.py"
    for no, text in enumerate(server.read_text().splitlines(), 1):
        if "self.sock.send(" in text:
            NODE_SEND_LINES.add(f"_Conn.send (node/server.py:{no})")
        elif "self.sock.recv(" in text:
            NODE_RECV_LINES.add(f"_Conn.recv (node/server.py:{no})")


def categorize(samples) -> Counter:
    _find_syscall_lines()
    _find_node_socket_lines()
    cats: Counter = Counter()
    for frames, n in samples:
        s, leaf = ";".join(frames), frames[-1]
        for name, test in RULES:
            if test(s, leaf):
                cats[name] += n
                break
        else:
            cats["other: " + leaf.split(" (")[0]] += n
    return cats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pyspy_report", description=__doc__.splitlines()[0])
    p.add_argument("file", help="py-spy raw output")
    p.add_argument("--top", type=int, default=15, help="rows per list (default 15)")
    ns = p.parse_args(argv)
    samples = load(ns.file)
    total = sum(n for _, n in samples)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples\n\nwhere the time goes (first matching rule):")
    for name, n in categorize(samples).most_common():
        if 100 * n / total >= 0.5:
            print(f"  {100 * n / total:5.1f}%  {name}")
    own, ours = Counter(), Counter()
    for frames, n in samples:
        own[frames[-1]] += n
        for f in set(frames):
            if "node/" in f or "protocol/" in f:
                ours[f] += n
    print("\nself time, top functions (file:line):")
    for f, n in own.most_common(ns.top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("\ninclusive time, lines of node/ and protocol/:")
    for f, n in ours.most_common(ns.top + 5):
        if "cli.py" in f:
            continue
        print(f"  {100 * n / total:5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)
