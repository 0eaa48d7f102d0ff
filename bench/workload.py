"""The session workload, identical for both systems.

Everything derives from one seed, so every run (and both systems within a run)
sees the same session ids, the same ~1 KB data blobs, the same variables and,
connection by connection, the same sequence of operations.

A session is what PHP keeps for a visitor: an opaque serialized blob (the save
handler's read/write: msession DATAGET/DATASET, redis GET/SET) plus a few
variables (msession GETVAL/SETVAL/INC/GETALL, redis HGET/HSET/HINCRBY/HGETALL on
a hash). The op mix is ~70 % reads / ~30 % writes; sessions are picked
uniformly at random.
"""

from __future__ import annotations

import hashlib
import random

# Operation kinds (small ints: they index tables in the hot loop).
DATA_GET, VAR_GET, VAR_GETALL, DATA_SET, VAR_SET, VAR_INC = range(6)
KIND_NAMES = ["data_get", "var_get", "var_getall", "data_set", "var_set", "var_inc"]

# (kind, share). Reads 0.70, writes 0.30.
MIX = [
    (DATA_GET, 0.35),
    (VAR_GET, 0.20),
    (VAR_GETALL, 0.15),
    (DATA_SET, 0.15),
    (VAR_SET, 0.08),
    (VAR_INC, 0.07),
]
# The reads (~70 %); their answers must not be empty: every session is
# preloaded with data and with every settable variable.
MUST_EXIST = frozenset({DATA_GET, VAR_GET, VAR_GETALL})

# Variables of every session. The counter is only ever INC'd; the others are
# read and overwritten.
SETTABLE_VARS = [b"user_id", b"username", b"last_page", b"csrf_token"]
COUNTER_VAR = b"hits"

N_BLOBS = 64
N_VALUES = 64
_PRINTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def session_id(seed: int, i: int) -> bytes:
    """A 32-character hex id, like PHP's default session ids."""
    return hashlib.md5(f"msession-bench-{seed}-{i}".encode()).hexdigest().encode()


def _blob(rng: random.Random, size: int) -> bytes:
    """Something shaped like PHP's session serialization, exactly ``size`` bytes."""
    user = "".join(rng.choices(_PRINTABLE, k=8))
    head = f'user|s:8:"{user}";cart|a:3:{{i:0;i:{rng.randrange(10**6)};i:1;i:{rng.randrange(10**6)};i:2;i:{rng.randrange(10**6)};}}prefs|s:'
    pad = "".join(rng.choices(_PRINTABLE, k=max(0, size - len(head) - 3)))
    return (head + f'{len(pad)}:"{pad}";')[:size].ljust(size, "x").encode() if size > 0 else b""


class Workload:
    """Ids, blobs and values of one run (a few hundred KB; built in ~50 ms)."""

    def __init__(self, seed: int = 20240601, sessions: int = 10_000, data_size: int = 1024):
        self.seed = seed
        self.n_sessions = sessions
        self.data_size = data_size
        rng = random.Random(f"workload-{seed}")
        self.sids = [session_id(seed, i) for i in range(sessions)]
        self.blobs = [_blob(rng, data_size) for _ in range(N_BLOBS)]
        self.values = [
            "".join(rng.choices(_PRINTABLE, k=rng.randrange(8, 40))).encode() for _ in range(N_VALUES)
        ]

    def initial_vars(self, i: int) -> dict[bytes, bytes]:
        """The variables a session is preloaded with."""
        sid = self.sids[i]
        return {
            b"user_id": str(100000 + i).encode(),
            b"username": b"user%d" % i,
            b"last_page": b"/catalog/item/%d" % (i * 7 % 1000),
            b"csrf_token": hashlib.sha1(sid).hexdigest().encode(),
            COUNTER_VAR: b"0",
        }

    def initial_data(self, i: int) -> bytes:
        return self.blobs[i % N_BLOBS]


def thresholds() -> list[tuple[float, int]]:
    """Cumulative (upper bound, kind) pairs for picking a kind from random()."""
    out, acc = [], 0.0
    for kind, share in MIX:
        acc += share
        out.append((acc, kind))
    out[-1] = (1.0000001, out[-1][1])
    return out


def connection_rng(seed: int, connection: int) -> random.Random:
    """The op sequence of connection ``connection`` (same for both systems)."""
    return random.Random(f"ops-{seed}-{connection}")


class OpStream:
    """Draws ``(kind, session_index, arg_index)`` from one connection's RNG."""

    __slots__ = ("_random", "_n", "_table")

    def __init__(self, seed: int, connection: int, n_sessions: int):
        self._random = connection_rng(seed, connection).random
        self._n = n_sessions
        # 1000 slots -> kind, so a kind costs one random() and one index.
        table = []
        cuts = thresholds()
        for j in range(1000):
            x = (j + 0.5) / 1000
            table.append(next(k for bound, k in cuts if x < bound))
        self._table = table

    def next(self) -> tuple[int, int, int]:
        r = self._random
        return self._table[int(r() * 1000)], int(r() * self._n), int(r() * 4096)
