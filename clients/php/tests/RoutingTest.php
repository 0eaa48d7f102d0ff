<?php
declare(strict_types=1);

use Msession\Client;
use Msession\MsessionException;
use Msession\Routes;
use Msession\SessionHandler;
use PHPUnit\Framework\TestCase;

/**
 * Client-side routing (option route) against a real 3-node farm
 * (MSESSION_TEST_FARM): requests go straight to each session's owner; a
 * stale table only costs a hop; an unreachable owner means the other nodes.
 */
final class RoutingTest extends TestCase
{
    private array $farm;
    private string $key;

    protected function setUp(): void
    {
        $this->farm = msession_test_farm();
        $this->key = Routes::key($this->farm);
        Routes::forget($this->key);
    }

    protected function tearDown(): void
    {
        Routes::forget($this->key);
    }

    /** cluster_forwarded summed over the farm's nodes (each asked directly). */
    private function forwarded(): int
    {
        $n = 0;
        foreach ($this->farm as $node) {
            $c = new Client($node);
            $n += $c->info()['cluster_forwarded'];
            $c->close();
        }
        return $n;
    }

    /** The real table, and a copy of it where every partition names another member (index + 1). */
    private function realAndWrongTables(): array
    {
        $real = (new Client($this->farm, ['route' => true]))->routes();
        $wrong = '';
        for ($p = 0; $p < Routes::PARTITIONS; $p++) {
            $i = unpack('n', $real->owners, 2 * $p)[1];
            $wrong .= pack('n', ($i + 1) % count($real->members));
        }
        return [$real, new Routes($real->members, $wrong, microtime(true) + 60)];
    }

    /** Writes $r as the shared cache would (a file, or APCu) and forgets this process's copy. */
    private function forge(Routes $r): void
    {
        Routes::store($this->key, $r);
        Routes::clearMemory();
    }

    public function testPartitionsAreTheFarms(): void
    {
        // fixed vectors, from Python: int.from_bytes(hashlib.md5(sid).digest()[:8], "big") >> 52
        $this->assertSame(204, Routes::partition('a'));
        $this->assertSame(2304, Routes::partition('abc'));
        $this->assertSame(2129, Routes::partition('0123456789abcdef0123456789abcdef'));
        $this->assertSame(3393, Routes::partition(''));
    }

    public function testTheTableIsTheFarmsAndIsCachedAcrossRequests(): void
    {
        $c = new Client($this->farm, ['route' => true]);
        $table = $c->routes();
        $this->assertCount(3, $table->members);
        $this->assertEqualsCanonicalizing($this->farm, $table->members);
        $owners = [];
        for ($i = 0; $i < 300; $i++) {
            $owners[$table->owner("s$i")] = true;
        }
        $this->assertCount(3, $owners, 'sessions spread over the farm');
        Routes::clearMemory();  // as the next PHP request starts
        $cached = Routes::cached(Routes::key(array_reverse($this->farm)));  // any order of the node list
        $this->assertNotNull($cached, 'shared with the next request (APCu or a file)');
        $this->assertSame($table->owners, $cached->owners);
        if (!function_exists('apcu_enabled') || !apcu_enabled()) {
            $this->assertSame(0, fileperms(Routes::file($this->key)) & 0o077, 'the cache file is the user\'s alone');
        }
    }

    public function testRequestsGoStraightToTheOwner(): void
    {
        $routed = new Client($this->farm, ['route' => true]);
        $table = $routed->routes();
        $sids = array_map(fn($i) => msession_test_id("r$i-"), range(1, 50));
        $spread = [];
        foreach ($sids as $sid) {
            $spread[$table->owner($sid)] = true;
        }
        $this->assertCount(3, $spread);

        $before = $this->forwarded();
        foreach ($sids as $sid) {  // 100 requests: 50 sessions over the farm
            $routed->create($sid);
            [$n, $all] = $routed->pipeline()->inc($sid, 'n')->getArray($sid)->execute();
            $this->assertSame([1, ['n' => '1']], [$n, $all]);
        }
        $this->assertSame($before, $this->forwarded(), 'no member forwarded a routed request');

        $plain = new Client($this->farm);  // no routing: everything goes to the first node
        $before = $this->forwarded();
        foreach ($sids as $sid) {
            $plain->setData($sid, 'x');
            $this->assertSame('2', (string)$plain->inc($sid, 'n'));
        }
        $this->assertGreaterThan($before + 30, $this->forwarded(), 'two requests in three are forwarded without routing');
        foreach ($sids as $sid) {
            $routed->destroy($sid);
        }
    }

    public function testAStaleTableStillGivesTheRightAnswers(): void
    {
        [, $wrong] = $this->realAndWrongTables();
        $this->forge($wrong);  // every session's owner is wrong
        $c = new Client($this->farm, ['route' => true]);
        $this->assertSame($wrong->owners, $c->routes()->owners, 'the forged table is used');
        $plain = new Client($this->farm);
        $before = $this->forwarded();
        for ($i = 0; $i < 10; $i++) {
            $sid = msession_test_id();
            $c->create($sid);
            $c->set($sid, 'v', "x$i");
            $this->assertSame(1, $c->inc($sid, 'n'));
            $this->assertSame("x$i", $plain->get($sid, 'v'));
            $this->assertSame(['v' => "x$i", 'n' => '1'], $c->getArray($sid));
            $c->destroy($sid);
        }
        $this->assertGreaterThanOrEqual($before + 50, $this->forwarded(), 'each request took the forwarding hop');
    }

    public function testAnUnreachableOwnerMeansTheOtherNodes(): void
    {
        [$real] = $this->realAndWrongTables();
        $dead = '127.0.0.1:' . msession_dead_port();
        $this->forge(new Routes([$dead], str_repeat("\0\0", Routes::PARTITIONS), microtime(true) + 60));
        $c = new Client($this->farm, ['route' => true]);
        $sid = msession_test_id();
        $c->create($sid);  // not idempotent, but nothing was sent to the dead owner
        $this->assertSame(1, $c->inc($sid, 'n'));
        $this->assertSame(['n' => '1'], $c->getArray($sid));
        $this->assertSame('', Routes::cached($this->key)->owners, 'the table was dropped: no routing for route_ttl');
        Routes::forget($this->key);
        $this->assertSame($real->owners, $c->routes()->owners, 'asked again once dropped');
        $c->destroy($sid);
    }

    public function testAnOwnerFailingMidRequestNeverGetsANonIdempotentRequestReplayed(): void
    {
        [$proc, $fake] = msession_fake_node(2);  // answers HELLO, then closes without answering
        try {
            $owned = fn() => $this->forge(new Routes([$fake], str_repeat("\0\0", Routes::PARTITIONS), microtime(true) + 60));
            $plain = new Client($this->farm);
            $sid = msession_test_id();
            $plain->create($sid);
            $owned();
            $c = new Client($this->farm, ['route' => true]);
            try {
                $c->inc($sid, 'n');
                $this->fail('expected BADCONN');
            } catch (MsessionException $e) {
                $this->assertSame('BADCONN', $e->getErrorName());
            }
            $this->assertNull($plain->get($sid, 'n'), 'INC was not sent again');
            $owned();
            $plain->set($sid, 'v', 'x');
            $this->assertSame('x', (new Client($this->farm, ['route' => true]))->get($sid, 'v'), 'a read goes on to the nodes');
            $plain->destroy($sid);
        } finally {
            msession_fake_stop($proc);
        }
    }

    public function testTheSaveHandlerRoutesByDefaultWithSeveralNodes(): void
    {
        $nodes = implode(',', $this->farm);
        $this->assertTrue((new SessionHandler(['nodes' => $nodes]))->client()->route);
        $this->assertFalse((new SessionHandler(['nodes' => $this->farm[0]]))->client()->route);
        $this->assertFalse((new SessionHandler(['nodes' => $nodes, 'route' => '0']))->client()->route);
        $this->assertTrue((new SessionHandler(['nodes' => $this->farm[0], 'route' => 'on']))->client()->route);

        $h = new SessionHandler(['nodes' => $nodes]);
        $h->open($nodes, 'PHPSESSID');
        $sid = $h->create_sid();
        $before = $this->forwarded();
        for ($i = 0; $i < 5; $i++) {
            $this->assertTrue($h->validateId($sid));
            $h->read($sid);
            $this->assertSame($h->client()->routes()->owner($sid), $h->client()->node(), 'read at the owner');
            $h->client()->inc($sid, 'n');
            $this->assertTrue($h->updateTimestamp($sid, ''));  // lazy write: TIMEOUT + SUNLOCK
            $this->assertTrue($h->close());
        }
        $this->assertSame($before, $this->forwarded());
        $this->assertSame(['n' => '5'], (new Client($this->farm))->getArray($sid));
        $h->destroy($sid);
    }
}
