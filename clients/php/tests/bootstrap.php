<?php
require_once __DIR__ . '/../msession.php';

/** The node(s) under test, from MSESSION_TEST_NODES ("host:port[,host:port...]"). */
function msession_test_nodes(): string
{
    $nodes = getenv('MSESSION_TEST_NODES');
    if ($nodes === false || $nodes === '') {
        fwrite(STDERR, "MSESSION_TEST_NODES is not set: start a node (msession serve --plugin stats) and set it to host:port\n");
        exit(2);
    }
    return $nodes;
}

/** A loopback port nobody listens on. */
function msession_dead_port(): int
{
    $s = stream_socket_server('tcp://127.0.0.1:0');
    $port = (int)substr(strrchr(stream_socket_get_name($s, false), ':'), 1);
    fclose($s);
    return $port;
}

/**
 * Starts tests/fake_node.php (see there) for $connections connections;
 * $busy: answer that many requests BUSY, then PONG; 'shutdown': see fake_node.php.
 * @return array{0: resource, 1: string} [proc_open handle (stop it with msession_fake_stop), "127.0.0.1:port"]
 */
function msession_fake_node(int $connections, int|string|null $busy = null): array
{
    $portFile = tempnam(sys_get_temp_dir(), 'fake');
    unlink($portFile);
    $args = [PHP_BINARY, __DIR__ . '/fake_node.php', $portFile, (string)$connections];
    if ($busy !== null) {
        $args[] = (string)$busy;
    }
    $proc = proc_open($args, [], $pipes);
    $started = function () use ($portFile): bool {
        clearstatcache(true, $portFile);  // else filesize() keeps answering the 0 it saw first
        return is_file($portFile) && filesize($portFile) > 0;
    };
    try {
        // bounded, generous for a loaded machine; a fake node that died ends the wait
        msession_wait_until(fn() => $started() || !proc_get_status($proc)['running'], 30, 'the fake node to start');
        if (!$started()) {
            throw new RuntimeException('the fake node exited without starting');
        }
        $port = file_get_contents($portFile);
    } catch (RuntimeException $e) {
        msession_fake_stop($proc);
        throw $e;
    } finally {
        @unlink($portFile);
    }
    return [$proc, "127.0.0.1:$port"];
}

function msession_fake_stop($proc): void
{
    proc_terminate($proc, 9);
    proc_close($proc);
}

/** The farm under test (MSESSION_TEST_FARM: its nodes' "host:port" list); the test is skipped without. */
function msession_test_farm(): array
{
    $farm = (string)getenv('MSESSION_TEST_FARM');
    if ($farm === '') {
        throw new PHPUnit\Framework\SkippedTestError('MSESSION_TEST_FARM is not set (tests/test_php.py sets it)');
    }
    return explode(',', $farm);
}

/**
 * Polls $cond until it returns true, at most $timeout seconds; then fails
 * saying $what never happened.
 */
function msession_wait_until(callable $cond, float $timeout, string $what): void
{
    $deadline = microtime(true) + $timeout;
    while (!$cond()) {
        if (microtime(true) > $deadline) {
            throw new RuntimeException("timed out after $timeout s waiting for $what");
        }
        usleep(20000);
    }
}

/** A fresh unique name for test data. */
function msession_test_id(string $prefix = 't'): string
{
    return $prefix . bin2hex(random_bytes(8));
}

/**
 * Starts a node of our own (for the tests that stop or restart one): the
 * command MSESSION_TEST_SERVE gives (a JSON list, e.g. ["python", "-m",
 * "node.cli", "serve"], run from MSESSION_TEST_ROOT), on 127.0.0.1:$port.
 * $env: its MSESSION_* settings (MSESSION_IDLE_TIMEOUT ...). The test is
 * skipped without MSESSION_TEST_SERVE (tests/test_php.py sets it).
 * @return resource the proc_open handle (stop it with msession_test_stop)
 */
function msession_test_serve(int $port, array $env = [])
{
    $cmd = json_decode((string)getenv('MSESSION_TEST_SERVE'), true);
    if (!is_array($cmd) || !$cmd) {
        throw new PHPUnit\Framework\SkippedTestError('MSESSION_TEST_SERVE is not set (tests/test_php.py sets it)');
    }
    $full = [];
    foreach (getenv() as $k => $v) {
        if (!str_starts_with($k, 'MSESSION_')) {
            $full[$k] = $v;
        }
    }
    $cmd = array_merge($cmd, ['--bind', '127.0.0.1', '--port', (string)$port, '--gossip-port', '0']);
    $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']],
        $pipes, getenv('MSESSION_TEST_ROOT') ?: null, $env + $full);
    $deadline = microtime(true) + 20;
    while (microtime(true) < $deadline) {
        $s = @stream_socket_client("tcp://127.0.0.1:$port", $errno, $errstr, 0.5);
        if ($s) {
            fclose($s);
            return $proc;
        }
        if (!proc_get_status($proc)['running']) {
            break;
        }
        usleep(50000);
    }
    msession_test_stop($proc);
    throw new RuntimeException("the node did not start on port $port: " . implode(' ', $cmd));
}

/** Stops a node msession_test_serve() started (SIGTERM, then SIGKILL), and waits for it. */
function msession_test_stop($proc): void
{
    proc_terminate($proc, 15);
    $deadline = microtime(true) + 10;
    while (proc_get_status($proc)['running'] && microtime(true) < $deadline) {
        usleep(20000);
    }
    if (proc_get_status($proc)['running']) {
        proc_terminate($proc, 9);
    }
    proc_close($proc);
}
