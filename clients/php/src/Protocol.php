<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function chr, count, is_bool, is_float, is_int, is_scalar, is_string, strlen;

/**
 * Wire format of protocol/PROTOCOL.md: frames of a 4-byte big-endian length
 * and one MessagePack value; a request is [id, cmd, args], an answer
 * [id, 1, result] or [id, 0, [code, message]].
 *
 * Requests are encoded here around msgpack_pack(), because a PHP array
 * with keys 0..n-1 would go out as a MessagePack array where the SETVAL map
 * form needs a map (and "0" is an int key in PHP). Answers are decoded by
 * ext-msgpack's msgpack_unpack().
 */
final class Protocol
{
    public const VERSION = 1;
    public const DEFAULT_PORT = 8086;
    /** The error code BUSY (MsessionException::NAMES[17]): a request that did not run. */
    public const ERR_BUSY = 17;
    /** A node's max_frame (bytes of a frame after its length) unless its HELLO says otherwise */
    public const DEFAULT_MAX_FRAME = 4 * 1024 * 1024;

    public const CTL = 2, SETVAL = 3, GETVAL = 4, CREATE = 5, DROP = 6, GETALL = 7, FIND = 8,
        COUNT = 9, SLOCK = 11, SUNLOCK = 12, TIMEOUT = 13, INC = 14, DATAGET = 15, DATASET = 16,
        LIST = 17, LISTVAR = 18, UNIQ = 19, RANDSTR = 20, PLUGIN = 21, CALL = 22, PING = 1026,
        HELLO = 1100, INFO = 1101, STATUS = 1102, ROUTES = 1103;

    /** Commands whose first argument is the session they act on (a farm runs them on its owner). */
    public const KEYED = [
        self::CTL => true, self::SETVAL => true, self::GETVAL => true, self::CREATE => true, self::DROP => true,
        self::GETALL => true, self::SLOCK => true, self::SUNLOCK => true, self::TIMEOUT => true, self::INC => true,
        self::DATAGET => true, self::DATASET => true, self::PLUGIN => true,
    ];

    /** Commands that may have been applied when their answer was lost: never sent twice. */
    public const NOT_IDEMPOTENT = [
        self::CREATE => true, self::INC => true, self::UNIQ => true, self::SLOCK => true,
        self::SUNLOCK => true, self::PLUGIN => true, self::CALL => true,
    ];

    public const CTL_WHICH = ['EXIST' => 0, 'TTL' => 1, 'AGE' => 2, 'TLA' => 3, 'CTIME' => 4, 'TOUCH' => 5, 'NOW' => 6];

    public static function request(int $id, int $cmd, array $args): string
    {
        // The common case (a list of strings, ints, nulls) in one msgpack_pack() call.
        $plain = array_is_list($args);
        foreach ($args as $arg) {
            if (!is_string($arg) && !is_int($arg) && $arg !== null) {
                $plain = false;
                break;
            }
        }
        if ($plain) {
            $body = msgpack_pack([$id, $cmd, $args]);
            return pack('N', strlen($body)) . $body;
        }
        $n = count($args);
        $body = "\x93" . self::int($id) . self::int($cmd) . ($n < 16 ? chr(0x90 | $n) : self::arrayHeader($n));
        foreach ($args as $arg) {
            $body .= self::value($arg);
        }
        return pack('N', strlen($body)) . $body;
    }

    /** A non-negative int below 2^32 by hand (as msgpack_pack() would), else msgpack_pack(). */
    private static function int(int $v): string
    {
        if ($v >= 0) {
            if ($v < 128) {
                return chr($v);
            }
            if ($v < 256) {
                return "\xcc" . chr($v);
            }
            if ($v < 65536) {
                return "\xcd" . pack('n', $v);
            }
            if ($v <= 0xFFFFFFFF) {
                return "\xce" . pack('N', $v);
            }
        }
        return msgpack_pack($v);
    }

    private static function value(mixed $v): string
    {
        if ($v instanceof Map) {
            $out = self::mapHeader(count($v->pairs));
            foreach ($v->pairs as $k => $val) {
                $k = (string)$k;
                $len = strlen($k);
                $out .= ($len < 32 ? chr(0xa0 | $len) . $k : msgpack_pack($k)) . (is_string($val) && strlen($val) < 32 ? chr(0xa0 | strlen($val)) . $val : self::value($val));
            }
            return $out;
        }
        if (is_string($v) || is_int($v) || $v === null) {
            return msgpack_pack($v);
        }
        if (is_bool($v) || is_float($v) || $v instanceof \Stringable) {
            return msgpack_pack(is_bool($v) ? ($v ? '1' : '') : (string)$v);
        }
        throw new \TypeError('msession: cannot send a value of type ' . get_debug_type($v));
    }

    private static function arrayHeader(int $n): string
    {
        return $n < 16 ? chr(0x90 | $n) : ($n < 65536 ? "\xdc" . pack('n', $n) : "\xdd" . pack('N', $n));
    }

    private static function mapHeader(int $n): string
    {
        return $n < 16 ? chr(0x80 | $n) : ($n < 65536 ? "\xde" . pack('n', $n) : "\xdf" . pack('N', $n));
    }

    /** Seconds to whole milliseconds (for SLOCK's wait and lease). */
    public static function ms(float $seconds): int
    {
        return max(0, (int)round($seconds * 1000));
    }

    /** Plugin answers as strings, as the old extension returned them. */
    public static function text(mixed $v): mixed
    {
        return is_scalar($v) ? (string)$v : $v;
    }
}

/** A map argument (SETVAL's map form): sent as a MessagePack map whatever its keys. */
final class Map
{
    /** @param array<string|int,string|int> $pairs */
    public function __construct(public readonly array $pairs)
    {
    }
}
