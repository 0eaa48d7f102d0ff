<?php
declare(strict_types=1);

use Msession\Client;
use Msession\SessionHandler;
use PHPUnit\Framework\TestCase;

/**
 * Persistent connections (the save handler's default, msession.persistent=1):
 * reused by the next request of the process without HELLO; replaced, with
 * nothing replayed, when the node closed them while idle or was restarted.
 */
final class PersistentTest extends TestCase
{
    /** @var resource|null */
    private $node = null;

    protected function tearDown(): void
    {
        if ($this->node !== null) {
            msession_test_stop($this->node);
            $this->node = null;
        }
    }

    /** @return resource|null a client's socket */
    private static function socketOf(Client $c)
    {
        return (new ReflectionProperty(Client::class, 'sock'))->getValue($c);
    }

    /** The local "ip:port" of a client's socket (null when not connected). */
    private static function localName(Client $c): ?string
    {
        $sock = self::socketOf($c);
        return is_resource($sock) ? stream_socket_get_name($sock, false) : null;
    }

    /** Waits (bounded) until the node has closed the idle socket: it is readable (EOF). */
    private static function waitClosedByNode($sock): void
    {
        msession_wait_until(function () use ($sock) {
            $r = [$sock];
            $w = $e = null;
            return !is_resource($sock) || @stream_select($r, $w, $e, 0) !== 0;
        }, 10, 'the node to close the idle connection');
    }

    /**
     * One web request's worth of handler calls (strict mode: validateId, read
     * with the lock, updateTimestamp, close), incrementing the session's
     * variable n with INC (not idempotent: a replay would show) while it
     * holds the lock. [new n, the connection's local address, serverInfo, the socket].
     */
    private static function request(SessionHandler $h, string $nodes, string $sid): array
    {
        $h->open($nodes, 'PHPSESSID');
        if (!$h->validateId($sid)) {
            throw new RuntimeException("session $sid vanished");
        }
        if ($h->read($sid) === false) {
            throw new RuntimeException("cannot read $sid");
        }
        $n = $h->client()->inc($sid, 'n');
        $local = self::localName($h->client());
        $info = $h->client()->serverInfo;
        $sock = self::socketOf($h->client());
        if (!$h->updateTimestamp($sid, '') || !$h->close()) {
            throw new RuntimeException("cannot release $sid");
        }
        return [$n, $local, $info, $sock];
    }

    public function testTheConnectionIsReusedAcrossHandlerInstancesWithoutHello(): void
    {
        $nodes = msession_test_nodes();
        $sid = (new SessionHandler(['nodes' => $nodes]))->create_sid();
        [$v1, $local1] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid);
        [$v2, $local2, $info2] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid);
        $this->assertSame([1, 2], [$v1, $v2]);
        $this->assertNotNull($local1);
        $this->assertSame($local1, $local2, 'the second handler reused the first one\'s connection');
        $this->assertSame([], $info2, 'no HELLO on a reused connection');
        // persistent off: a connection per handler
        [, $local3] = self::request(new SessionHandler(['nodes' => $nodes, 'persistent' => '0']), $nodes, $sid);
        [$v4, $local4] = self::request(new SessionHandler(['nodes' => $nodes, 'persistent' => 'off']), $nodes, $sid);
        $this->assertSame(4, $v4);
        $this->assertNotSame($local3, $local4);
        $this->assertNotSame($local1, $local3);
    }

    public function testTwoPersistentClientsShareTheConnectionAndSurviveEachOthersClose(): void
    {
        $nodes = msession_test_nodes();
        $a = new Client($nodes, ['persistent' => true]);
        $b = new Client($nodes, ['persistent' => true]);
        $s = msession_test_id();
        $a->create($s);
        $this->assertSame(1, $b->inc($s, 'n'));
        $this->assertSame(self::localName($a), self::localName($b));
        $a->close(true);  // really closes the shared socket
        $this->assertSame(2, $b->inc($s, 'n'), 'b noticed and reconnected; the INC ran once');
        $this->assertSame(3, $a->inc($s, 'n'));
        $a->destroy($s);
    }

    public function testANodeThatClosedTheIdleConnectionMeansATransparentReconnect(): void
    {
        $port = msession_dead_port();
        $this->node = msession_test_serve($port, ['MSESSION_IDLE_TIMEOUT' => '0.5']);
        $nodes = "127.0.0.1:$port";
        $c = new Client($nodes, ['persistent' => true]);
        $s = msession_test_id();
        $c->create($s);
        $before = self::localName($c);
        $sock = self::socketOf($c);
        $c->close();
        self::waitClosedByNode($sock);
        $c2 = new Client($nodes, ['persistent' => true]);
        $this->assertSame(1, $c2->inc($s, 'n'), 'INC (not idempotent) went out once, on a fresh connection');
        $this->assertNotSame($before, self::localName($c2));
        $this->assertSame(1, $c2->serverInfo['version'], 'a fresh connection says HELLO');
        $this->assertSame(['n' => '1'], $c2->getArray($s));

        // the same through the save handler, idle between two requests
        $sid = (new SessionHandler(['nodes' => $nodes]))->create_sid();
        [$v1, , , $sock] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid);
        self::waitClosedByNode($sock);
        [$v2, , $info] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid);
        $this->assertSame([1, 2], [$v1, $v2]);
        $this->assertSame(1, $info['version'] ?? null, 'a new connection (HELLO) replaced the closed one');
    }

    public function testANodeRestartBetweenRequestsMeansATransparentReconnect(): void
    {
        $port = msession_dead_port();
        $nodes = "127.0.0.1:$port";
        $this->node = msession_test_serve($port);
        $sid = (new SessionHandler(['nodes' => $nodes]))->create_sid();
        [$v1, $local1] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid);
        $this->assertSame(1, $v1);
        msession_test_stop($this->node);
        $this->node = null;
        $this->node = msession_test_serve($port);  // a new node: the sessions are gone, the old connection too
        $h = new SessionHandler(['nodes' => $nodes]);
        $h->open($nodes, 'PHPSESSID');
        $this->assertFalse($h->validateId($sid), 'the restarted node does not know the session');
        $sid2 = $h->create_sid();
        $this->assertSame('', $h->read($sid2));
        $this->assertSame(1, $h->client()->serverInfo['version'] ?? null, 'a fresh connection');
        $this->assertNotSame($local1, self::localName($h->client()));
        $this->assertSame(1, $h->client()->inc($sid2, 'n'));
        $this->assertTrue($h->updateTimestamp($sid2, ''));
        $this->assertTrue($h->close());
        [$v2] = self::request(new SessionHandler(['nodes' => $nodes]), $nodes, $sid2);
        $this->assertSame(2, $v2);
    }

    public function testALargeRequestOnAReusedConnectionGetsItsOwnAnswers(): void
    {
        // A reused persistent connection does not know the node's max_frame: a
        // request above the 4 MiB default makes the client ask (HELLO) before
        // sending the batch; the batch's answers must still be matched to it.
        $port = msession_dead_port();
        $nodes = "127.0.0.1:$port";
        $this->node = msession_test_serve($port, ['MSESSION_MAX_FRAME' => (string)(32 << 20)]);
        $s = msession_test_id();
        (new Client($nodes, ['persistent' => true]))->create($s);
        $c = new Client($nodes, ['persistent' => true, 'timeout' => 5]);
        $big = str_repeat('x', 5 << 20);
        $t = microtime(true);
        [$n, , $v] = $c->pipeline()->inc($s, 'n')->set($s, 'big', $big)->getData($s)->execute();
        $this->assertLessThan(4.0, microtime(true) - $t, 'answered, not timed out');
        $this->assertSame(1, $n);
        $this->assertSame('', $v);
        $this->assertSame(strlen($big), strlen((string)$c->get($s, 'big')));
        $this->assertSame('2', (string)$c->inc($s, 'n'), 'the INC ran once');
        $c->destroy($s);
    }

    public function testAnExchangeCutShortIsNeverReused(): void
    {
        // A request that dies mid-exchange (fatal error, max_execution_time) leaves
        // unread answers on its persistent socket: the shutdown function closes it.
        $nodes = msession_test_nodes();
        $c = new Client($nodes, ['persistent' => true]);
        $c->ping();
        $sock = self::socketOf($c);
        (new ReflectionProperty(Client::class, 'inFlight'))->setValue([(int)$sock => $sock]);
        $before = self::localName($c);
        $c2 = new Client($nodes, ['persistent' => true]);
        $c2->ping();
        $this->assertNotSame($before, self::localName($c2), 'a socket left mid-exchange is replaced');
        $sock2 = self::socketOf($c2);
        (new ReflectionProperty(Client::class, 'inFlight'))->setValue([(int)$sock2 => $sock2]);
        Client::closeAbandoned();
        $this->assertFalse(is_resource($sock2));
        $this->assertTrue($c2->ping());
    }
}
