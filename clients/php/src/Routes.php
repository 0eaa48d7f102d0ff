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
 * A session's partition is the top 12 bits of the unkeyed BLAKE2b hash of
 * its id with an 8-byte digest, read big-endian; the table names the member
 * owning each of the 4096 partitions. The hash is computed here in PHP
 * (about 25 us; not at all when one member owns every partition): ext-sodium's sodium_crypto_generichash() refuses digests
 * shorter than 16 bytes, and an 8-byte BLAKE2b digest is not a truncated
 * 16-byte one (the length is hashed in).
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
    /** @var array<string, int> session id => partition, in this process */
    private static array $partitions = [];

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
        if (isset(self::$partitions[$sid])) {
            return self::$partitions[$sid];
        }
        if (count(self::$partitions) >= 1024) {
            self::$partitions = [];
        }
        $h = self::blake2b8($sid);
        return self::$partitions[$sid] = (ord($h[0]) << 4) | (ord($h[1]) >> 4);
    }

    private const SIGMA = [
        [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15],[14,10,4,8,9,15,13,6,1,12,0,2,11,7,5,3],
        [11,8,12,0,5,2,15,13,10,14,3,6,7,1,9,4],[7,9,3,1,13,12,11,14,2,6,5,10,4,0,15,8],
        [9,0,5,7,2,4,10,15,14,1,11,12,6,8,3,13],[2,12,6,10,0,11,8,3,4,13,7,5,15,14,1,9],
        [12,5,1,15,14,13,4,10,0,7,6,3,9,2,8,11],[13,11,7,14,12,1,3,9,5,0,15,4,8,6,2,10],
        [6,15,14,9,11,3,0,8,12,2,13,7,1,4,10,5],[10,2,8,4,7,6,1,5,15,11,9,14,3,12,13,0],
        [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15],[14,10,4,8,9,15,13,6,1,12,0,2,11,7,5,3],
    ];
    /**
     * The unkeyed BLAKE2b hash of $in with an 8-byte digest (RFC 7693), in PHP.
     * 64-bit words in PHP ints, additions in 32-bit halves (PHP turns an
     * overflowing sum into a float); the working vector in 16 local variables
     * and the 8 G steps of a round written out: 24-28 us a hash against
     * 55-80 us for a G() function over an array (PHP 8.2, opcache on, 2000
     * ids), so the unrolling stays.
     */
    public static function blake2b8(string $in): string
    {
        $iv = [
            (0x6a09e667 << 32) | 0xf3bcc908, (0xbb67ae85 << 32) | 0x84caa73b,
            (0x3c6ef372 << 32) | 0xfe94f82b, (0xa54ff53a << 32) | 0x5f1d36f1,
            (0x510e527f << 32) | 0xade682d1, (0x9b05688c << 32) | 0x2b3e6c1f,
            (0x1f83d9ab << 32) | 0xfb41bd6b, (0x5be0cd19 << 32) | 0x137e2179,
        ];
        $h = $iv;
        $h[0] ^= 0x01010008;
        $len = strlen($in);
        $blocks = max(1, intdiv($len + 127, 128));
        for ($b = 0; $b < $blocks; $b++) {
            $last = $b === $blocks - 1;
            $m = array_values(unpack('P16', str_pad(substr($in, 128 * $b, 128), 128, "\0")));
            [$v0, $v1, $v2, $v3, $v4, $v5, $v6, $v7] = $h;
            [$v8, $v9, $v10, $v11, $v12, $v13, $v14, $v15] = $iv;
            $v12 ^= $last ? $len : 128 * ($b + 1);
            if ($last) {
                $v14 = ~$v14;
            }
            foreach (self::SIGMA as $s) {
                $x = $m[$s[0]]; $y = $m[$s[1]];
                $lo = ($v0 & 0xFFFFFFFF) + ($v4 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v0 = (((($v0 >> 32) & 0xFFFFFFFF) + (($v4 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v12 ^= $v0; $v12 = (($v12 >> 32) & 0xFFFFFFFF) | ($v12 << 32);
                $lo = ($v8 & 0xFFFFFFFF) + ($v12 & 0xFFFFFFFF);
                $v8 = (((($v8 >> 32) & 0xFFFFFFFF) + (($v12 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v4 ^= $v8; $v4 = (($v4 >> 24) & 0xFFFFFFFFFF) | ($v4 << 40);
                $lo = ($v0 & 0xFFFFFFFF) + ($v4 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v0 = (((($v0 >> 32) & 0xFFFFFFFF) + (($v4 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v12 ^= $v0; $v12 = (($v12 >> 16) & 0xFFFFFFFFFFFF) | ($v12 << 48);
                $lo = ($v8 & 0xFFFFFFFF) + ($v12 & 0xFFFFFFFF);
                $v8 = (((($v8 >> 32) & 0xFFFFFFFF) + (($v12 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v4 ^= $v8; $v4 = (($v4 >> 63) & 1) | ($v4 << 1);
                $x = $m[$s[2]]; $y = $m[$s[3]];
                $lo = ($v1 & 0xFFFFFFFF) + ($v5 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v1 = (((($v1 >> 32) & 0xFFFFFFFF) + (($v5 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v13 ^= $v1; $v13 = (($v13 >> 32) & 0xFFFFFFFF) | ($v13 << 32);
                $lo = ($v9 & 0xFFFFFFFF) + ($v13 & 0xFFFFFFFF);
                $v9 = (((($v9 >> 32) & 0xFFFFFFFF) + (($v13 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v5 ^= $v9; $v5 = (($v5 >> 24) & 0xFFFFFFFFFF) | ($v5 << 40);
                $lo = ($v1 & 0xFFFFFFFF) + ($v5 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v1 = (((($v1 >> 32) & 0xFFFFFFFF) + (($v5 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v13 ^= $v1; $v13 = (($v13 >> 16) & 0xFFFFFFFFFFFF) | ($v13 << 48);
                $lo = ($v9 & 0xFFFFFFFF) + ($v13 & 0xFFFFFFFF);
                $v9 = (((($v9 >> 32) & 0xFFFFFFFF) + (($v13 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v5 ^= $v9; $v5 = (($v5 >> 63) & 1) | ($v5 << 1);
                $x = $m[$s[4]]; $y = $m[$s[5]];
                $lo = ($v2 & 0xFFFFFFFF) + ($v6 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v2 = (((($v2 >> 32) & 0xFFFFFFFF) + (($v6 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v14 ^= $v2; $v14 = (($v14 >> 32) & 0xFFFFFFFF) | ($v14 << 32);
                $lo = ($v10 & 0xFFFFFFFF) + ($v14 & 0xFFFFFFFF);
                $v10 = (((($v10 >> 32) & 0xFFFFFFFF) + (($v14 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v6 ^= $v10; $v6 = (($v6 >> 24) & 0xFFFFFFFFFF) | ($v6 << 40);
                $lo = ($v2 & 0xFFFFFFFF) + ($v6 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v2 = (((($v2 >> 32) & 0xFFFFFFFF) + (($v6 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v14 ^= $v2; $v14 = (($v14 >> 16) & 0xFFFFFFFFFFFF) | ($v14 << 48);
                $lo = ($v10 & 0xFFFFFFFF) + ($v14 & 0xFFFFFFFF);
                $v10 = (((($v10 >> 32) & 0xFFFFFFFF) + (($v14 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v6 ^= $v10; $v6 = (($v6 >> 63) & 1) | ($v6 << 1);
                $x = $m[$s[6]]; $y = $m[$s[7]];
                $lo = ($v3 & 0xFFFFFFFF) + ($v7 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v3 = (((($v3 >> 32) & 0xFFFFFFFF) + (($v7 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v15 ^= $v3; $v15 = (($v15 >> 32) & 0xFFFFFFFF) | ($v15 << 32);
                $lo = ($v11 & 0xFFFFFFFF) + ($v15 & 0xFFFFFFFF);
                $v11 = (((($v11 >> 32) & 0xFFFFFFFF) + (($v15 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v7 ^= $v11; $v7 = (($v7 >> 24) & 0xFFFFFFFFFF) | ($v7 << 40);
                $lo = ($v3 & 0xFFFFFFFF) + ($v7 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v3 = (((($v3 >> 32) & 0xFFFFFFFF) + (($v7 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v15 ^= $v3; $v15 = (($v15 >> 16) & 0xFFFFFFFFFFFF) | ($v15 << 48);
                $lo = ($v11 & 0xFFFFFFFF) + ($v15 & 0xFFFFFFFF);
                $v11 = (((($v11 >> 32) & 0xFFFFFFFF) + (($v15 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v7 ^= $v11; $v7 = (($v7 >> 63) & 1) | ($v7 << 1);
                $x = $m[$s[8]]; $y = $m[$s[9]];
                $lo = ($v0 & 0xFFFFFFFF) + ($v5 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v0 = (((($v0 >> 32) & 0xFFFFFFFF) + (($v5 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v15 ^= $v0; $v15 = (($v15 >> 32) & 0xFFFFFFFF) | ($v15 << 32);
                $lo = ($v10 & 0xFFFFFFFF) + ($v15 & 0xFFFFFFFF);
                $v10 = (((($v10 >> 32) & 0xFFFFFFFF) + (($v15 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v5 ^= $v10; $v5 = (($v5 >> 24) & 0xFFFFFFFFFF) | ($v5 << 40);
                $lo = ($v0 & 0xFFFFFFFF) + ($v5 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v0 = (((($v0 >> 32) & 0xFFFFFFFF) + (($v5 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v15 ^= $v0; $v15 = (($v15 >> 16) & 0xFFFFFFFFFFFF) | ($v15 << 48);
                $lo = ($v10 & 0xFFFFFFFF) + ($v15 & 0xFFFFFFFF);
                $v10 = (((($v10 >> 32) & 0xFFFFFFFF) + (($v15 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v5 ^= $v10; $v5 = (($v5 >> 63) & 1) | ($v5 << 1);
                $x = $m[$s[10]]; $y = $m[$s[11]];
                $lo = ($v1 & 0xFFFFFFFF) + ($v6 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v1 = (((($v1 >> 32) & 0xFFFFFFFF) + (($v6 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v12 ^= $v1; $v12 = (($v12 >> 32) & 0xFFFFFFFF) | ($v12 << 32);
                $lo = ($v11 & 0xFFFFFFFF) + ($v12 & 0xFFFFFFFF);
                $v11 = (((($v11 >> 32) & 0xFFFFFFFF) + (($v12 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v6 ^= $v11; $v6 = (($v6 >> 24) & 0xFFFFFFFFFF) | ($v6 << 40);
                $lo = ($v1 & 0xFFFFFFFF) + ($v6 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v1 = (((($v1 >> 32) & 0xFFFFFFFF) + (($v6 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v12 ^= $v1; $v12 = (($v12 >> 16) & 0xFFFFFFFFFFFF) | ($v12 << 48);
                $lo = ($v11 & 0xFFFFFFFF) + ($v12 & 0xFFFFFFFF);
                $v11 = (((($v11 >> 32) & 0xFFFFFFFF) + (($v12 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v6 ^= $v11; $v6 = (($v6 >> 63) & 1) | ($v6 << 1);
                $x = $m[$s[12]]; $y = $m[$s[13]];
                $lo = ($v2 & 0xFFFFFFFF) + ($v7 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v2 = (((($v2 >> 32) & 0xFFFFFFFF) + (($v7 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v13 ^= $v2; $v13 = (($v13 >> 32) & 0xFFFFFFFF) | ($v13 << 32);
                $lo = ($v8 & 0xFFFFFFFF) + ($v13 & 0xFFFFFFFF);
                $v8 = (((($v8 >> 32) & 0xFFFFFFFF) + (($v13 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v7 ^= $v8; $v7 = (($v7 >> 24) & 0xFFFFFFFFFF) | ($v7 << 40);
                $lo = ($v2 & 0xFFFFFFFF) + ($v7 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v2 = (((($v2 >> 32) & 0xFFFFFFFF) + (($v7 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v13 ^= $v2; $v13 = (($v13 >> 16) & 0xFFFFFFFFFFFF) | ($v13 << 48);
                $lo = ($v8 & 0xFFFFFFFF) + ($v13 & 0xFFFFFFFF);
                $v8 = (((($v8 >> 32) & 0xFFFFFFFF) + (($v13 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v7 ^= $v8; $v7 = (($v7 >> 63) & 1) | ($v7 << 1);
                $x = $m[$s[14]]; $y = $m[$s[15]];
                $lo = ($v3 & 0xFFFFFFFF) + ($v4 & 0xFFFFFFFF) + ($x & 0xFFFFFFFF);
                $v3 = (((($v3 >> 32) & 0xFFFFFFFF) + (($v4 >> 32) & 0xFFFFFFFF) + (($x >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v14 ^= $v3; $v14 = (($v14 >> 32) & 0xFFFFFFFF) | ($v14 << 32);
                $lo = ($v9 & 0xFFFFFFFF) + ($v14 & 0xFFFFFFFF);
                $v9 = (((($v9 >> 32) & 0xFFFFFFFF) + (($v14 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v4 ^= $v9; $v4 = (($v4 >> 24) & 0xFFFFFFFFFF) | ($v4 << 40);
                $lo = ($v3 & 0xFFFFFFFF) + ($v4 & 0xFFFFFFFF) + ($y & 0xFFFFFFFF);
                $v3 = (((($v3 >> 32) & 0xFFFFFFFF) + (($v4 >> 32) & 0xFFFFFFFF) + (($y >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v14 ^= $v3; $v14 = (($v14 >> 16) & 0xFFFFFFFFFFFF) | ($v14 << 48);
                $lo = ($v9 & 0xFFFFFFFF) + ($v14 & 0xFFFFFFFF);
                $v9 = (((($v9 >> 32) & 0xFFFFFFFF) + (($v14 >> 32) & 0xFFFFFFFF) + ($lo >> 32)) << 32) | ($lo & 0xFFFFFFFF);
                $v4 ^= $v9; $v4 = (($v4 >> 63) & 1) | ($v4 << 1);
            }
            $h[0] ^= $v0 ^ $v8; $h[1] ^= $v1 ^ $v9; $h[2] ^= $v2 ^ $v10; $h[3] ^= $v3 ^ $v11;
            $h[4] ^= $v4 ^ $v12; $h[5] ^= $v5 ^ $v13; $h[6] ^= $v6 ^ $v14; $h[7] ^= $v7 ^ $v15;
        }
        return pack('P', $h[0]);
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
