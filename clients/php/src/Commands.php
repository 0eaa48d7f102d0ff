<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function count, is_string;

/**
 * The protocol's commands, named after the msession_* functions without the
 * prefix. Client runs each at once; Pipeline queues them for one round trip.
 * Session ids, names, values and data are strings (any bytes).
 */
trait Commands
{
    /** @param callable(mixed):mixed|null $convert */
    abstract protected function call(int $cmd, array $args, ?callable $convert = null): mixed;

    public function ping(): mixed
    {
        return $this->call(Protocol::PING, [], fn($v) => true);
    }

    /** The node's counters (sessions, connections, locks, ...). */
    public function info(): mixed
    {
        return $this->call(Protocol::INFO, []);
    }

    /** The farm as the node sees it (name, ring, members ...); cluster false on a standalone node. */
    public function status(): mixed
    {
        return $this->call(Protocol::STATUS, []);
    }

    public function count(): mixed
    {
        return $this->call(Protocol::COUNT, []);
    }

    public function create(string $session, ?string $classname = null, ?string $data = null): mixed
    {
        $args = [$session];
        if ($classname !== null || $data !== null) {
            $args[] = $classname ?? '';
        }
        if ($data !== null) {
            $args[] = $data;
        }
        return $this->call(Protocol::CREATE, $args, fn($v) => true);
    }

    public function destroy(string $session): mixed
    {
        return $this->call(Protocol::DROP, [$session], fn($v) => true);
    }

    public function set(string $session, string $name, string $value): mixed
    {
        return $this->call(Protocol::SETVAL, [$session, $name, $value], fn($v) => true);
    }

    /** The value, or $default when the variable is absent. */
    public function get(string $session, string $name, ?string $default = null): mixed
    {
        return $this->call(Protocol::GETVAL, [$session, $name], fn($v) => $v ?? $default);
    }

    /** name => value; integer-like names come back as int keys (PHP arrays). */
    public function getArray(string $session): mixed
    {
        return $this->call(Protocol::GETALL, [$session]);
    }

    /** Sets every pair at once (atomically). @param array<string,string> $pairs */
    public function setArray(string $session, array $pairs): mixed
    {
        return $this->call(Protocol::SETVAL, [$session, new Map($pairs)], fn($v) => null);
    }

    public function getData(string $session): mixed
    {
        return $this->call(Protocol::DATAGET, [$session]);
    }

    /** Creates the session when it does not exist. */
    public function setData(string $session, string $data): mixed
    {
        return $this->call(Protocol::DATASET, [$session, $data], fn($v) => true);
    }

    /** The new value (int); a missing variable counts as 0. */
    public function inc(string $session, string $name, int $delta = 1): mixed
    {
        $args = [$session, $name];
        if ($delta !== 1) {
            $args[] = $delta;
        }
        return $this->call(Protocol::INC, $args);
    }

    /** @return list<string> ids of sessions whose $name equals $value */
    public function find(string $name, string $value): mixed
    {
        return $this->call(Protocol::FIND, [$name, $value], fn($v) => array_map('strval', $v));
    }

    public function list(): mixed
    {
        return $this->call(Protocol::LIST, [], fn($v) => array_map('strval', $v));
    }

    /** session id => value, for every session that has $name. */
    public function listVar(string $name): mixed
    {
        return $this->call(Protocol::LISTVAR, [$name]);
    }

    /**
     * Locks $session and returns the key. Waits up to $wait seconds while
     * another holds it (0: fail at once with LOCKED; null: the node's
     * lock_wait), server-side, without polling; the lock's lease is $lease
     * seconds (null: the node's lock_lease).
     */
    public function lock(string $session, ?float $wait = null, ?float $lease = null): mixed
    {
        $args = [$session, $wait === null ? null : Protocol::ms($wait)];
        if ($lease !== null) {
            $args[] = Protocol::ms($lease);
        }
        return $this->call(Protocol::SLOCK, $args);
    }

    public function unlock(string $session, int $key): mixed
    {
        return $this->call(Protocol::SUNLOCK, [$session, $key]);
    }

    /** The inactivity timeout in seconds, after setting it when $seconds is given. */
    public function timeout(string $session, ?int $seconds = null): mixed
    {
        return $this->call(Protocol::TIMEOUT, $seconds === null ? [$session] : [$session, $seconds]);
    }

    /** A new session id of $chars characters, created atomically. */
    public function uniq(int $chars = 32, ?string $classname = null, ?string $data = null): mixed
    {
        $args = [$chars];
        if ($classname !== null || $data !== null) {
            $args[] = $classname ?? '';
        }
        if ($data !== null) {
            $args[] = $data;
        }
        return $this->call(Protocol::UNIQ, $args, fn($v) => (string)$v);
    }

    public function randstr(int $chars): mixed
    {
        return $this->call(Protocol::RANDSTR, [$chars], fn($v) => (string)$v);
    }

    public function plugin(string $session, string $val, ?string $param = null): mixed
    {
        $args = $param === null ? [$session, $val] : [$session, $val, $param];
        return $this->call(Protocol::PLUGIN, $args, [Protocol::class, 'text']);
    }

    public function callFunction(string $fn, string ...$params): mixed
    {
        if (count($params) > 4) {
            throw new \ArgumentCountError('at most 4 parameters');
        }
        return $this->call(Protocol::CALL, [$fn, ...$params], [Protocol::class, 'text']);
    }

    /** $which: EXIST, TTL, AGE, TLA, CTIME, TOUCH or NOW (name or number). */
    public function ctl(string $session, string|int $which = 'EXIST'): mixed
    {
        if (is_string($which)) {
            $code = Protocol::CTL_WHICH[strtoupper($which)] ?? null;
            if ($code === null) {
                throw new \ValueError("unknown ctl '$which' (EXIST, TTL, AGE, TLA, CTIME, TOUCH, NOW)");
            }
            $which = $code;
        }
        return $this->call(Protocol::CTL, [$session, $which]);
    }
}
