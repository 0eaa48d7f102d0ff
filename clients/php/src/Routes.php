<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function count, is_array, is_string, ord, strlen;

/**
 * A farm's partition -> owner table (ROUTES, PROTOCOL.md 6.5 and 6.6), so a
 * Client can send each session's requests straight to its owner instead of
 * having a member forward them.
 *
 * A session's partition is the top 12 bits of the MD5 digest of its id,
 * read big-endian (PHP's md5(), as the farm's Python computes it); the
 * table names the member owning each of the 4096 partitions.
 *
 * The table is cached so that PHP requests share it cheaply: in the process
 * (for one PHP request, or a CLI script), and across processes in APCu when
 * it is enabled, else in a small file in sys_get_temp_dir() (owner-only,
 * written atomically with rename(); a file not owned by this user or
 * writable by others is ignored). The key is the sorted node list. Entries
 * live TTL seconds (Client option route_ttl, 5 s): a stale table only costs
 * a forwarding hop (a member that does not own a session forwards it), never
 * a wrong answer.
 */
final class Routes
{
    public const PARTITIONS = 4096;

    /** @var array<string, Routes> key => table, in this process */
    private static array $memory = [];

    /** The owner's address when one member owns every partition (a farm of one), else null. */
    private ?string $single = null;

    /**
     * @param list<string> $members member index => "host:port" ('' when unknown)
     * @param string $owners 2 bytes per partition: big-endian member indexes ('' : no routing)
     */
    public function __construct(public readonly array $members, public readonly string $owners, public readonly float $expires)
    {
        if ($owners !== '' && $owners === str_repeat(substr($owners, 0, 2), self::PARTITIONS)) {
            $this->single = $members[(ord($owners[0]) << 8) | ord($owners[1])] ?? '';
        }
    }

    /** The partition (0..4095) of a session id, as the farm computes it. */
    public static function partition(string $sid): int
    {
        $h = md5($sid, true);
        return (ord($h[0]) << 4) | (ord($h[1]) >> 4);
    }

    /** "host:port" of the session's owner, or null (no table, standalone node, unknown address). */
    public function owner(string $sid): ?string
    {
        if ($this->owners === '') {
            return null;
        }
        if ($this->single !== null) {
            return $this->single === '' ? null : $this->single;  // no need to hash the id
        }
        $i = 2 * self::partition($sid);
        $addr = $this->members[(ord($this->owners[$i]) << 8) | ord($this->owners[$i + 1])] ?? '';
        return $addr === '' ? null : $addr;
    }

    /** From ROUTES's answer; a table that routes nothing for a standalone node or an answer we cannot use. */
    public static function fromAnswer(mixed $answer, float $ttl): self
    {
        $expires = microtime(true) + $ttl;
        if (!is_array($answer) || ($answer['partitions'] ?? 0) !== self::PARTITIONS
            || !is_string($answer['owners'] ?? null) || strlen($answer['owners']) !== 2 * self::PARTITIONS
            || !is_array($answer['members'] ?? null)) {
            return new self([], '', $expires);
        }
        $members = [];
        foreach (array_values($answer['members']) as $m) {
            $members[] = self::target(is_array($m) ? (string)($m[1] ?? '') : '');
        }
        return new self($members, $answer['owners'], $expires);
    }

    /** A member's "host:port" from ROUTES as Client connects to it ("[v6]:port"); '' if unusable. */
    private static function target(string $addr): string
    {
        $colon = strrpos($addr, ':');
        if ($colon === false || str_contains($addr, ',') || !ctype_digit(substr($addr, $colon + 1))) {
            return '';
        }
        $host = substr($addr, 0, $colon);
        return str_contains($host, ':') && $host[0] !== '[' ? "[$host]" . substr($addr, $colon) : $addr;
    }

    /** The cache key of a node list ("host:port" targets): the same for any order. */
    public static function key(array $targets): string
    {
        sort($targets);
        return md5(implode(',', $targets));
    }

    /** The cache file of a key (used when APCu is not enabled). */
    public static function file(string $key): string
    {
        $uid = self::uid() ?? getmyuid();
        return rtrim(sys_get_temp_dir(), '/') . "/msession-routes-$uid-$key";
    }

    /** This process's effective uid, or null without ext-posix. */
    private static function uid(): ?int
    {
        return function_exists('posix_geteuid') ? posix_geteuid() : null;
    }

    private static function apcu(): bool
    {
        return function_exists('apcu_enabled') && apcu_enabled();
    }

    /** The cached table for $key, or null when there is none or it has expired. */
    public static function cached(string $key): ?self
    {
        $now = microtime(true);
        $r = self::$memory[$key] ?? null;
        if ($r !== null && $r->expires > $now) {
            return $r;
        }
        unset(self::$memory[$key]);
        $r = self::apcu() ? self::unpack(apcu_fetch("msession-routes-$key") ?: '') : self::readFile(self::file($key));
        if ($r === null || $r->expires <= $now) {
            return null;
        }
        return self::$memory[$key] = $r;
    }

    /** Caches $r under $key until it expires. */
    public static function store(string $key, self $r): void
    {
        self::$memory[$key] = $r;
        $ttl = max(1, (int)ceil($r->expires - microtime(true)));
        if (self::apcu()) {
            apcu_store("msession-routes-$key", $r->pack(), $ttl);
            return;
        }
        $file = self::file($key);
        $tmp = @tempnam(dirname($file), 'msession-routes-tmp');  // mode 0600
        if ($tmp === false) {
            return;  // no cache across requests: each one asks for the table
        }
        if (@file_put_contents($tmp, $r->pack()) === false || !@rename($tmp, $file)) {
            @unlink($tmp);
        }
    }

    /** Drops the cached table of $key (this process, APCu, file). */
    public static function forget(string $key): void
    {
        unset(self::$memory[$key]);
        if (self::apcu()) {
            apcu_delete("msession-routes-$key");
        } else {
            @unlink(self::file($key));
        }
    }

    /** @internal for tests: forgets the tables held in this process (not APCu's or the files). */
    public static function clearMemory(): void
    {
        self::$memory = [];
    }

    /** "msession-routes 1 <expires>\n<addr,addr,...>\n<owners>" */
    public function pack(): string
    {
        return sprintf("msession-routes 1 %.3F\n%s\n", $this->expires, implode(',', $this->members)) . $this->owners;
    }

    public static function unpack(string $s): ?self
    {
        $parts = explode("\n", $s, 3);
        if (count($parts) !== 3 || !preg_match('/^msession-routes 1 ([0-9.]+)$/D', $parts[0])
            || ($parts[2] !== '' && strlen($parts[2]) !== 2 * self::PARTITIONS)) {
            return null;
        }
        $members = $parts[1] === '' ? [] : explode(',', $parts[1]);
        return new self($members, $parts[2], (float)substr($parts[0], 18));
    }

    private static function readFile(string $file): ?self
    {
        $f = @fopen($file, 'rb');
        if ($f === false) {
            return null;
        }
        try {
            $st = fstat($f);
            $uid = self::uid();
            if ($st === false || ($uid !== null && $st['uid'] !== $uid) || ($st['mode'] & 0o022)) {
                return null;  // not ours, or others may write it: not trusted
            }
            return self::unpack((string)stream_get_contents($f, 3 * self::PARTITIONS + 65536));
        } finally {
            fclose($f);
        }
    }
}
