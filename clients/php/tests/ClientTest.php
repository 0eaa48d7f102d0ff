<?php
declare(strict_types=1);

use Msession\Client;
use Msession\ConnectionFailed;
use Msession\Map;
use Msession\MsessionException;
use Msession\NotExecuted;
use Msession\Protocol;
use PHPUnit\Framework\TestCase;

final class ClientTest extends TestCase
{
    private Client $c;

    protected function setUp(): void
    {
        $this->c = new Client(msession_test_nodes());
    }

    private function expectMsessionError(string $name, callable $fn): MsessionException
    {
        try {
            $fn();
        } catch (MsessionException $e) {
            $this->assertSame($name, $e->getErrorName(), $e->getMessage());
            $this->assertSame(array_search($name, MsessionException::NAMES, true), $e->getCode());
            return $e;
        }
        $this->fail("expected $name");
    }

    public function testParsesNodeLists(): void
    {
        $this->assertSame([['10.0.0.1', 8086], ['h', 9000], ['::1', 8087]], Client::parseNodes('10.0.0.1, h:9000,[::1]:8087'));
        $this->assertSame([['h', 1]], Client::parseNodes(['tcp://h:1']));
        $this->expectException(InvalidArgumentException::class);
        Client::parseNodes(' , ');
    }

    public function testFailsOverToTheNextNode(): void
    {
        $c = new Client('127.0.0.1:' . msession_dead_port() . ',' . msession_test_nodes());
        $this->assertTrue($c->ping());
        $this->assertSame(explode(',', msession_test_nodes())[0], $c->node());
        $this->assertSame(1, $c->serverInfo['version']);
    }

    public function testNoNodeAnswersIsNoconnect(): void
    {
        $c = new Client(['127.0.0.1:' . msession_dead_port(), '127.0.0.1:' . msession_dead_port()]);
        $e = $this->expectMsessionError('NOCONNECT', fn() => $c->ping());
        $this->assertStringContainsString('no node answered', $e->getMessage());
    }

    public function testASilentNodeTimesOutAndTheNextOneServes(): void
    {
        $silent = stream_socket_server('tcp://127.0.0.1:0');  // accepts (backlog), never answers
        $addr = stream_socket_get_name($silent, false);
        $c = new Client("$addr," . msession_test_nodes(), ['connect_timeout' => 0.3]);
        $t = microtime(true);
        $this->assertTrue($c->ping());
        $this->assertLessThan(3.0, microtime(true) - $t);
        $alone = new Client($addr, ['connect_timeout' => 0.2]);
        $this->expectMsessionError('NOCONNECT', fn() => $alone->ping());
        fclose($silent);
    }

    public function testErrorsCarryTheProtocolNames(): void
    {
        $s = msession_test_id();
        $this->expectMsessionError('NOSESSION', fn() => $this->c->getArray($s));
        $this->assertTrue($this->c->create($s));
        $this->expectMsessionError('DUPSESSION', fn() => $this->c->create($s));
        $this->c->set($s, 'text', 'abc');
        $this->expectMsessionError('NOVALUE', fn() => $this->c->inc($s, 'text'));
        $this->expectMsessionError('NOWLOCK', fn() => $this->c->unlock($s, 12345));
        $key = $this->c->lock($s, 0, 5);
        $this->expectMsessionError('LOCKED', fn() => $this->c->lock($s, 0.05));
        $this->expectMsessionError('LOCKED', fn() => $this->c->unlock($s, $key + 1));
        $this->assertSame($key, $this->c->unlock($s, $key));
        $this->expectMsessionError('BADARG', fn() => $this->c->uniq(0));
        $this->expectMsessionError('NOFN', fn() => $this->c->callFunction('no_such_function'));
        $this->c->destroy($s);
    }

    public function testCommandsAndBinarySafety(): void
    {
        $s = msession_test_id();
        $this->c->create($s, 'cls', 'data');
        $bytes = "a\0b\xff\xfe" . str_repeat('x', 70000);
        $this->assertTrue($this->c->set($s, "name\0", $bytes));
        $this->assertSame($bytes, $this->c->get($s, "name\0"));
        $this->assertSame('dflt', $this->c->get($s, 'absent', 'dflt'));
        $this->assertNull($this->c->get($s, 'absent'));
        $this->assertSame('data', $this->c->getData($s));
        // keys "0" and "1" are ints in PHP arrays: still a map on the wire
        $this->assertNull($this->c->setArray($s, ['0' => 'zero', '1' => 'one', 'k' => '5']));
        $all = $this->c->getArray($s);
        $this->assertSame(['zero', 'one', '5'], [$all[0], $all[1], $all['k']]);
        $this->assertSame(6, $this->c->inc($s, 'k'));
        $this->assertSame(-4, $this->c->inc($s, 'k', -10));
        $this->assertContains($s, $this->c->find('k', '-4'));
        $this->assertSame('-4', $this->c->listVar('k')[$s]);
        $this->assertContains($s, $this->c->list());
        $this->assertSame(77, $this->c->timeout($s, 77));
        $this->assertSame(1, $this->c->ctl($s));
        $this->assertLessThanOrEqual(77, $this->c->ctl($s, 'ttl'));
        $this->assertEqualsWithDelta(time(), $this->c->ctl($s, 6), 5);
        $this->assertGreaterThan(0, $this->c->count());
        $this->assertSame(17, strlen($this->c->randstr(17)));
        $this->assertIsArray($this->c->info());
        $this->assertTrue($this->c->destroy($s));
        $this->assertSame(0, $this->c->ctl($s, 'EXIST'));
    }

    public function testPipelineAnswersInOrderAndReportsErrorsInPlace(): void
    {
        $s = msession_test_id();
        $p = $this->c->pipeline();
        $r = $p->create($s)->inc($s, 'n')->inc($s, 'n')->getArray($s)->getArray(msession_test_id())->execute(false);
        $this->assertSame([true, 1, 2, ['n' => '2']], array_slice($r, 0, 4));
        $this->assertInstanceOf(MsessionException::class, $r[4]);
        $this->assertSame('NOSESSION', $r[4]->getErrorName());
        $this->assertSame([], $this->c->pipeline()->execute());
        $this->c->destroy($s);
    }

    public function testALargePipelineIsSentWhileAnswersAreRead(): void
    {
        $s = msession_test_id();
        $this->c->create($s);
        $p = $this->c->pipeline();
        $value = str_repeat('v', 2000);
        for ($i = 0; $i < 4000; $i++) {
            $p->set($s, "k$i", $value);
        }
        $this->assertCount(4000, $p->execute());
        $this->assertCount(4000, $this->c->getArray($s));
        $this->c->destroy($s);
    }

    public function testOnlyIdempotentRequestsAreReplayedOnAnotherNode(): void
    {
        [$proc, $fake] = msession_fake_node(4);
        try {
            $s = msession_test_id();
            $real = $this->c;
            $real->create($s);
            // INC may have run on the node that failed: never sent again
            $c = new Client("$fake," . msession_test_nodes());
            $e = $this->expectMsessionError('BADCONN', fn() => $c->inc($s, 'n'));
            $this->assertStringContainsString('may have been applied', $e->getMessage());
            $this->assertNull($real->get($s, 'n'));
            // a read is sent again to the next node
            $real->set($s, 'v', 'x');
            $c2 = new Client("$fake," . msession_test_nodes());
            $this->assertSame('x', $c2->get($s, 'v'));
            $real->destroy($s);
        } finally {
            msession_fake_stop($proc);
        }
    }

    /**
     * Client::afterFailure($e, $requests, $nodesLeft, $sameNodeRetries): the
     * nodes path's failover decision alone, with no node. Returns [what, nodes left, same-node
     * retries left]; what is 'same', 'next' or the error name it threw.
     */
    private static function decide(\Exception $e, array $requests, int $nodesLeft, int $retries): array
    {
        try {
            $what = Client::afterFailure($e, $requests, $nodesLeft, $retries) ? 'same' : 'next';
        } catch (MsessionException $thrown) {
            $what = $thrown->getErrorName() . ': ' . $thrown->getDetail();
        }
        return [$what, $nodesLeft, $retries];
    }

    /** Client::mayGoElsewhere($e, $requests) alone: 'elsewhere', or the error name it threw. */
    private static function mayGo(\Exception $e, array $requests): string
    {
        try {
            Client::mayGoElsewhere($e, $requests);
            return 'elsewhere';
        } catch (MsessionException $thrown) {
            return $thrown->getErrorName() . ': ' . $thrown->getDetail();
        }
    }

    public function testTheFailoverDecision(): void
    {
        $get = [[Protocol::GETVAL, ['s', 'k']], [Protocol::GETALL, ['s']]];
        $notRun = fn(string $name) => new NotExecuted(new MsessionException($name, 'x'));
        $broke = new ConnectionFailed('connection closed by the node');

        // not run, TIMEOUT or BADCONN: the same node twice, then the next ones, then the node's error
        foreach (['TIMEOUT', 'BADCONN'] as $name) {
            $this->assertSame(['same', 3, 1], self::decide($notRun($name), $get, 3, 2));
            $this->assertSame(['same', 3, 0], self::decide($notRun($name), $get, 3, 1));
            $this->assertSame(['next', 2, 0], self::decide($notRun($name), $get, 3, 0));
            $this->assertSame(["$name: x", 0, 0], self::decide($notRun($name), $get, 1, 0));
        }
        // not run, other errors (BUSY): the next node at once, retries untouched; none left: BUSY
        $this->assertSame(['next', 1, 2], self::decide($notRun('BUSY'), $get, 2, 2));
        $this->assertSame(['BUSY: x', 0, 2], self::decide($notRun('BUSY'), $get, 1, 2));
        // a batch that did not run may go again even if not idempotent
        $this->assertSame(['same', 2, 1], self::decide($notRun('TIMEOUT'), [[Protocol::INC, ['s', 'n', 1]]], 2, 2));
        $this->assertSame(['next', 1, 2], self::decide($notRun('BUSY'), [[Protocol::CREATE, ['s']]], 2, 2));

        // may have run, idempotent: the next node (never the same one), BADCONN when none is left
        $this->assertSame(['next', 1, 2], self::decide($broke, $get, 2, 2));
        $this->assertSame(['BADCONN: request failed on every node: connection closed by the node', 0, 2],
            self::decide($broke, $get, 1, 2));
        // may have run, not idempotent (any one command of the batch): BADCONN, nothing used up
        foreach (array_keys(Protocol::NOT_IDEMPOTENT) as $cmd) {
            $batch = [[Protocol::GETVAL, ['s', 'k']], [$cmd, ['s']]];
            $this->assertSame(
                ['BADCONN: node failed during a request that may have been applied: connection closed by the node', 3, 2],
                self::decide($broke, $batch, 3, 2), "command $cmd");
        }

        // a connection-level error answer: thrown as is, whatever is left
        $answer = new MsessionException('BADVER', 'unsupported protocol version');
        $left = 3;
        $retries = 2;
        try {
            Client::afterFailure($answer, $get, $left, $retries);
            $this->fail('not thrown');
        } catch (MsessionException $e) {
            $this->assertSame($answer, $e);
            $this->assertSame([3, 2], [$left, $retries]);
        }

        // the owner path's rule (mayGoElsewhere): never the owner again, the nodes next
        // unless the batch may have run and is not idempotent, or a connection-level error answer
        foreach ([$notRun('TIMEOUT'), $notRun('BADCONN'), $notRun('BUSY'), $broke] as $e) {
            $this->assertSame('elsewhere', self::mayGo($e, $get));
        }
        $this->assertSame('elsewhere', self::mayGo($notRun('TIMEOUT'), [[Protocol::SLOCK, ['s', 0, 30000]]]));
        foreach (array_keys(Protocol::NOT_IDEMPOTENT) as $cmd) {
            $this->assertSame('BADCONN: node failed during a request that may have been applied: connection closed by the node',
                self::mayGo($broke, [[Protocol::GETVAL, ['s', 'k']], [$cmd, ['s']]]), "command $cmd");
        }
        try {
            Client::mayGoElsewhere($answer, $get);
            $this->fail('not thrown');
        } catch (MsessionException $e) {
            $this->assertSame($answer, $e);
        }
    }

    public function testExchangeAnswersEveryRequestInPlace(): void
    {
        // exchange() (the session handler's round trips): [status, result] per request, in order
        $s = msession_test_id();
        $this->c->create($s);
        $answers = $this->c->exchange([
            [Protocol::SETVAL, [$s, new Map(['a' => '1', 'b' => "\0\xff"])]],
            [Protocol::GETVAL, [$s, 'a']],
            [Protocol::GETVAL, ["nosuch$s", 'a']],
            [Protocol::GETALL, [$s]],
            [Protocol::TIMEOUT, [$s, 77]],
        ]);
        $this->assertSame([1, '1'], $answers[1]);
        $this->assertSame('NOSESSION', Client::error($answers[2])->getErrorName());
        $this->assertSame(['a' => '1', 'b' => "\0\xff"], $answers[3][1]);
        $this->assertSame([1, 77], $answers[4]);
        $this->assertSame([], $this->c->exchange([]), 'an empty batch sends nothing');
        $this->c->destroy($s);
    }

    public function testEveryClassOfTheLibraryLoadsThroughTheAutoloaderAlone(): void
    {
        $src = dirname(__DIR__) . '/src';
        $names = [];
        foreach (glob("$src/*.php") as $file) {
            preg_match_all('/^(?:final |abstract )?(?:class|trait|interface|enum) (\w+)/m', file_get_contents($file), $m);
            array_push($names, ...$m[1]);
        }
        $this->assertContains('NotExecuted', $names);
        foreach ($names as $name) {
            // a fresh process: nothing loaded but what the autoloader loads for this one name
            $code = 'require ' . var_export("$src/autoload.php", true) . '; $n = ' . var_export("Msession\\$name", true) . ';'
                . ' echo class_exists($n) || trait_exists($n) || interface_exists($n) || enum_exists($n) ? "ok" : "missing";';
            $proc = proc_open([PHP_BINARY, '-n', '-d', 'extension=msgpack.so', '-r', $code], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
            $out = stream_get_contents($pipes[1]) . stream_get_contents($pipes[2]);
            proc_close($proc);
            $this->assertSame('ok', $out, "Msession\\$name");
        }
    }

    public function testKnowsEveryErrorCodeOfTheProtocol(): void
    {
        $this->assertSame('UNAVAILABLE', MsessionException::fromCode(19, 'member n2 could not be reached')->getErrorName());
        $this->assertSame(19, (new MsessionException('UNAVAILABLE'))->getCode());
        $this->assertSame(range(0, 19), array_keys(MsessionException::NAMES));
    }

    public function testBusyAnswersAreSentAgainTwice(): void
    {
        // BUSY with the request's id: it did not run; sent again after 0.1 s, then 0.3 s
        [$proc, $fake] = msession_fake_node(1, 2);
        try {
            $c = new Client($fake);
            $t = microtime(true);
            $this->assertTrue($c->ping());
            $this->assertGreaterThanOrEqual(0.39, microtime(true) - $t);
        } finally {
            msession_fake_stop($proc);
        }
        [$proc, $fake] = msession_fake_node(1, 3);
        try {
            $this->expectMsessionError('BUSY', fn() => (new Client($fake))->ping());
        } finally {
            msession_fake_stop($proc);
        }
        [$proc, $fake] = msession_fake_node(1, 1);
        try {
            [$a, $b] = (new Client($fake))->pipeline()->ping()->ping()->execute(false);
            $this->assertInstanceOf(MsessionException::class, $a, 'BUSY before a request that ran: not sent again');
            $this->assertSame('BUSY', $a->getErrorName());
            $this->assertTrue($b);
        } finally {
            msession_fake_stop($proc);
        }
    }

    public function testWhatAConnectionLevelErrorAnswerMeans(): void
    {
        $busy = MsessionException::fromCode(Protocol::ERR_BUSY, 'node is shutting down');
        $this->assertNull(Client::closedWith(MsessionException::fromCode(9, 'bad header'), [], 3), 'BADHDR: goes on');
        foreach ([$busy, MsessionException::fromCode(18, 'idle')] as $err) {
            try {
                Client::closedWith($err, [], 2);
                $this->fail('nothing answered: nothing ran');
            } catch (NotExecuted $e) {
                $this->assertSame($err, $e->error);
            }
        }
        $this->assertSame(
            [[1, 'PONG'], [0, [17, 'node is shutting down']], [0, [17, 'node is shutting down']]],
            Client::closedWith($busy, [[1, 'PONG']], 3),
            'BUSY after some answers: the rest did not run'
        );
        $timeout = MsessionException::fromCode(18, 'idle');
        try {
            Client::closedWith($timeout, [[1, 'PONG']], 3);
            $this->fail('TIMEOUT after some answers: thrown as is');
        } catch (MsessionException $e) {
            $this->assertSame($timeout, $e);
        }
    }

    public function testAfterANodeClosesWithBusyTheRestOfTheBatchGoesElsewhere(): void
    {
        // The first request ran on the node that shuts down (answered), the
        // others did not (its nil-id BUSY): they go to the next node, once.
        [$proc, $fake] = msession_fake_node(1, 'shutdown');
        try {
            $c = new Client("$fake," . msession_test_nodes());
            $sid = 'shut-' . bin2hex(random_bytes(4));
            $results = $c->pipeline()->ping()->create($sid)->set($sid, 'k', 'v')->get($sid, 'k')->execute();
            $this->assertSame([true, true, true, 'v'], $results);
            $this->assertNotSame($fake, $c->node());
            $c->destroy($sid);
        } finally {
            msession_fake_stop($proc);
        }
    }

    public function testRequestTooLargeIsRefusedBeforeSending(): void
    {
        $s = msession_test_id();
        $this->c->ping();
        $max = $this->c->serverInfo['max_frame'];
        $this->expectMsessionError('BADLEN', fn() => $this->c->set($s, 'big', str_repeat('x', $max + 1)));
        $this->assertTrue($this->c->ping());  // the connection is still fine
    }
}
