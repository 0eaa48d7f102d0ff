<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function array_key_exists, chr, count, in_array, is_array, is_bool, strlen;

/**
 * PHP session save handler on msession.
 *
 *     session_set_save_handler(new Msession\SessionHandler(['mode' => 'lock']), true);
 *     // session.save_path = "10.0.0.1:8086,10.0.0.2:8086"
 *
 * Storage layout (both modes, so they interoperate): one msession session per
 * PHP session, same id; each top-level $_SESSION key is one session variable
 * named after the key, holding serialize() of its value. A key removed from
 * $_SESSION is stored as the empty string, which serialize() never produces:
 * read() skips such tombstones (the protocol has no command to delete one
 * variable; DROP deletes the whole session). read() rebuilds the string
 * that session.serialize_handler expects (php, php_serialize or php_binary)
 * from these variables. The session's inactivity timeout is set to
 * session.gc_maxlifetime by every read() (and by the write that creates a
 * session); every command restarts it; the node expires sessions, gc() does
 * nothing.
 *
 * Round trips: two per request on a persistent connection (the default),
 * none to connect. read() is one (lock mode: SLOCK + TIMEOUT + GETALL
 * pipelined); under session.use_strict_mode, validateId() sends that same
 * batch (an id is valid if GETALL finds the session) and read() of that id
 * uses its answers, so validateId + read are one round trip (an unknown id
 * costs one more, to release its lock). write() is one: only the keys whose
 * serialized value changed since read() (and tombstones for removed keys),
 * with SETVAL's map form (atomic), plus SUNLOCK.
 *
 * mode "lock" (default): read() takes the session's lock (SLOCK, waiting on
 * the node, first come first served, no polling) and reads it in the same
 * round trip; write()/updateTimestamp()/destroy()/close() release it
 * (SUNLOCK with the key). The lock has a lease (lock_lease), so a PHP process
 * killed mid-request blocks its user for at most that long. If a request
 * outlives its lease, write() does not trust its lock: it re-locks and
 * compares the session with what it read; if another request changed it
 * meanwhile, the write is refused with an E_USER_WARNING (and write()
 * returns false) instead of clobbering that request's changes.
 *
 * mode "merge": no lock. Concurrent requests that change different top-level
 * keys all keep their changes; for the same key the last write wins.
 *
 * Options (constructor array; else environment variable; else php.ini/-d
 * setting; else default):
 *   mode        MSESSION_MODE        msession.mode        "lock" | "merge" (lock)
 *   lock_lease  MSESSION_LOCK_LEASE  msession.lock_lease  seconds (max_execution_time if > 0, else 30)
 *   lock_wait   MSESSION_LOCK_WAIT   msession.lock_wait   seconds (lock_lease + 5, at most 300)
 *   sid_length  MSESSION_SID_LENGTH  msession.sid_length  characters of new ids (32)
 *   timeout     MSESSION_TIMEOUT     msession.timeout     seconds per request (10)
 *   persistent  MSESSION_PERSISTENT  msession.persistent  1: keep connections across requests (1)
 *   route       MSESSION_ROUTE       msession.route       1: send each session's requests straight to
 *                                                         its owner in a farm (Client's route option);
 *                                                         default 1 when the node list has several nodes
 *   nodes       (none)               (none)               node list; default session.save_path
 */
final class SessionHandler implements \SessionHandlerInterface, \SessionIdInterface, \SessionUpdateTimestampHandlerInterface
{
    public const TOMBSTONE = '';

    /** The environment variable of each setting (spelled out: this runs in every PHP request). */
    private const ENV = [
        'mode' => 'MSESSION_MODE', 'lock_lease' => 'MSESSION_LOCK_LEASE', 'lock_wait' => 'MSESSION_LOCK_WAIT',
        'sid_length' => 'MSESSION_SID_LENGTH', 'timeout' => 'MSESSION_TIMEOUT', 'persistent' => 'MSESSION_PERSISTENT',
        'route' => 'MSESSION_ROUTE',
    ];

    public readonly string $mode;
    public readonly float $lockLease;
    public readonly float $lockWait;
    public readonly int $sidLength;
    public readonly float $timeout;
    public readonly bool $persistent;
    /** null: route when the node list has several nodes */
    public readonly ?bool $route;
    private ?string $nodes;
    private ?Client $client = null;
    /** the node list $client was made for */
    private string $clientNodes = '';
    /** @var array<string, array{0:int, 1:float}> session id => [lock key, time the SLOCK was sent] */
    private array $locks = [];
    /** @var array<string, array<string|int, string>> session id => name => serialized value, as read */
    private array $seen = [];
    /** @var array<string, bool> session id => it existed when read */
    private array $existed = [];
    /** validateId()'s read, for read(): [id, the variables or the MsessionException] (the lock is in $locks) */
    private ?array $prefetched = null;
    /** SLOCK's wait and lease in milliseconds */
    private int $waitMs;
    private int $leaseMs;

    public function __construct(array $options = [])
    {
        $mode = strtolower((string)self::setting($options, 'mode', 'lock'));
        if ($mode !== 'lock' && $mode !== 'merge') {
            throw new \InvalidArgumentException("msession: mode must be 'lock' or 'merge', not '$mode'");
        }
        $this->mode = $mode;
        $maxExec = (int)ini_get('max_execution_time');
        $this->lockLease = (float)self::setting($options, 'lock_lease', $maxExec > 0 ? $maxExec : 30);
        $this->lockWait = min(300.0, (float)self::setting($options, 'lock_wait', $this->lockLease + 5));
        $this->sidLength = (int)self::setting($options, 'sid_length', 32);
        $this->timeout = (float)self::setting($options, 'timeout', 10);
        $this->persistent = self::flag(self::setting($options, 'persistent', true));
        $route = self::setting($options, 'route', null);
        $this->route = $route === null ? null : self::flag($route);
        $this->nodes = isset($options['nodes']) ? (is_array($options['nodes']) ? implode(',', $options['nodes']) : (string)$options['nodes']) : null;
        if ($this->lockLease <= 0 || $this->lockWait < 0 || $this->sidLength < 1) {
            throw new \InvalidArgumentException('msession: lock_lease must be > 0, lock_wait >= 0, sid_length >= 1');
        }
        $this->waitMs = Protocol::ms($this->lockWait);
        $this->leaseMs = Protocol::ms($this->lockLease);
    }

    /**
     * Sends [cmd, args] requests in one round trip (Client::exchange(), no
     * Pipeline objects: this is every PHP request's path) and returns each
     * result, or its MsessionException.
     */
    private function run(array $requests): array
    {
        $out = [];
        foreach ($this->client()->exchange($requests) as $answer) {
            $out[] = $answer[0] === 1 ? $answer[1] : Client::error($answer);
        }
        return $out;
    }

    /** $options[$name], else env MSESSION_<NAME>, else ini/-d msession.<name>, else $default. */
    public static function setting(array $options, string $name, mixed $default): mixed
    {
        if (isset($options[$name])) {
            return $options[$name];
        }
        $env = getenv(self::ENV[$name]);
        if ($env !== false && $env !== '') {
            return $env;
        }
        $cfg = get_cfg_var("msession.$name");
        if ($cfg !== false && $cfg !== '') {
            return $cfg;
        }
        return $default;
    }

    private static function flag(mixed $v): bool
    {
        return is_bool($v) ? $v : !in_array(strtolower(trim((string)$v)), ['0', 'off', 'no', 'false', 'none', ''], true);
    }

    /** The client (made for the nodes option, else 127.0.0.1:8086, if open() did not make it). */
    public function client(): Client
    {
        if ($this->client === null) {
            $this->open('', '');
        }
        return $this->client;
    }

    /** Makes the client for the nodes option, else $path (session.save_path), else 127.0.0.1:8086. */
    public function open(string $path, string $name): bool
    {
        $nodes = $this->nodes ?? trim($path);
        $nodes = $nodes === '' ? '127.0.0.1:8086' : $nodes;
        if ($this->client === null || $this->clientNodes !== $nodes) {
            $this->clientNodes = $nodes;
            // route null: the Client routes when the node list has several nodes
            $this->client = new Client($nodes, ['timeout' => $this->timeout, 'persistent' => $this->persistent, 'route' => $this->route]);
        }
        return true;
    }

    public function close(): bool
    {
        $ok = true;
        foreach ($this->locks as $id => [$key]) {  // (none after write(): it released the lock)
            try {
                $this->client()->unlock((string)$id, $key);
            } catch (MsessionException $e) {
                $ok = $ok && in_array($e->getErrorName(), ['NOWLOCK', 'LOCKED'], true);
            }
        }
        $this->locks = $this->seen = $this->existed = [];
        $this->prefetched = null;
        $this->client?->close();  // a persistent connection stays open for the next request
        return $ok;
    }

    /**
     * The read batch: lock mode SLOCK + TIMEOUT + GETALL (the lock taken goes
     * in $locks), merge mode TIMEOUT + GETALL. GETALL's answer or its
     * MsessionException.
     */
    private function fetch(string $id): array|MsessionException
    {
        if ($this->mode === 'lock') {
            $sent = microtime(true);
            [$key, , $vars] = $this->run([
                [Protocol::SLOCK, [$id, $this->waitMs, $this->leaseMs]],
                [Protocol::TIMEOUT, [$id, self::ttl()]],
                [Protocol::GETALL, [$id]],
            ]);
            if ($key instanceof MsessionException) {
                throw $key;
            }
            $this->locks[$id] = [$key, $sent];
            return $vars;
        }
        [, $vars] = $this->run([[Protocol::TIMEOUT, [$id, self::ttl()]], [Protocol::GETALL, [$id]]]);
        return $vars;
    }

    public function read(string $id): string|false
    {
        try {
            if ($this->prefetched !== null && $this->prefetched[0] === $id) {
                $vars = $this->prefetched[1];  // validateId() read it, and took the lock
                $this->prefetched = null;
                if ($vars instanceof MsessionException) {
                    throw $vars;
                }
            } else {
                $this->prefetched = null;
                $vars = $this->fetch($id);
            }
        } catch (MsessionException $e) {
            $why = $e->getErrorName() === 'LOCKED'
                ? sprintf('another request held the lock for longer than msession.lock_wait (%g s)', $this->lockWait)
                : $e->getMessage();
            return $this->fail("cannot read session '$id': $why");
        }
        if ($vars instanceof MsessionException) {
            if ($vars->getErrorName() !== 'NOSESSION') {
                return $this->fail("cannot read session '$id': " . $vars->getMessage());
            }
            $vars = [];
            $this->existed[$id] = false;
        } else {
            $this->existed[$id] = true;
        }
        $vars = self::live($vars);
        $this->seen[$id] = $vars;
        return self::encode($vars);
    }

    public function write(string $id, string $data): bool
    {
        $current = $this->currentVars($data);
        if ($current === null) {
            return $this->fail('cannot write: session.serialize_handler ' . ini_get('session.serialize_handler') . ' is not supported outside session_write_close()');
        }
        try {
            $lock = $this->locks[$id] ?? null;
            if ($lock !== null && microtime(true) - $lock[1] >= $this->lockLease - max(0.25, $this->lockLease / 10)) {
                // The lease may have run out: someone else may have held the lock.
                if (!$this->relockUnchanged($id)) {
                    unset($this->locks[$id]);
                    return $this->fail(sprintf(
                        "session '%s' was changed by another request after this request's lock lease (%g s) ran out; "
                        . 'this request\'s session changes were NOT saved (raise msession.lock_lease?)', $id, $this->lockLease));
                }
            }
            return $this->save($id, self::diff($this->seen[$id] ?? [], $current));
        } catch (MsessionException $e) {
            return $this->fail("cannot write session '$id': " . $e->getMessage());
        }
    }

    public function updateTimestamp(string $id, string $data): bool
    {
        try {
            return $this->save($id, []);
        } catch (MsessionException $e) {
            return $this->fail("cannot update session '$id': " . $e->getMessage());
        }
    }

    public function destroy(string $id): bool
    {
        $requests = [[Protocol::DROP, [$id]]];
        if (isset($this->locks[$id])) {
            $requests[] = [Protocol::SUNLOCK, [$id, $this->locks[$id][0]]];
        }
        unset($this->locks[$id], $this->seen[$id], $this->existed[$id]);
        try {
            $results = $this->run($requests);
        } catch (MsessionException $e) {
            return $this->fail("cannot destroy session '$id': " . $e->getMessage());
        }
        return !$results[0] instanceof MsessionException;
    }

    public function gc(int $max_lifetime): int|false
    {
        return 0;  // the node expires sessions itself (their TIMEOUT is session.gc_maxlifetime)
    }

    /** A fresh id, reserved on the node (UNIQ creates the session), so ids never collide. */
    public function create_sid(): string
    {
        return $this->client()->uniq($this->sidLength);
    }

    /**
     * For session.use_strict_mode: only ids of existing sessions are accepted.
     * PHP calls read() of a valid id right after, so this sends read()'s batch
     * (taking the lock in lock mode) and keeps the answers for it: validateId
     * and read cost one round trip. An unknown id's lock is released at once.
     */
    public function validateId(string $id): bool
    {
        try {
            $vars = $this->fetch($id);
        } catch (MsessionException $e) {
            if ($e->getErrorName() === 'BADARG') {
                return false;
            }
            // Not a verdict on the id (LOCKED after lock_wait, no node...): read() reports it,
            // rather than PHP giving the user a new, empty session.
            $this->prefetched = [$id, $e];
            return true;
        }
        if (!$vars instanceof MsessionException) {
            $this->prefetched = [$id, $vars];  // close() releases the lock (in $locks) if read() never comes
            return true;
        }
        if (isset($this->locks[$id])) {
            [$key] = $this->locks[$id];
            unset($this->locks[$id]);
            try {
                $this->client()->unlock($id, $key);
            } catch (MsessionException $e) {
                // NOWLOCK/LOCKED: the lease ran out meanwhile; the lock is not ours any more
            }
        }
        if ($vars->getErrorName() === 'NOSESSION' || $vars->getErrorName() === 'BADARG') {
            return false;
        }
        $this->fail("cannot validate session id: " . $vars->getMessage());
        return false;
    }

    /**
     * Writes $changes (name => serialized value or TOMBSTONE) and the
     * timeout, and releases our lock, in one round trip.
     */
    private function save(string $id, array $changes): bool
    {
        $ttl = self::ttl();
        $requests = [];
        $create = $changes && !($this->existed[$id] ?? true);
        if ($create) {
            $requests[] = [Protocol::CREATE, [$id]];  // DUPSESSION when a concurrent request created it: fine
        }
        if ($changes) {
            $requests[] = [Protocol::SETVAL, [$id, new Map($changes)]];
        }
        if ($create || !$requests) {
            // A new session gets its timeout here; with nothing to write (updateTimestamp(),
            // lazy_write) this renews the session's (read() set it, every command restarts it).
            $requests[] = [Protocol::TIMEOUT, [$id, $ttl]];
        }
        $lock = $this->locks[$id] ?? null;
        if ($lock !== null) {
            $requests[] = [Protocol::SUNLOCK, [$id, $lock[0]]];
        }
        unset($this->locks[$id]);
        $results = $this->run($requests);
        if ($create) {
            array_shift($results);
        }
        $lost = $lock !== null ? array_pop($results) : null;
        if ($lost instanceof MsessionException) {
            // Cannot happen while the lease runs (write() checks it first); say so if it does.
            trigger_error("msession: session '$id': the lock was lost while writing ({$lost->getMessage()})", E_USER_WARNING);
        }
        $this->seen[$id] ??= [];
        foreach ($changes as $k => $v) {
            if ($v === self::TOMBSTONE) {
                unset($this->seen[$id][$k]);
            } else {
                $this->seen[$id][$k] = $v;
            }
        }
        foreach ($results as $r) {
            if ($r instanceof MsessionException && $r->getErrorName() === 'NOSESSION') {
                // Expired (or destroyed) since read: create it again with all our variables.
                $full = self::live($this->currentVars('') ?? $this->seen[$id]);
                $p = $this->client()->pipeline()->setData($id, '');
                if ($full) {
                    $p->setArray($id, $full);
                }
                $p->timeout($id, $ttl)->execute();
                $this->seen[$id] = $full;
                break;
            }
            if ($r instanceof MsessionException) {
                throw $r;
            }
        }
        $this->existed[$id] = true;
        return true;
    }

    /**
     * Our lease may have run out: SUNLOCK (fails if it did), lock again, and
     * read the session. True (and we hold the lock) if nobody changed it since
     * our read; false (lock released) otherwise.
     */
    private function relockUnchanged(string $id): bool
    {
        [$key] = $this->locks[$id];
        $sent = microtime(true);
        [, $newKey, $now] = $this->run([
            [Protocol::SUNLOCK, [$id, $key]],
            [Protocol::SLOCK, [$id, $this->waitMs, $this->leaseMs]],
            [Protocol::GETALL, [$id]],
        ]);
        if ($newKey instanceof MsessionException) {
            throw $newKey;
        }
        $this->locks[$id] = [$newKey, $sent];
        if ($now instanceof MsessionException) {
            if ($now->getErrorName() !== 'NOSESSION') {
                throw $now;
            }
            $now = [];
        }
        if (!self::diff($this->seen[$id] ?? [], self::live($now))) {
            return true;
        }
        try {
            $this->client()->unlock($id, $newKey);
        } finally {
            unset($this->locks[$id]);
        }
        return false;
    }

    /** The variables without the tombstones of removed keys. */
    private static function live(array $vars): array
    {
        foreach ($vars as $k => $v) {
            if ($v === self::TOMBSTONE) {
                unset($vars[$k]);
            }
        }
        return $vars;
    }

    /** name => serialized value (or TOMBSTONE) for every key that differs from $before. */
    private static function diff(array $before, array $current): array
    {
        $changes = [];
        foreach ($current as $k => $v) {
            if (!array_key_exists($k, $before) || $before[$k] !== $v) {
                $changes[$k] = $v;
            }
        }
        foreach ($before as $k => $_) {
            if (!array_key_exists($k, $current)) {
                $changes[$k] = self::TOMBSTONE;
            }
        }
        return $changes;
    }

    /**
     * The session's top-level keys, each serialized: from $_SESSION while PHP
     * writes the session (it encoded $data from it), else decoded from $data
     * (php_serialize only). Null if that is not possible.
     */
    private function currentVars(string $data): ?array
    {
        if (session_status() === PHP_SESSION_ACTIVE && isset($_SESSION) && is_array($_SESSION)) {
            $vars = $_SESSION;
        } elseif (ini_get('session.serialize_handler') === 'php_serialize' || $data === '') {
            $vars = $data === '' ? [] : @unserialize($data);
            if (!is_array($vars)) {
                return null;
            }
        } else {
            return null;
        }
        $out = [];
        foreach ($vars as $k => $v) {
            $out[$k] = serialize($v);
        }
        return $out;
    }

    /** The string session.serialize_handler decodes into name => unserialize(value). */
    public static function encode(array $vars): string
    {
        $handler = ini_get('session.serialize_handler');
        $out = '';
        if ($handler === 'php_serialize') {
            foreach ($vars as $k => $v) {
                $out .= serialize($k) . $v;
            }
            return 'a:' . count($vars) . ':{' . $out . '}';
        }
        foreach ($vars as $k => $v) {
            $k = (string)$k;
            $out .= $handler === 'php_binary' ? chr(strlen($k)) . $k . $v : "$k|$v";
        }
        return $out;
    }

    /** The sessions' inactivity timeout: session.gc_maxlifetime. */
    private static function ttl(): int
    {
        return max(1, (int)ini_get('session.gc_maxlifetime'));
    }

    private function fail(string $message): false
    {
        trigger_error("msession: $message", E_USER_WARNING);
        return false;
    }
}
