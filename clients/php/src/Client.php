<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function array_key_exists, array_slice, count, is_array, is_int, is_resource, is_string, strlen;

/**
 * A blocking client for one or more msession nodes.
 *
 *     $c = new Msession\Client('10.0.0.1:8086,10.0.0.2:8086', ['timeout' => 5]);
 *     $c->create('s1');
 *     $c->set('s1', 'user', 'alice');
 *     [$hits, $all] = $c->pipeline()->inc('s1', 'hits')->getArray('s1')->execute();
 *
 * Given several nodes, it connects to the first that answers (HELLO checks
 * the protocol version) and fails over to the next when a node fails. The
 * retry policy is protocol/client.py's (_Attempts; here afterFailure()),
 * plus BUSY answers (busyTail()):
 *  - a request the node never ran (BUSY or TIMEOUT answered before any of ours,
 *    or the connection broke before a byte went out) is sent again: to the same
 *    node twice at most on TIMEOUT/BADCONN, else to the next node;
 *  - a request that may have run is sent again, to the next node, only if every
 *    command of the batch is idempotent; CREATE, INC, UNIQ, SLOCK, SUNLOCK,
 *    PLUGIN and CALL raise MsessionException BADCONN instead;
 *  - each node is tried once per request; NOCONNECT when none answers;
 *  - an answer BUSY to a request (a farm's view was changing: it did not run;
 *    the node already retried for 3 s) is sent again twice, after 0.1 and
 *    0.3 s, for any command, when the BUSY requests end the batch (so the
 *    batch still runs in order).
 * An idle connection the node has closed is noticed before reuse (it is
 * readable) and replaced; nothing was sent on it.
 *
 * Persistent connections (option persistent, as phpredis's pconnect): the
 * connection outlives the PHP request and is reused by the next request the
 * same process (php-fpm/php -S worker) serves, with no connect and no HELLO;
 * Clients of one process talking to the same node share it (PHP keys
 * persistent sockets by address; requests never interleave on it, as PHP runs
 * one exchange at a time). Before reuse it is checked: closed by the node
 * while idle (readable: EOF or a last error) or left mid-exchange by a request
 * that died (a shutdown function closes those) means a fresh connection,
 * nothing having been sent on the old one. close() keeps a healthy persistent
 * connection open; close(true) closes it.
 *
 * Routing (option route, off by default; the session handler turns it on
 * when given several nodes): in a farm, requests naming a session, and
 * batches whose requests all name the same one, go straight to the
 * session's owner, found in the farm's ROUTES table (see Routes: fetched
 * from the nodes, cached across PHP requests for route_ttl seconds), on a
 * connection per member address (persistent if the client is); anything
 * else goes to the nodes as above. A stale table costs a forwarding hop,
 * never a wrong answer. If the owner cannot be reached, or fails during the
 * request, the request goes to the nodes as above (they forward it or answer
 * UNAVAILABLE) and the cached table is replaced by an empty one for
 * route_ttl seconds (a request that may have run there is never sent again
 * unless idempotent: BADCONN otherwise); an owner that answered that it did
 * not run the request (BUSY, TIMEOUT) only sends this request to the nodes.
 * When no node answers ROUTES either, the empty table is cached too.
 *
 * Options: timeout (seconds per request, 10; an SLOCK gets its wait on top),
 * connect_timeout (2), max_answer (bytes, 256 MiB), persistent (false),
 * route (false; null: on when the node list has several nodes), route_ttl
 * (seconds, 5).
 */
final class Client
{
    use Commands;

    /** @var list<array{0:string,1:int}> */
    public readonly array $nodes;
    public float $timeout;
    public float $connectTimeout;
    public int $maxAnswer;
    public readonly bool $persistent;
    public readonly bool $route;
    public float $routeTtl;
    /** The current node's HELLO answer (version, max_frame, ...); [] on a reused persistent connection until needed. */
    public array $serverInfo = [];

    /** @var array<int, resource> persistent sockets in the middle of an exchange (this PHP request) */
    private static array $inFlight = [];
    private static bool $shutdownGuard = false;
    /** @var resource|null the stream context of new sockets (TCP_NODELAY) */
    private static $context = null;

    /** @var resource|null */
    private $sock = null;
    private int $current = 0;
    private int $nextId = 1;
    private string $buf = '';
    private ?string $addr = null;
    /** @var array<string, array{0:resource, 1:array}> other nodes' connections: "host:port" => [socket, serverInfo] */
    private array $pool = [];
    /** @var array<string, true> owners that failed during this client's life: tried last among the nodes */
    private array $down = [];
    private ?string $routeKey = null;
    /** @var list<string> target() of each node */
    private array $targets;

    /** @param string|list<string> $nodes "host:port,host:port" or a list of "host[:port]" */
    public function __construct(string|array $nodes = '127.0.0.1:8086', array $options = [])
    {
        $this->nodes = self::parseNodes($nodes);
        $targets = [];
        foreach ($this->nodes as $node) {
            $targets[] = self::target($node);
        }
        $this->targets = $targets;
        $this->timeout = (float)($options['timeout'] ?? 10.0);
        $this->connectTimeout = (float)($options['connect_timeout'] ?? 2.0);
        $this->maxAnswer = (int)($options['max_answer'] ?? 256 * 1024 * 1024);
        $this->persistent = (bool)($options['persistent'] ?? false);
        $route = array_key_exists('route', $options) ? $options['route'] : false;  // null: on with several nodes
        $this->route = $route === null ? count($this->nodes) > 1 : (bool)$route;
        $this->routeTtl = (float)($options['route_ttl'] ?? 5.0);
        $this->nextId = random_int(1, 1 << 30);  // a shared persistent socket never sees one id twice
    }

    public function __destruct()
    {
        if ($this->sock !== null || $this->pool) {
            $this->close();
        }
    }

    /** @return list<array{0:string,1:int}> */
    public static function parseNodes(string|array $nodes): array
    {
        if (is_string($nodes)) {
            return self::parseNodes(explode(',', $nodes));
        }
        $out = [];
        foreach ($nodes as $spec) {
            if (trim((string)$spec) !== '') {
                $out[] = self::parseNode((string)$spec);
            }
        }
        if (!$out) {
            throw new \InvalidArgumentException('msession: no nodes given');
        }
        return $out;
    }

    /** "host", "host:port" or "[v6addr]:port" (a "tcp://" prefix is ignored). */
    public static function parseNode(string $spec, int $defaultPort = Protocol::DEFAULT_PORT): array
    {
        $spec = trim($spec);
        if (str_starts_with($spec, 'tcp://')) {
            $spec = substr($spec, 6);
        }
        $port = '';
        if (str_starts_with($spec, '[')) {
            [$host, $rest] = array_pad(explode(']', substr($spec, 1), 2), 2, '');
            $port = str_starts_with($rest, ':') ? substr($rest, 1) : '';
        } elseif (substr_count($spec, ':') === 1) {
            [$host, $port] = explode(':', $spec);
        } else {
            $host = $spec;
        }
        if ($host === '') {
            throw new \InvalidArgumentException("msession: no host in node address '$spec'");
        }
        if ($port !== '' && strspn($port, '0123456789') !== strlen($port)) {
            throw new \InvalidArgumentException("msession: bad port in node address '$spec'");
        }
        return [$host, $port === '' ? $defaultPort : (int)$port];
    }

    /** "host:port" as the client connects to it ("[v6]:port" for IPv6). */
    public static function target(array $node): string
    {
        [$host, $port] = $node;
        return str_contains($host, ':') ? "[$host]:$port" : "$host:$port";
    }

    /** "host:port" of the node the last request went to (or the connected one), or null. */
    public function node(): ?string
    {
        return $this->addr;
    }

    /**
     * Ends this client's use of the connection. A healthy persistent
     * connection stays open for the next request of this process, unless
     * $force.
     */
    public function close(bool $force = false): void
    {
        foreach ($this->pool as [$sock]) {
            if ((!$this->persistent || $force) && is_resource($sock)) {
                @fclose($sock);
            }
        }
        $this->pool = [];
        if ($this->persistent && !$force && $this->reusable()) {
            $this->sock = null;
            $this->addr = null;
            return;
        }
        $this->drop();
    }

    /** Closes the socket for real (a persistent one too). */
    private function drop(): void
    {
        if ($this->sock !== null) {
            if (is_resource($this->sock)) {
                unset(self::$inFlight[(int)$this->sock]);
                @fclose($this->sock);
            }
            $this->sock = null;
            $this->addr = null;
        }
        $this->buf = '';
    }

    /**
     * @internal Shutdown function: a persistent socket left in the middle of an
     * exchange (the request died: fatal error, max_execution_time) holds
     * unread answers or half a request; it must not serve the next request.
     */
    public static function closeAbandoned(): void
    {
        foreach (self::$inFlight as $sock) {
            if (is_resource($sock)) {
                @fclose($sock);
            }
        }
        self::$inFlight = [];
    }

    /** Connects now (to the first node that answers) unless connected. */
    public function connect(): void
    {
        if ($this->sock === null || $this->addr !== $this->targets[$this->current] || $this->stale()) {
            $this->open();
        }
    }

    /**
     * Makes the connection to $target the current one: the pooled one, a
     * persistent one an earlier request left, or a new one (HELLO). The
     * connection it replaces goes to the pool when healthy. False (and
     * $error) when $target does not answer.
     */
    private function attach(string $target, ?string &$error): bool
    {
        if ($this->sock !== null && $this->addr === $target && !$this->stale()) {
            return true;
        }
        $this->park();
        if (isset($this->pool[$target])) {
            [$this->sock, $this->serverInfo] = $this->pool[$target];
            unset($this->pool[$target]);
            $this->buf = '';
            $this->addr = $target;
            if (!$this->stale()) {
                return true;
            }
            $this->drop();
        }
        $sock = $this->socket($target, $errno, $errstr);
        if ($sock !== false && $this->persistent && ftell($sock) > 0) {
            // A persistent connection an earlier request used (it sent HELLO).
            $this->sock = $sock;
            $this->buf = '';
            if (!$this->stale()) {
                $this->serverInfo = [];  // asked for only if a request needs max_frame
                $this->addr = $target;
                return true;
            }
            $this->drop();  // closed by the node while idle, or abandoned: nothing was sent on it
            $sock = $this->socket($target, $errno, $errstr);
        }
        if ($sock === false) {
            $error = "$target: " . ($errstr ?: "error $errno");
            return false;
        }
        $this->sock = $sock;
        $this->buf = '';
        try {
            [$hello] = $this->roundTrip([[Protocol::HELLO, [Protocol::VERSION]]], $this->connectTimeout);
        } catch (ConnectionFailed | NotExecuted $e) {
            $this->drop();
            $error = "$target: " . $e->getMessage();
            return false;
        }
        $this->serverInfo = self::result($hello, null);
        $this->addr = $target;
        return true;
    }

    /** Puts the current connection in the pool if it is fit for another request, else closes it. */
    private function park(): void
    {
        if ($this->sock === null) {
            return;
        }
        if ($this->addr !== null && $this->reusable()) {
            $this->pool[$this->addr] = [$this->sock, $this->serverInfo];
            $this->sock = null;
            $this->addr = null;
            return;
        }
        $this->drop();
    }

    public function pipeline(): Pipeline
    {
        return new Pipeline($this);
    }

    protected function call(int $cmd, array $args, ?callable $convert = null): mixed
    {
        [$answer] = $this->exchange([[$cmd, $args]]);
        return self::result($answer, $convert);
    }

    /** @internal The MsessionException of an error answer [0, [code, message]]. */
    public static function error(array $answer): MsessionException
    {
        $err = is_array($answer[1]) ? $answer[1] : [15, 'bad error answer'];
        return MsessionException::fromCode((int)$err[0], (string)($err[1] ?? ''));
    }

    /** @internal [status, result] => converted result, or throws the error. */
    public static function result(array $answer, ?callable $convert): mixed
    {
        if ($answer[0] !== 1) {
            throw self::error($answer);
        }
        return $convert ? $convert($answer[1]) : $answer[1];
    }

    /**
     * Sends a batch of [cmd, args] requests in one write and returns their
     * answers as [status, result] pairs, with failover and retries as above.
     * @internal used by Pipeline
     */
    public function exchange(array $requests): array
    {
        return $requests ? $this->busyRetried($requests, $this->send($requests)) : [];
    }

    /** The batch's answers, after sending again the BUSY requests that end it (see the class comment). */
    private function busyRetried(array $requests, array $answers): array
    {
        for ($delay = 100000; $delay <= 300000; $delay += 200000) {
            $first = self::busyTail($answers);
            if ($first === null) {
                break;
            }
            usleep($delay);
            array_splice($answers, $first, count($answers) - $first, $this->send(array_slice($requests, $first)));
        }
        return $answers;
    }

    /**
     * Where the BUSY answers that end a batch start, if they may be sent again,
     * else null. BUSY answers to requests (not a connection's BUSY) did not
     * run; they are sent again only when they end the batch and no request
     * before them was BUSY, so that what runs still runs in order.
     */
    private static function busyTail(array $answers): ?int
    {
        $n = count($answers);
        if ($n === 0 || $answers[$n - 1][0] === 1 || !self::isBusy($answers[$n - 1])) {
            return null;  // the common case: the batch does not end with BUSY answers
        }
        $first = $n - 1;
        while ($first > 0 && self::isBusy($answers[$first - 1])) {
            $first--;
        }
        for ($i = 0; $i < $first; $i++) {
            if (self::isBusy($answers[$i])) {
                return null;  // a BUSY request before one that ran: the caller sees BUSY
            }
        }
        return $first;
    }

    /** Every command of the batch may be sent twice (see Protocol::NOT_IDEMPOTENT). */
    private static function idempotent(array $requests): bool
    {
        foreach ($requests as $request) {
            if (isset(Protocol::NOT_IDEMPOTENT[$request[0]])) {
                return false;
            }
        }
        return true;
    }

    /** Seconds the batch's SLOCKs may wait for their locks, on top of the timeout. */
    private static function lockWait(array $requests): float
    {
        $wait = 0.0;
        foreach ($requests as $request) {
            if ($request[0] === Protocol::SLOCK) {
                $wait = max($wait, isset($request[1][1]) ? $request[1][1] / 1000.0 : 300.0);
            }
        }
        return $wait;
    }

    private static function isBusy(array $answer): bool
    {
        return $answer[0] !== 1 && is_array($answer[1]) && ($answer[1][0] ?? null) === Protocol::ERR_BUSY;
    }

    /**
     * A connection-level error answer $err (nil id) came after $answers of a
     * batch of $expected requests (no I/O): null for BADHDR (the connection
     * goes on); for a BUSY after some answers, the batch's answers with a
     * BUSY for each request left (a node shutting down answers what it ran,
     * then BUSY: the rest did not run, and busyRetried() sends it again);
     * else it throws: NotExecuted for BUSY or TIMEOUT before any answer
     * (answers come in order: none of ours ran), $err otherwise.
     * @internal public for its unit test
     */
    public static function closedWith(MsessionException $err, array $answers, int $expected): ?array
    {
        $name = $err->getErrorName();
        if ($name === 'BADHDR') {
            return null;
        }
        if (!$answers && ($name === 'BUSY' || $name === 'TIMEOUT')) {
            throw new NotExecuted($err);
        }
        if ($name !== 'BUSY') {
            throw $err;
        }
        for ($i = 0; $i < $expected; $i++) {
            $answers[$i] ??= [0, [Protocol::ERR_BUSY, $err->getDetail()]];
        }
        ksort($answers);
        return $answers;
    }

    /** One exchange of the batch: to the session's owner when routing, else (or if that fails) to the nodes. */
    private function send(array $requests): array
    {
        $timeout = $this->timeout + self::lockWait($requests);
        $owner = $this->route ? $this->ownerOf($requests) : null;
        if ($owner !== null) {
            $error = null;
            if ($this->attach($owner, $error)) {
                try {
                    $answers = $this->roundTrip($requests, $timeout);
                    if ($this->sock === null) {
                        $this->ownerDown($owner);  // it closed with BUSY after some answers: it stops
                    }
                    return $answers;
                } catch (NotExecuted | ConnectionFailed | MsessionException $e) {
                    $this->drop();
                    if ($e instanceof ConnectionFailed) {
                        $this->ownerDown($owner);  // (not when it answered that it did not run the batch)
                    }
                    // The owner is not tried again: the nodes get the batch, unless it may have run
                    // and is not idempotent, or it was a connection-level error answer.
                    self::mayGoElsewhere($e, $requests);
                }
            } else {
                $this->ownerDown($owner);
            }
        }
        return $this->viaNodes($requests, $timeout);
    }

    /** The batch sent to the nodes of the list, with failover (see the class comment). */
    private function viaNodes(array $requests, float $timeout): array
    {
        $nodesLeft = count($this->nodes);
        $sameNodeRetries = 2;
        while (true) {
            $this->connect();
            try {
                $answers = $this->roundTrip($requests, $timeout);
                if ($this->sock === null) {
                    $this->failedOver();  // it closed with BUSY after some answers: the rest goes to the next node first
                }
                return $answers;
            } catch (NotExecuted | ConnectionFailed | MsessionException $e) {
                $this->drop();  // (a connection-level error answer too: the node closes the connection)
                if (!self::afterFailure($e, $requests, $nodesLeft, $sameNodeRetries)) {
                    $this->failedOver();
                }
            }
        }
    }

    /**
     * After an exchange of $requests failed with $e, what next: true, the
     * same node again; false, the next node; or it throws the error for the
     * caller. The failover decision of the nodes path, as protocol/client.py's
     * _Attempts.failed(); no I/O, and called only when an exchange failed.
     *  - NotExecuted (the node ran none of the batch): TIMEOUT or BADCONN (it
     *    closed the connection before our bytes went out) goes to the same
     *    node again while $sameNodeRetries lasts; otherwise to the next node,
     *    and the node's error when none is left;
     *  - otherwise mayGoElsewhere() decides whether it may go to another
     *    node at all; then to the next node, BADCONN when none is left.
     * $nodesLeft counts the nodes still to try, this one included: moving
     * on uses one.
     * @internal public for its unit test
     */
    public static function afterFailure(\Exception $e, array $requests, int &$nodesLeft, int &$sameNodeRetries): bool
    {
        if ($e instanceof NotExecuted) {
            $name = $e->error->getErrorName();
            if (($name === 'TIMEOUT' || $name === 'BADCONN') && $sameNodeRetries > 0) {
                $sameNodeRetries--;
                return true;
            }
            if (--$nodesLeft <= 0) {
                throw $e->error;
            }
            return false;
        }
        self::mayGoElsewhere($e, $requests);
        if (--$nodesLeft <= 0) {
            throw new MsessionException('BADCONN', 'request failed on every node: ' . $e->getMessage());
        }
        return false;
    }

    /**
     * Whether $requests, after an exchange failed with $e, may be sent to
     * another node (the rule of both paths, owner and nodes; no counting, no
     * I/O): it returns if so, else throws the error for the caller.
     *  - NotExecuted (the node ran none of the batch): it may;
     *  - ConnectionFailed (the batch may have run): only if every command is
     *    idempotent, else BADCONN;
     *  - MsessionException (a connection-level error answer): thrown as is.
     * @internal public for its unit test
     */
    public static function mayGoElsewhere(\Exception $e, array $requests): void
    {
        if ($e instanceof NotExecuted) {
            return;
        }
        if (!$e instanceof ConnectionFailed) {
            throw $e;
        }
        if (!self::idempotent($requests)) {
            throw new MsessionException('BADCONN', 'node failed during a request that may have been applied: ' . $e->getMessage());
        }
    }

    /**
     * The owner's "host:port" when every request of the batch names one and the
     * same session and the farm's table knows its owner; else null.
     */
    private function ownerOf(array $requests): ?string
    {
        $sid = null;
        foreach ($requests as [$cmd, $args]) {
            $s = $args[0] ?? null;
            if (!isset(Protocol::KEYED[$cmd]) || (!is_string($s) && !is_int($s)) || ($sid !== null && (string)$s !== $sid)) {
                return null;
            }
            $sid = (string)$s;
        }
        if ($sid === null || $sid === '') {
            return null;
        }
        return $this->routes()?->owner($sid);
    }

    /** The farm's table: cached, else asked of the nodes (ROUTES) and cached for route_ttl seconds. */
    public function routes(): ?Routes
    {
        $this->routeKey ??= Routes::key($this->targets);
        $table = Routes::cached($this->routeKey);
        if ($table !== null) {
            return $table;
        }
        try {
            [$answer] = $this->viaNodes([[Protocol::ROUTES, []]], $this->timeout);
            $table = Routes::fromAnswer(self::result($answer, null), $this->routeTtl);
        } catch (MsessionException $e) {
            // A node without ROUTES (UNKNOWN, BADARG), or no node answering: no routing for
            // route_ttl seconds, rather than asking again (and waiting again) every request.
            $table = Routes::fromAnswer(null, $this->routeTtl);
        }
        Routes::store($this->routeKey, $table);
        return $table;
    }

    /** The owner did not answer: it goes last among the nodes, and the table routes nothing for route_ttl s. */
    private function ownerDown(string $owner): void
    {
        $this->down[$owner] = true;
        $this->routeKey ??= Routes::key($this->targets);
        Routes::store($this->routeKey, Routes::fromAnswer(null, $this->routeTtl));
    }

    private function failedOver(): void
    {
        $this->current = ($this->current + 1) % count($this->nodes);
    }

    private function open(): void
    {
        $errors = [];
        $n = count($this->nodes);
        $order = [];
        for ($i = 0; $i < $n; $i++) {
            $index = ($this->current + $i) % $n;
            $order[isset($this->down[$this->targets[$index]]) ? $n + $i : $i] = $index;
        }
        ksort($order);
        foreach ($order as $index) {
            $error = null;
            if ($this->attach($this->targets[$index], $error)) {
                $this->current = $index;
                return;
            }
            $errors[] = $error;
        }
        throw new MsessionException('NOCONNECT', 'no node answered (' . implode('; ', $errors) . ')');
    }

    /** @return resource|false a connected non-blocking socket (persistent: maybe an earlier request's) */
    private function socket(string $target, ?int &$errno, ?string &$errstr)
    {
        self::$context ??= stream_context_create(['socket' => ['tcp_nodelay' => true]]);
        $flags = $this->persistent ? STREAM_CLIENT_CONNECT | STREAM_CLIENT_PERSISTENT : STREAM_CLIENT_CONNECT;
        $sock = @stream_socket_client("tcp://$target", $errno, $errstr, $this->connectTimeout, $flags, self::$context);
        if ($sock !== false && ftell($sock) === 0) {
            stream_set_blocking($sock, false);  // a reused persistent socket (it sent something) is non-blocking already
        }
        return $sock;
    }

    /**
     * The socket is open and between exchanges: no unread answer in the
     * buffer, not left mid-exchange (see closeAbandoned()).
     */
    private function reusable(): bool
    {
        return $this->buf === '' && is_resource($this->sock) && !isset(self::$inFlight[(int)$this->sock]);
    }

    /**
     * Not fit for a new request: closed (by another Client sharing the
     * persistent socket), left mid-exchange, or readable while idle (a node
     * closes idle connections: EOF or a last error).
     */
    private function stale(): bool
    {
        if (!$this->reusable()) {
            return true;
        }
        $r = [$this->sock];
        $w = $e = null;
        return @stream_select($r, $w, $e, 0) !== 0;
    }

    /**
     * Writes the requests while reading answers (a node stops reading a
     * connection whose answers pile up unread), until each has its answer.
     */
    private function roundTrip(array $requests, float $timeout): array
    {
        $expected = count($requests);
        $id = $first = $this->nextId;  // the batch's ids: $first, $first + 1, ... reserved before
        $this->nextId += $expected;    // checkSize() may send a HELLO with an id of its own
        $out = '';
        foreach ($requests as [$cmd, $args]) {
            $frame = Protocol::request($id++, $cmd, $args);
            if (strlen($frame) > 1028 && strlen($frame) - 4 > (int)($this->serverInfo['max_frame'] ?? Protocol::DEFAULT_MAX_FRAME)) {
                $this->checkSize($frame);  // (no node has a max_frame below 1 KiB)
            }
            $out .= $frame;
        }
        $sock = $this->sock;
        $this->inFlight($sock);
        $answers = [];
        $total = strlen($out);
        $deadline = microtime(true) + $timeout;
        // The batch usually fits the socket's send buffer: write it at once, no select first.
        $sent = @fwrite($sock, $out);
        if ($sent === false || ($sent === 0 && feof($sock))) {
            throw new NotExecuted(new MsessionException('BADCONN', 'connection closed before the request was sent'));
        }
        $buf = $this->buf;  // (callers drop the connection, and so the buffer, on any exception)
        while (count($answers) < $expected) {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                throw new ConnectionFailed(sprintf('no answer within %g s', $timeout));
            }
            $r = [$sock];
            $w = $sent < $total ? [$sock] : null;
            $e = null;
            if (@stream_select($r, $w, $e, (int)$left, (int)(($left - (int)$left) * 1e6)) === false) {
                throw new ConnectionFailed('select failed');
            }
            if ($w) {
                $k = @fwrite($sock, $sent === 0 ? $out : substr($out, $sent));
                if ($k === false || ($k === 0 && feof($sock))) {
                    if ($sent === 0) {
                        throw new NotExecuted(new MsessionException('BADCONN', 'connection closed before the request was sent'));
                    }
                    throw new ConnectionFailed('connection closed while sending');
                }
                $sent += $k;
            }
            if (!$r) {
                continue;
            }
            $chunk = @fread($sock, 262144);
            if ($chunk === false || ($chunk === '' && feof($sock))) {
                throw new ConnectionFailed('connection closed by the node');
            }
            // Every complete frame in the buffer: [id, status, result].
            $buf .= $chunk;
            $pos = 0;
            $len = strlen($buf);
            while ($len - $pos >= 4) {
                $size = unpack('N', $buf, $pos)[1];
                if ($size > $this->maxAnswer) {
                    throw new ConnectionFailed("answer of $size bytes exceeds max_answer");
                }
                if ($len - $pos - 4 < $size) {
                    break;
                }
                $msg = @msgpack_unpack(substr($buf, $pos + 4, $size));
                $pos += 4 + $size;
                if (!is_array($msg) || count($msg) !== 3) {
                    throw new ConnectionFailed('malformed answer');
                }
                [$mid, $status, $result] = $msg;
                if (is_int($mid)) {
                    $i = $mid - $first;
                    if ($i >= 0 && $i < $expected) {
                        // ext-msgpack decodes an empty map as stdClass: maps are arrays here
                        $answers[$i] = [$status, $result instanceof \stdClass ? (array)$result : $result];
                    }
                } elseif ($mid === null && $status === 0) {
                    $err = MsessionException::fromCode((int)($result[0] ?? 15), (string)($result[1] ?? ''));
                    $closed = self::closedWith($err, $answers, $expected);
                    if ($closed === null) {
                        continue;  // BADHDR: the connection goes on
                    }
                    $this->drop();  // the node closed it: callers see no socket and look elsewhere first
                    return $closed;
                }
            }
            if ($pos > 0) {
                $buf = (string)substr($buf, $pos);
            }
        }
        $this->buf = $buf;  // a frame beyond our answers (there should be none) makes it unfit for reuse
        if ($this->persistent) {
            unset(self::$inFlight[(int)$sock]);
        }
        ksort($answers);
        return $answers;
    }

    /** A persistent socket is unfit for anyone else until every answer is in (see closeAbandoned()). */
    private function inFlight($sock): void
    {
        if ($this->persistent) {
            self::$inFlight[(int)$sock] = $sock;
            if (!self::$shutdownGuard) {
                self::$shutdownGuard = true;
                register_shutdown_function([self::class, 'closeAbandoned']);
            }
        }
    }

    /** BADLEN if $frame exceeds the node's max_frame (asked of a reused persistent connection first). */
    private function checkSize(string $frame): void
    {
        if (!$this->serverInfo) {
            // A reused persistent connection: ask the node its max_frame (nothing of this batch went out yet).
            $this->serverInfo = self::result($this->roundTrip([[Protocol::HELLO, [Protocol::VERSION]]], $this->connectTimeout)[0], null);
        }
        $maxFrame = (int)($this->serverInfo['max_frame'] ?? Protocol::DEFAULT_MAX_FRAME);
        if (strlen($frame) - 4 > $maxFrame) {
            throw new MsessionException('BADLEN', sprintf('request of %d bytes exceeds the node\'s max_frame of %d', strlen($frame) - 4, $maxFrame));
        }
    }
}

/** @internal The node refused or closed the connection before running any of our requests. */
final class NotExecuted extends \Exception
{
    public function __construct(public readonly MsessionException $error)
    {
        parent::__construct($error->getMessage());
    }
}

/** @internal The connection failed (I/O error, EOF, timeout, garbage) during an exchange. */
final class ConnectionFailed extends \Exception
{
}
