<?php
declare(strict_types=1);

use Msession\Client;
use Msession\SessionHandler;
use PHPUnit\Framework\TestCase;

/**
 * The save handler, driven as PHP's session module drives it: each "request"
 * is a `php` process running tests/request.php (session_start ... write).
 */
final class SessionHandlerTest extends TestCase
{
    private Client $c;

    protected function setUp(): void
    {
        $this->c = new Client(msession_test_nodes());
    }

    /** Starts one request; returns [process, stdout pipe]. */
    private function start(array $req, array $ini = []): array
    {
        $ini += ['session.save_path' => msession_test_nodes(), 'session.use_cookies' => '0',
                 'session.use_strict_mode' => '1', 'session.gc_maxlifetime' => '900'];
        $cmd = [PHP_BINARY, '-n', '-d', 'extension=msgpack.so'];
        foreach ($ini as $k => $v) {
            array_push($cmd, '-d', "$k=$v");
        }
        array_push($cmd, __DIR__ . '/request.php', json_encode($req));
        $env = array_filter(getenv(), fn($k) => !str_starts_with($k, 'MSESSION_'), ARRAY_FILTER_USE_KEY);
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        return [$proc, $pipes];
    }

    private function finish(array $started): array
    {
        [$proc, $pipes] = $started;
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        proc_close($proc);
        $res = json_decode($out, true);
        $this->assertIsArray($res, "request failed: $out $err");
        return $res;
    }

    /**
     * Starts a request that holds the session's lock: its first op marks a
     * file once session_start() has returned (in lock mode, the lock is
     * held); returns [process, stdout pipe] once the file is there. The
     * process is terminated if it never comes.
     */
    private function startHoldingLock(array $req, array $ini): array
    {
        $mark = tempnam(sys_get_temp_dir(), 'msession-mark');
        unlink($mark);
        $req['ops'] = array_merge([['mark', $mark]], $req['ops'] ?? []);
        $started = $this->start($req, $ini);
        try {
            msession_wait_until(function () use ($mark, $started) {
                clearstatcache(true, $mark);
                return is_file($mark) || !proc_get_status($started[0])['running'];
            }, 20, 'the request to take the lock');
            $this->assertFileExists($mark, 'the request ended without taking the lock');
        } catch (\Throwable $e) {
            proc_terminate($started[0], 9);
            proc_close($started[0]);
            throw $e;
        } finally {
            @unlink($mark);
        }
        return $started;
    }

    /** $list[$key], removed from $list. */
    private static function take(array &$list, string $key): mixed
    {
        $value = $list[$key];
        unset($list[$key]);
        return $value;
    }

    /** Runs requests at the same time. */
    private function concurrently(array $reqs, array $ini = []): array
    {
        $running = [];
        foreach ($reqs as $req) {
            $running[] = $this->start($req, $ini);
        }
        return array_map(fn($r) => $this->finish($r), $running);
    }

    private function request(array $req, array $ini = []): array
    {
        return $this->finish($this->start($req, $ini));
    }

    public function testNewSessionsGetUniqueReservedIdsAndTheTimeout(): void
    {
        $r = $this->request(['ops' => [['inc', 'n']]]);
        $this->assertTrue($r['started']);
        $this->assertMatchesRegularExpression('/^[a-zA-Z0-9]{32}$/', $r['sid']);
        $this->assertContains('create_sid', $r['calls']);
        $this->assertSame([], $r['warnings']);
        $this->assertSame(1, $this->c->ctl($r['sid'], 'EXIST'));
        $this->assertSame(900, $this->c->timeout($r['sid']));
        // storage layout: one variable per top-level key, serialize()d
        $this->assertSame(['n' => serialize(1)], $this->c->getArray($r['sid']));
        $r2 = $this->request(['ops' => [['inc', 'n']]]);
        $this->assertNotSame($r['sid'], $r2['sid']);
    }

    public function testStrictModeRefusesUnknownIds(): void
    {
        $unknown = msession_test_id('x');
        $r = $this->request(['sid' => $unknown, 'ops' => [['inc', 'n']]]);
        $this->assertNotSame($unknown, $r['sid']);
        $this->assertContains('validateId', $r['calls']);
        $this->assertSame(0, $this->c->ctl($unknown, 'EXIST'));
        // a known id is kept, with its data
        $r2 = $this->request(['sid' => $r['sid'], 'ops' => [['inc', 'n']]]);
        $this->assertSame($r['sid'], $r2['sid']);
        $this->assertSame(['n' => 2], $r2['session']);
    }

    public function testWithoutStrictModeAnUnknownIdReadsEmptyAndIsCreated(): void
    {
        $id = msession_test_id('y');
        $r = $this->request(['sid' => $id, 'ops' => [['set', 'a', 'b']]], ['session.use_strict_mode' => '0']);
        $this->assertSame($id, $r['sid']);
        $this->assertSame([], $r['read']);
        $this->assertSame(['a' => serialize('b')], $this->c->getArray($id));
        $this->assertSame([], $r['warnings']);
    }

    public function testReadOfAnUnknownIdReturnsEmptyString(): void
    {
        foreach (['lock', 'merge'] as $mode) {
            $h = new SessionHandler(['mode' => $mode]);
            $this->assertTrue($h->open(msession_test_nodes(), 'PHPSESSID'));
            $this->assertSame('', $h->read(msession_test_id()));
            $this->assertTrue($h->close());
            $this->assertSame(0, $h->gc(1440));
        }
    }

    public function testLazyWriteOnlyTouchesAnUnchangedSession(): void
    {
        $r = $this->request(['ops' => [['set', 'a', 'x']]]);
        $this->c->timeout($r['sid'], 60);
        $r2 = $this->request(['sid' => $r['sid']], ['session.lazy_write' => '1']);
        $this->assertContains('updateTimestamp', $r2['calls']);
        $this->assertNotContains('write', $r2['calls']);
        $this->assertSame(900, $this->c->timeout($r['sid']));  // the timeout was renewed
        $this->assertSame(['a' => 'x'], $r2['session']);
        $this->assertIsInt($this->c->unlock($r['sid'], $this->c->lock($r['sid'], 0)));  // the lock was released
        $r3 = $this->request(['sid' => $r['sid'], 'ops' => [['set', 'a', 'y']]], ['session.lazy_write' => '1']);
        $this->assertContains('write', $r3['calls']);
        $this->assertSame(['a' => serialize('y')], $this->c->getArray($r['sid']));
    }

    public function testRemovedKeysAreTombstonesAndSerializeHandlersRoundTrip(): void
    {
        foreach (['php', 'php_serialize', 'php_binary'] as $handler) {
            foreach (['lock', 'merge'] as $mode) {
                $ini = ['session.serialize_handler' => $handler, 'msession.mode' => $mode];
                $value = ['deep' => [1, 2.5, true, null, "s\0"], 'o' => 'x'];
                $r = $this->request(['ops' => [['set', 'a', $value], ['set', 'b', 'keep'], ['inc', 'n']]], $ini);
                $r2 = $this->request(['sid' => $r['sid'], 'ops' => [['unset', 'a'], ['inc', 'n']]], $ini);
                $this->assertSame(['a' => $value, 'b' => 'keep', 'n' => 1], $r2['read'], "$handler $mode");
                $this->assertSame('', $this->c->get($r['sid'], 'a'));  // the tombstone
                $r3 = $this->request(['sid' => $r['sid']], $ini);
                $this->assertSame(['b' => 'keep', 'n' => 2], $r3['read'], "$handler $mode");
                $this->assertSame([], $r3['warnings']);
            }
        }
    }

    public function testLockModeSerializesConcurrentRequests(): void
    {
        $sid = $this->request([])['sid'];
        $t = microtime(true);
        $results = $this->concurrently(array_fill(0, 4, ['sid' => $sid, 'ops' => [['inc', 'n'], ['sleep', 150]]]));
        $elapsed = microtime(true) - $t;
        $seen = array_map(fn($r) => $r['session']['n'], $results);
        sort($seen);
        $this->assertSame([1, 2, 3, 4], $seen);
        $this->assertGreaterThanOrEqual(0.6, $elapsed);  // one at a time
        $this->assertSame(serialize(4), $this->c->get($sid, 'n'));
    }

    public function testMergeModeKeepsConcurrentChangesToDifferentKeys(): void
    {
        $ini = ['msession.mode' => 'merge'];
        $sid = $this->request(['ops' => [['set', 'shared', 'x']]], $ini)['sid'];
        $t = microtime(true);
        $reqs = [];
        foreach (['a', 'b', 'c', 'd'] as $k) {
            $reqs[] = ['sid' => $sid, 'ops' => [['inc', $k], ['sleep', 300]]];
        }
        $this->concurrently($reqs, $ini);
        $this->assertLessThan(1.2, microtime(true) - $t);  // no lock: in parallel
        $all = $this->request(['sid' => $sid], $ini)['read'];
        ksort($all);
        $this->assertSame(['a' => 1, 'b' => 1, 'c' => 1, 'd' => 1, 'shared' => 'x'], $all);
    }

    public function testAWriteAfterTheLeaseRanOutIsRefusedIfAnotherRequestChangedTheSession(): void
    {
        $ini = ['msession.lock_lease' => '1', 'msession.lock_wait' => '5'];
        $sid = $this->request(['ops' => [['set', 'n', 0]]], $ini)['sid'];
        // The slow request holds the lock, changes the session and waits for a file before it writes.
        // The fast request can get the lock only once the slow one's lease (1 s) ran out; the file is
        // created when the fast request has finished: the slow one writes after both, whatever the load.
        $go = tempnam(sys_get_temp_dir(), 'msession-go');
        unlink($go);
        $running = [];
        try {
            $running['slow'] = $this->startHoldingLock(
                ['sid' => $sid, 'ops' => [['inc', 'n'], ['set', 'slow', 1], ['wait_file', $go, 20000]]], $ini);
            $running['fast'] = $this->start(['sid' => $sid, 'ops' => [['inc', 'n'], ['set', 'fast', 1]]], $ini);
            // out of $running before finish(), which closes it even when its assertion then fails
            $fast = $this->finish(self::take($running, 'fast'));
            touch($go);
            $slow = $this->finish(self::take($running, 'slow'));
        } finally {
            @unlink($go);
            foreach ($running as [$proc]) {  // a failed wait or assertion: no request outlives the test
                proc_terminate($proc);
                proc_close($proc);
            }
        }
        $this->assertSame(1, $fast['session']['n']);  // got the lock when the slow one's lease ended
        $this->assertSame([], $fast['warnings']);
        $this->assertTrue($slow['started']);
        $this->assertSame([true], $slow['waited']);  // it wrote after the fast request
        $this->assertStringContainsString('NOT saved', implode("\n", $slow['warnings']));
        $final = $this->request(['sid' => $sid], $ini)['read'];
        $this->assertSame(['n' => 1, 'fast' => 1], $final);
    }

    public function testAWriteAfterTheLeaseRanOutGoesThroughIfNobodyChangedTheSession(): void
    {
        $ini = ['msession.lock_lease' => '1'];
        $sid = $this->request(['ops' => [['set', 'n', 0]]], $ini)['sid'];
        $r = $this->request(['sid' => $sid, 'ops' => [['inc', 'n'], ['sleep', 1300]]], $ini);
        $this->assertTrue($r['closed']);
        $this->assertSame([], $r['warnings']);
        $this->assertSame(['n' => 1], $this->request(['sid' => $sid])['read']);
    }

    public function testACrashedRequestBlocksItsSessionOnlyForTheLease(): void
    {
        $ini = ['msession.lock_lease' => '1', 'msession.lock_wait' => '5'];
        $sid = $this->request(['ops' => [['set', 'n', 0]]], $ini)['sid'];
        $crashed = $this->startHoldingLock(['sid' => $sid, 'ops' => [['sleep', 5000]]], $ini);
        proc_terminate($crashed[0], 9);  // the "crash"
        proc_close($crashed[0]);
        $t = microtime(true);
        $r = $this->request(['sid' => $sid, 'ops' => [['inc', 'n']]], $ini);
        $this->assertLessThan(2.0, microtime(true) - $t);
        $this->assertSame(1, $r['session']['n']);
    }

    public function testReadAndCloseDestroyAndRegenerateReleaseTheLock(): void
    {
        $sid = $this->request(['ops' => [['set', 'a', 1]]])['sid'];
        $r = $this->request(['sid' => $sid, 'read_and_close' => true]);
        $this->assertSame(['a' => 1], $r['read']);
        $this->assertIsInt($this->c->unlock($sid, $this->c->lock($sid, 0)));

        $r = $this->request(['sid' => $sid, 'ops' => [['regenerate'], ['inc', 'a']]]);
        $this->assertNotSame($sid, $r['sid']);
        $this->assertSame(['a' => serialize(2)], $this->c->getArray($r['sid']));
        $this->assertIsInt($this->c->unlock($sid, $this->c->lock($sid, 0)));
        $this->assertIsInt($this->c->unlock($r['sid'], $this->c->lock($r['sid'], 0)));

        $r2 = $this->request(['sid' => $r['sid'], 'ops' => [['destroy']]]);
        $this->assertContains('destroy', $r2['calls']);
        $this->assertSame(0, $this->c->ctl($r['sid'], 'EXIST'));
        $this->assertIsInt($this->c->unlock($r['sid'], $this->c->lock($r['sid'], 0)));
    }

    public function testSettingsComeFromOptionsEnvironmentAndIni(): void
    {
        $h = new SessionHandler(['mode' => 'merge', 'lock_lease' => 7]);
        $this->assertSame('merge', $h->mode);
        $this->assertSame(7.0, $h->lockLease);
        $this->assertSame(12.0, $h->lockWait);
        $this->assertSame(32, $h->sidLength);
        putenv('MSESSION_MODE=merge');
        try {
            $this->assertSame('merge', (new SessionHandler())->mode);
        } finally {
            putenv('MSESSION_MODE');
        }
        $this->expectException(InvalidArgumentException::class);
        new SessionHandler(['mode' => 'optimistic']);
    }

    public function testSessionPhpRegistersTheHandlerFromIniSettings(): void
    {
        $ini = ['auto_prepend_file' => dirname(__DIR__) . '/session.php', 'session.save_path' => msession_test_nodes(),
                'session.use_cookies' => '0'];
        $cmd = [PHP_BINARY, '-n', '-d', 'extension=msgpack.so'];
        foreach ($ini as $k => $v) {
            array_push($cmd, '-d', "$k=$v");
        }
        $base = tempnam(sys_get_temp_dir(), 'msession');
        $script = "$base.php";
        file_put_contents($script, '<?php session_start(); $_SESSION["x"] = 5; echo session_id(); session_write_close();');
        $cmd[] = $script;
        try {
            $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
            $sid = stream_get_contents($pipes[1]);
            proc_close($proc);
        } finally {
            unlink($script);
            unlink($base);
        }
        $this->assertMatchesRegularExpression('/^[a-zA-Z0-9]{32}$/', $sid);
        $this->assertSame(['x' => serialize(5)], $this->c->getArray($sid));
    }
}
