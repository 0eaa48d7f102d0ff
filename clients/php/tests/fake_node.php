<?php
// A misbehaving node for the retry tests: accepts connections, answers HELLO,
// reads one more request and closes the connection without answering it.
// Usage: php fake_node.php PORTFILE CONNECTIONS
require_once __DIR__ . '/../src/autoload.php';
$server = stream_socket_server('tcp://127.0.0.1:0');
file_put_contents($argv[1], substr(strrchr(stream_socket_get_name($server, false), ':'), 1));
$deadline = microtime(true) + 20;
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
    $answer = msgpack_pack([$hello[0], 1, ['version' => 1, 'server' => 'fake', 'max_frame' => 4194304]]);
    fwrite($c, pack('N', strlen($answer)) . $answer);
    $read();
    fclose($c);  // the request may or may not have run: the client cannot know
}
