<?php
// One "web request" for SessionHandlerTest, run as `php -d ... request.php JSON`.
// JSON: {"sid": id or null, "ops": [["inc", k], ["set", k, v], ["unset", k],
// ["sleep", ms], ["mark", path], ["wait_file", path, max_ms], ["regenerate"], ["destroy"]],
// "read_and_close": bool}.
// ["mark", path] creates the file path: a test waits for it (session_start() returned:
// in lock mode, the lock is held). ["wait_file", path, max_ms] waits until the file path
// exists (a test creates it), at most max_ms.
// Prints JSON: sid, the session's contents, handler calls, warnings,
// session_start's/session_write_close's results, and waited: for each wait_file,
// whether the file came (false: max_ms ran out).
require_once __DIR__ . '/../msession.php';

final class Spy implements SessionHandlerInterface, SessionIdInterface, SessionUpdateTimestampHandlerInterface
{
    public array $calls = [];

    public function __construct(private Msession\SessionHandler $h)
    {
    }

    public function open(string $p, string $n): bool { $this->calls[] = 'open'; return $this->h->open($p, $n); }
    public function close(): bool { $this->calls[] = 'close'; return $this->h->close(); }
    public function read(string $id): string|false { $this->calls[] = 'read'; return $this->h->read($id); }
    public function write(string $id, string $d): bool { $this->calls[] = 'write'; return $this->h->write($id, $d); }
    public function destroy(string $id): bool { $this->calls[] = 'destroy'; return $this->h->destroy($id); }
    public function gc(int $m): int|false { $this->calls[] = 'gc'; return $this->h->gc($m); }
    public function create_sid(): string { $this->calls[] = 'create_sid'; return $this->h->create_sid(); }
    public function validateId(string $id): bool { $this->calls[] = 'validateId'; return $this->h->validateId($id); }
    public function updateTimestamp(string $id, string $d): bool { $this->calls[] = 'updateTimestamp'; return $this->h->updateTimestamp($id, $d); }
}

$warnings = [];
set_error_handler(function (int $no, string $msg) use (&$warnings) {
    $warnings[] = $msg;
    return true;
});
$req = json_decode($argv[1], true);
$spy = new Spy(new Msession\SessionHandler());
session_set_save_handler($spy, true);
if (!empty($req['sid'])) {
    session_id($req['sid']);
}
$started = session_start(!empty($req['read_and_close']) ? ['read_and_close' => true] : []);
$out = ['started' => $started, 'read' => $_SESSION ?? null, 'waited' => []];
foreach ($req['ops'] ?? [] as $op) {
    switch ($op[0]) {
        case 'inc': $_SESSION[$op[1]] = ($_SESSION[$op[1]] ?? 0) + 1; break;
        case 'set': $_SESSION[$op[1]] = $op[2]; break;
        case 'unset': unset($_SESSION[$op[1]]); break;
        case 'sleep': usleep(1000 * $op[1]); break;
        case 'mark': file_put_contents($op[1], 'started'); break;
        case 'wait_file':
            $deadline = microtime(true) + $op[2] / 1000;
            while (!($found = is_file($op[1])) && microtime(true) < $deadline) {
                usleep(10000);
                clearstatcache(true, $op[1]);
            }
            $out['waited'][] = $found;
            break;
        case 'regenerate': session_regenerate_id(); break;
        case 'destroy': session_destroy(); break;
    }
}
$out['sid'] = session_id();
$out['session'] = $_SESSION ?? null;
$out['closed'] = session_status() === PHP_SESSION_ACTIVE ? session_write_close() : null;
$out['calls'] = $spy->calls;
$out['warnings'] = $warnings;
echo json_encode($out);
