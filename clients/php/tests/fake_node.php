<?php
// A misbehaving node for the retry tests. Usage: php fake_node.php PORTFILE CONNECTIONS [BUSY]
// Without BUSY: accepts connections, answers HELLO, reads one more request and
// closes the connection without answering it.
// With BUSY (a number): one connection; answers HELLO, then the first BUSY
// requests with ERR BUSY (with their ids: "did not run"), the later ones "PONG".
// With "shutdown": one connection; answers HELLO, then the first request of
// the next batch "PONG", then closes as a node shutting down does: a BUSY
// with a nil id (the rest did not run).
require_once __DIR__ . '/../src/autoload.php';
$server = stream_socket_server('tcp://127.0.0.1:0');
file_put_contents($argv[1], substr(strrchr(stream_socket_get_name($server, false), ':'), 1));
$shutdown = ($argv[3] ?? '') === 'shutdown';
$busy = isset($argv[3]) && !$shutdown ? (int)$argv[3] : null;
$deadline = microtime(true) + 20;
$answer = function ($c, array $msg): void {
    $body = msgpack_pack($msg);
    fwrite($c, pack('N', strlen($body)) . $body);
};
for ($i = 0; $i < (int)$argv[2] && microtime(true) < $deadline; $i++) {
    $c = @stream_socket_accept($server, 20);
    if (!$c) {
        break;
    }
    $read = function () use ($c) {
        $head = fread($c, 4);
        if (strlen($head) < 4) {
            return null;
        }
        $n = unpack('N', $head)[1];
        $body = '';
        while (strlen($body) < $n && !feof($c)) {
            $body .= fread($c, $n - strlen($body));
        }
        return msgpack_unpack($body);
    };
    $hello = $read();
    $answer($c, [$hello[0], 1, ['version' => 1, 'server' => 'fake', 'max_frame' => 4194304]]);
    if ($shutdown) {
        $req = $read();
        $answer($c, [$req[0], 1, 'PONG']);
        $answer($c, [null, 0, [17, 'node is shutting down: retry elsewhere']]);
        stream_socket_shutdown($c, STREAM_SHUT_WR);
        while (!feof($c) && fread($c, 65536) !== false) {
        }
        fclose($c);
        continue;
    }
    if ($busy === null) {
        $read();
        fclose($c);  // the request may or may not have run: the client cannot know
        continue;
    }
    while (($req = $read()) !== null) {
        $answer($c, $busy-- > 0 ? [$req[0], 0, [17, 'the farm view is changing']] : [$req[0], 1, 'PONG']);
    }
    fclose($c);
}
