<?php
declare(strict_types=1);

namespace Msession;

/**
 * An error answer of a node, or a failure of the client itself.
 *
 * getCode() is the protocol's error number, getErrorName() its name
 * ("NOSESSION", "LOCKED", "NOCONNECT", ...), getMessage() "NAME: text".
 * In a farm: BUSY (17) with a request means it did not run (the client
 * already sent it again, twice); UNAVAILABLE (19) means the member owning
 * the session could not be reached (for CREATE, INC, SLOCK, SUNLOCK, UNIQ and
 * PLUGIN the message says whether it may have run).
 */
class MsessionException extends \RuntimeException
{
    /** Error names by code, as in PROTOCOL.md section 5. */
    public const NAMES = [
        0 => 'NOERROR', 1 => 'NOSESSION', 2 => 'DUPSESSION', 3 => 'NOWLOCK', 4 => 'NOVALUE',
        5 => 'LOCKED', 6 => 'NOSEND', 7 => 'NOCONNECT', 8 => 'BADCONN', 9 => 'BADHDR',
        10 => 'BADVER', 11 => 'BADLEN', 12 => 'BUFFER', 13 => 'DENIED', 14 => 'NOFN',
        15 => 'UNKNOWN', 16 => 'BADARG', 17 => 'BUSY', 18 => 'TIMEOUT', 19 => 'UNAVAILABLE',
    ];

    private string $errorName;
    private string $detail;

    public function __construct(string $errorName, string $detail = '', ?\Throwable $previous = null)
    {
        $code = array_search($errorName, self::NAMES, true);
        parent::__construct($detail === '' ? $errorName : "$errorName: $detail", $code === false ? 15 : $code, $previous);
        $this->errorName = $errorName;
        $this->detail = $detail;
    }

    public static function fromCode(int $code, string $detail = ''): self
    {
        return new self(self::NAMES[$code] ?? "E$code", $detail);
    }

    /** The protocol's name of the error, e.g. "NOSESSION". */
    public function getErrorName(): string
    {
        return $this->errorName;
    }

    /** The node's (or the client's) explanation, without the name. */
    public function getDetail(): string
    {
        return $this->detail;
    }
}
