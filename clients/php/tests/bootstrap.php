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

/** A fresh unique name for test data. */
function msession_test_id(string $prefix = 't'): string
{
    return $prefix . bin2hex(random_bytes(8));
}
