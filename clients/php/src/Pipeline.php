<?php
declare(strict_types=1);

namespace Msession;

// Compiled to opcodes (not namespace-resolved calls) when imported.
use function count;

/**
 * Queues commands and sends them in one write:
 *     [$n, $all] = $client->pipeline()->inc($s, 'n')->getArray($s)->execute();
 * The node runs them in order. With $throw = false, execute() returns a
 * MsessionException in place of each failed command's result.
 */
final class Pipeline
{
    use Commands;

    /** @var list<array{0:int,1:array,2:?callable}> */
    private array $queued = [];

    public function __construct(private Client $client)
    {
    }

    protected function call(int $cmd, array $args, ?callable $convert = null): mixed
    {
        $this->queued[] = [$cmd, $args, $convert];
        return $this;
    }

    public function execute(bool $throw = true): array
    {
        $queued = $this->queued;
        $this->queued = [];
        if (!$queued) {
            return [];
        }
        $answers = $this->client->exchange($queued);  // [cmd, args, convert]: exchange() reads [cmd, args]
        $out = [];
        foreach ($answers as $i => $answer) {
            if ($answer[0] === 1) {
                $out[] = $queued[$i][2] ? $queued[$i][2]($answer[1]) : $answer[1];
                continue;
            }
            $e = Client::error($answer);
            if ($throw) {
                throw $e;
            }
            $out[] = $e;
        }
        return $out;
    }
}
