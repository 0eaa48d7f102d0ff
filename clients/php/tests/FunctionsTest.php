<?php
// Not strict_types: the old functions took ints for strings, and code using them does.

use PHPUnit\Framework\TestCase;

/** Every msession_* function, as code written for the old manual page calls it. */
final class FunctionsTest extends TestCase
{
    private array $warnings = [];

    protected function setUp(): void
    {
        [$host, $port] = Msession\Client::parseNode(explode(',', msession_test_nodes())[0]);
        $this->assertTrue(msession_connect($host, (string)$port));
        set_error_handler(function (int $no, string $msg) {
            $this->warnings[] = $msg;
            return true;
        }, E_USER_WARNING);
    }

    protected function tearDown(): void
    {
        restore_error_handler();
        msession_disconnect();
    }

    /** Asserts exactly one warning containing $text was raised since the last call. */
    private function assertWarned(string $text): void
    {
        $this->assertCount(1, $this->warnings, implode("\n", $this->warnings));
        $this->assertStringContainsString($text, $this->warnings[0]);
        $this->warnings = [];
    }

    private function assertNoWarning(): void
    {
        $this->assertSame([], $this->warnings);
    }

    public function testTheOldExtensionIsAbsentAndEveryFunctionIsDefined(): void
    {
        $this->assertFalse(extension_loaded('msession'));
        foreach (['connect', 'disconnect', 'count', 'create', 'destroy', 'set', 'get', 'get_array', 'set_array',
                  'getdata', 'get_data', 'setdata', 'set_data', 'inc', 'find', 'list', 'listvar', 'lock', 'unlock',
                  'timeout', 'uniq', 'randstr', 'plugin', 'call', 'ctl'] as $f) {
            $this->assertTrue(function_exists("msession_$f"), "msession_$f");
        }
    }

    public function testConnectFailsOverAndWarnsWhenNoNodeAnswers(): void
    {
        [$host, $port] = Msession\Client::parseNode(explode(',', msession_test_nodes())[0]);
        $this->assertTrue(msession_connect("127.0.0.1:" . msession_dead_port() . ",$host", $port));
        $this->assertIsInt(msession_count());
        $this->assertFalse(msession_connect('127.0.0.1', msession_dead_port()));
        $this->assertWarned('NOCONNECT');
        $this->assertIsInt(msession_count());  // the previous connection is kept
        msession_disconnect();
        $this->assertFalse(msession_count());
        $this->assertWarned('not connected');
    }

    public function testSessionsAndVariables(): void
    {
        $s = msession_test_id();
        $before = msession_count();
        $this->assertTrue(msession_create($s));
        $this->assertSame($before + 1, msession_count());
        $this->assertFalse(msession_create($s));
        $this->assertWarned('DUPSESSION');
        $this->assertTrue(msession_set($s, 'user', 'alice'));
        $this->assertTrue(msession_set($s, 'age', 42));  // ints are strings, as before
        $this->assertSame('alice', msession_get($s, 'user', ''));
        $this->assertSame('42', msession_get($s, 'age', ''));
        $this->assertSame('nobody', msession_get($s, 'absent', 'nobody'));
        $this->assertSame('', msession_get($s, 'absent'));
        $this->assertSame(['user' => 'alice', 'age' => '42'], msession_get_array($s));
        $this->assertNull(msession_set_array($s, ['a' => 1, 'b' => 'two']));
        $this->assertSame('two', msession_get($s, 'b', ''));
        $this->assertSame('43', msession_inc($s, 'age'));
        $this->assertSame('1', msession_inc($s, 'visits'));
        $this->assertContains($s, msession_find('user', 'alice'));
        $this->assertSame([], msession_find('user', 'nobody-' . $s));
        $this->assertContains($s, msession_list());
        $this->assertSame('alice', msession_listvar('user')[$s]);
        $this->assertNoWarning();
        $this->assertTrue(msession_destroy($s));
        $this->assertTrue(msession_destroy($s));  // missing: not an error
        $this->assertNoWarning();
        $this->assertFalse(msession_set($s, 'user', 'x'));
        $this->assertWarned('NOSESSION');
        $this->assertFalse(msession_get($s, 'user', ''));
        $this->assertWarned('NOSESSION');
        $this->assertFalse(msession_get_array($s));
        $this->assertWarned('NOSESSION');
        $this->assertNull(msession_set_array($s, ['a' => 'b']));
        $this->assertWarned('NOSESSION');
        $this->assertFalse(msession_inc($s, 'n'));
        $this->assertWarned('NOSESSION');
    }

    public function testCreateWithClassnameAndData(): void
    {
        $s = msession_test_id();
        $this->assertTrue(msession_create($s, 'shop', 'payload'));
        $this->assertSame('payload', msession_getdata($s));
        msession_destroy($s);
    }

    public function testData(): void
    {
        $s = msession_test_id();
        $this->assertSame('', msession_getdata($s));  // missing: empty, no warning
        $this->assertSame('', msession_get_data($s));
        $this->assertNoWarning();
        $this->assertTrue(msession_setdata($s, "blob\0with nul"));  // creates the session
        $this->assertSame("blob\0with nul", msession_getdata($s));
        $this->assertTrue(msession_set_data($s, 'other'));
        $this->assertSame('other', msession_get_data($s));
        msession_destroy($s);
        $this->assertNoWarning();
    }

    public function testLocks(): void
    {
        $s = msession_test_id();
        $key = msession_lock($s);  // a session id may be locked before it exists
        $this->assertIsInt($key);
        $this->assertNotSame(0, $key);
        $this->assertFalse(msession_unlock($s, $key + 1));
        $this->assertWarned('LOCKED');
        $this->assertSame($key, msession_unlock($s, $key));
        $this->assertFalse(msession_unlock($s, $key));
        $this->assertWarned('NOWLOCK');
    }

    public function testTimeoutAndCtl(): void
    {
        $s = msession_test_id();
        msession_create($s);
        $this->assertSame(1440, msession_timeout($s));
        $this->assertSame(600, msession_timeout($s, 600));
        $this->assertSame(600, msession_timeout($s));
        $this->assertSame(1, msession_ctl($s));
        $this->assertSame(1, msession_ctl($s, 'EXIST'));
        $this->assertSame(0, msession_ctl(msession_test_id(), 'EXIST'));
        $ttl = msession_ctl($s, 'TTL');
        $this->assertGreaterThan(590, $ttl);
        $this->assertLessThanOrEqual(600, $ttl);
        $this->assertLessThan(5, msession_ctl($s, 'AGE'));
        $now = msession_ctl($s, 'NOW');
        $this->assertEqualsWithDelta(time(), $now, 5);
        $this->assertEqualsWithDelta($now, msession_ctl($s, 'CTIME'), 5);
        $this->assertEqualsWithDelta($now, msession_ctl($s, 'TLA'), 5);
        $this->assertEqualsWithDelta($now, msession_ctl($s, 'TOUCH'), 5);
        $this->assertSame(1, msession_ctl($s, 0));
        $this->assertNoWarning();
        $this->assertFalse(msession_ctl($s, 'BOGUS'));
        $this->assertWarned('BADARG');
        $this->assertFalse(msession_timeout(msession_test_id()));
        $this->assertWarned('NOSESSION');
        msession_destroy($s);
    }

    public function testUniqAndRandstr(): void
    {
        $ids = [];
        for ($i = 0; $i < 50; $i++) {
            $id = msession_uniq(32);
            $this->assertMatchesRegularExpression('/^[a-zA-Z0-9]{32}$/', $id);
            $this->assertSame(1, msession_ctl($id, 'EXIST'));  // reserved: the session exists
            $ids[$id] = true;
        }
        $this->assertCount(50, $ids);
        $id = msession_uniq(10, 'cls', 'd');
        $this->assertSame('d', msession_getdata($id));
        $this->assertMatchesRegularExpression('/^[a-zA-Z0-9]{40}$/', msession_randstr(40));
        $this->assertNotSame(msession_randstr(40), msession_randstr(40));
        $this->assertFalse(msession_uniq(0));
        $this->assertWarned('BADARG');
        foreach (array_keys($ids) as $id) {
            msession_destroy($id);
        }
    }

    public function testPluginAndCall(): void
    {
        // the node under test loads the "stats" plugin
        $s = msession_test_id();
        msession_create($s, 'shop');
        msession_set($s, 'k', 'value');
        $this->assertMatchesRegularExpression('/^\d+$/', msession_plugin($s, 'size'));
        $info = json_decode(msession_plugin($s, 'info', ''), true);
        $this->assertSame('shop', $info['classname']);
        $stats = json_decode(msession_call('stats'), true);
        $this->assertGreaterThan(0, $stats['live']);
        $top = json_decode(msession_call('top_classes', 1), true);
        $this->assertCount(1, $top);
        $this->assertNoWarning();
        $this->assertFalse(msession_call('no_such_function'));
        $this->assertWarned('NOFN');
        $this->assertFalse(msession_plugin($s, 'no-such-escape'));
        $this->assertWarned('NOFN');
        $this->assertFalse(msession_call('f', 1, 2, 3, 4, 5));
        $this->assertWarned('at most 4');
        msession_destroy($s);
    }

    public function testTheSeedManualsCodeRunsUnchanged(): void
    {
        // The shape of code written for PHP 4.3's manual page.
        $sid = msession_uniq(32);
        msession_set($sid, "user", "bob");
        msession_set($sid, "cart", "3 items");
        $vars = msession_get_array($sid);
        $this->assertSame("bob", $vars["user"]);
        $who = msession_listvar("user");
        $this->assertSame("bob", $who[$sid]);
        $hits = msession_inc($sid, "hits");
        $this->assertSame("1", $hits);
        $key = msession_lock($sid);
        msession_set($sid, "cart", "4 items");
        msession_unlock($sid, $key);
        msession_timeout($sid, 3600);
        $this->assertSame("4 items", msession_get($sid, "cart", ""));
        msession_destroy($sid);
        $this->assertNoWarning();
    }
}
