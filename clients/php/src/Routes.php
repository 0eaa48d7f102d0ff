<?php
declare(strict_types=1);

namespace Msession;

/**
 * A farm's partition -> owner table (ROUTES, PROTOCOL.md 6.5 and 6.6), so a
 * Client can send each session's requests straight to its owner instead of
 * having a member forward them.
 *
 * A session's partition is the top 12 bits of the unkeyed BLAKE2b hash of
 * its id with an 8-byte digest, read big-endian; the table names the member
 * owning each of the 4096 partitions. The hash is computed here in PHP
 * (about 40 us): ext-sodium's sodium_crypto_generichash() refuses digests
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

    /**
     * @param list<string> $members member index => "host:port" ('' when unknown)
     * @param string $owners 2 bytes per partition: big-endian member indexes ('' : no routing)
     */
    public function __construct(public readonly array $members, public readonly string $owners, public readonly float $expires)
    {
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
    /** The v indexes a, b, c, d of BLAKE2b's 8 G steps per round (4 columns, 4 diagonals). */
    private const STEPS = [
        [0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15],
        [0, 5, 10, 15], [1, 6, 11, 12], [2, 7, 8, 13], [3, 4, 9, 14],
    ];

    /** The unkeyed BLAKE2b hash of $in with an 8-byte digest (RFC 7693), in PHP. */
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
        $M = 0xFFFFFFFF;
        for ($b = 0; $b < $blocks; $b++) {
            $last = $b === $blocks - 1;
            $chunk = substr($in, 128 * $b, 128);
            $t = $last ? $len : 128 * ($b + 1);
            $m = array_values(unpack('P16', str_pad($chunk, 128, "\0")));
            $v = array_merge($h, $iv);
            $v[12] ^= $t;
            if ($last) {
                $v[14] = ~$v[14];
            }
            // 64-bit words in PHP ints: additions in 32-bit halves (PHP turns an overflowing sum into a float)
            foreach (self::SIGMA as $s) {
                foreach (self::STEPS as $g => [$a, $bb, $c, $d]) {
                    $x = $m[$s[2 * $g]]; $y = $m[$s[2 * $g + 1]];
                    $va = $v[$a]; $vb = $v[$bb]; $vc = $v[$c]; $vd = $v[$d];
                    $lo = ($va & $M) + ($vb & $M) + ($x & $M);
                    $va = (((($va >> 32) & $M) + (($vb >> 32) & $M) + (($x >> 32) & $M) + ($lo >> 32)) << 32) | ($lo & $M);
                    $vd ^= $va; $vd = (($vd >> 32) & $M) | ($vd << 32);
                    $lo = ($vc & $M) + ($vd & $M);
                    $vc = (((($vc >> 32) & $M) + (($vd >> 32) & $M) + ($lo >> 32)) << 32) | ($lo & $M);
                    $vb ^= $vc; $vb = (($vb >> 24) & 0xFFFFFFFFFF) | ($vb << 40);
                    $lo = ($va & $M) + ($vb & $M) + ($y & $M);
                    $va = (((($va >> 32) & $M) + (($vb >> 32) & $M) + (($y >> 32) & $M) + ($lo >> 32)) << 32) | ($lo & $M);
                    $vd ^= $va; $vd = (($vd >> 16) & 0xFFFFFFFFFFFF) | ($vd << 48);
                    $lo = ($vc & $M) + ($vd & $M);
                    $vc = (((($vc >> 32) & $M) + (($vd >> 32) & $M) + ($lo >> 32)) << 32) | ($lo & $M);
                    $vb ^= $vc; $vb = (($vb >> 63) & 1) | ($vb << 1);
                    $v[$a] = $va; $v[$bb] = $vb; $v[$c] = $vc; $v[$d] = $vd;
                }
            }
            for ($i = 0; $i < 8; $i++) {
                $h[$i] ^= $v[$i] ^ $v[$i + 8];
            }
        }
        return pack('P', $h[0]);
    }

    /** "host:port" of the session's owner, or null (no table, standalone node, unknown address). */
    public function owner(string $sid): ?string
    {
        if ($this->owners === '') {
            return null;
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
        $uid = function_exists('posix_geteuid') ? posix_geteuid() : getmyuid();
        return rtrim(sys_get_temp_dir(), '/') . "/msession-routes-$uid-$key";
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
            $uid = function_exists('posix_geteuid') ? posix_geteuid() : null;
            if ($st === false || ($uid !== null && $st['uid'] !== $uid) || ($st['mode'] & 0o022)) {
                return null;  // not ours, or others may write it: not trusted
            }
            return self::unpack((string)stream_get_contents($f, 3 * self::PARTITIONS + 65536));
        } finally {
            fclose($f);
        }
    }
}
