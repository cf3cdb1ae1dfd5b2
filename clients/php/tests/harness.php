<?php
/**
 * The PHP client's test harness: real redis-servers on free loopback ports, a real `governor run`
 * master running the jobs (handlers in tests/app/phptasks.py), governor's own Python Client in a
 * subprocess to compare with (python_client.py), and the few assertions the tests use.
 * Nothing is mocked. run.php drives it.
 */

declare(strict_types=1);

namespace GovernorTest;

use Governor\Client;

final class Failure extends \Exception
{
}

function check(bool $condition, string $what): void
{
    if (!$condition) {
        throw new Failure($what);
    }
}

function same($expected, $actual, string $what = ''): void
{
    if ($expected !== $actual) {
        throw new Failure(($what !== '' ? "$what: " : '') . 'expected ' . show($expected) . ', got ' . show($actual));
    }
}

/** Runs $fn, which must throw a $class; returns what it threw. */
function throws(string $class, callable $fn, string $what = ''): \Throwable
{
    try {
        $fn();
    } catch (\Throwable $e) {
        if ($e instanceof $class) {
            return $e;
        }
        throw new Failure(($what !== '' ? "$what: " : '') . "expected $class, got " . get_class($e) . ': '
            . $e->getMessage());
    }
    throw new Failure(($what !== '' ? "$what: " : '') . "expected $class, nothing was thrown");
}

function show($v): string
{
    $json = json_encode($v, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION
        | JSON_PARTIAL_OUTPUT_ON_ERROR);
    return strlen($json) > 2000 ? substr($json, 0, 2000) . '...' : $json;
}

/** Polls $fn until it returns something other than null/false; fails after $timeout seconds. */
function waitFor(callable $fn, float $timeout, string $what)
{
    $deadline = microtime(true) + $timeout;
    while (true) {
        $v = $fn();
        if ($v !== null && $v !== false) {
            return $v;
        }
        if (microtime(true) > $deadline) {
            throw new Failure("timed out after {$timeout}s waiting for $what");
        }
        usleep(20000);
    }
}

function freePort(): int
{
    $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr);
    if ($server === false) {
        throw new \RuntimeException("no free port: $errstr");
    }
    $name = stream_socket_get_name($server, false);
    fclose($server);
    return (int)substr($name, strrpos($name, ':') + 1);
}

function newPrefix(): string
{
    return 'php' . bin2hex(random_bytes(5));
}

/** A redis-server child on 127.0.0.1, on a free port; stopped by its pid (proc_terminate). */
final class RedisServer
{
    /** @var int */
    public $port;
    /** @var resource */
    private $proc;

    public function __construct(string $dir, array $extra = [])
    {
        @mkdir($dir, 0777, true);
        for ($attempt = 0; ; $attempt++) {
            $this->port = freePort();
            $cmd = array_merge([getenv('REDIS_SERVER') ?: 'redis-server', '--port', (string)$this->port,
                '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', $dir], $extra);
            $this->proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', "$dir/redis.log", 'a'],
                2 => ['file', "$dir/redis.log", 'a']], $pipes);
            if (!is_resource($this->proc)) {
                throw new \RuntimeException('redis-server did not start (is it installed? apt-get install redis-server)');
            }
            $pid = proc_get_status($this->proc)['pid'];
            // ours, not another process that took the port first: the server that answers has our pid
            $ours = waitFor(function () use ($pid) {
                if (!proc_get_status($this->proc)['running']) {
                    return 'exited';
                }
                try {
                    $r = new \Redis();
                    if (!@$r->connect('127.0.0.1', $this->port, 1.0)) {
                        return null;
                    }
                    $info = $r->rawCommand('INFO', 'server');
                    $r->close();
                    return is_string($info) && preg_match('/^process_id:(\d+)/m', $info, $m) && (int)$m[1] === $pid
                        ? 'yes' : 'other';
                } catch (\RedisException $e) {
                    return strpos($e->getMessage(), 'NOAUTH') !== false ? 'yes' : null;  // up, asking for a password
                }
            }, 10, "redis-server on port {$this->port}");
            if ($ours === 'yes') {
                return;
            }
            $this->stop();
            if ($attempt >= 3) {
                throw new \RuntimeException("redis-server did not start on a free port (see $dir/redis.log)");
            }
        }
    }

    public function url(int $db = 0): string
    {
        return "redis://127.0.0.1:{$this->port}/$db";
    }

    public function connect(): \Redis
    {
        $r = new \Redis();
        $r->connect('127.0.0.1', $this->port);
        return $r;
    }

    public function stop(): void
    {
        if (is_resource($this->proc)) {
            proc_terminate($this->proc, 15);
            proc_close($this->proc);
        }
    }
}

/** One `governor run` master in its own directory, with the handler module copied beside its config. */
final class Master
{
    /** @var string */
    public $dir;
    /** @var string */
    public $records;
    /** @var resource */
    private $proc;

    public function __construct(string $dir, array $governor, string $redisUrl, string $prefix, array $queues)
    {
        $this->dir = $dir;
        $this->records = "$dir/records";
        @mkdir($this->records, 0777, true);
        chmod($dir, 0755);
        chmod($this->records, 0777);
        copy(__DIR__ . '/app/phptasks.py', "$dir/phptasks.py");
        $config = [
            'redis' => ['url' => $redisUrl, 'prefix' => $prefix],
            'app' => ['path' => ['.'], 'handlers' => ['phptasks:*']],
            'state_dir' => "$dir/state",
            'shutdown_timeout' => '10s',
            'defaults' => ['retry' => ['max' => 2, 'backoff' => '10ms', 'max_backoff' => '50ms']],
            'queues' => $queues,
        ];
        // (JSON is YAML)
        file_put_contents("$dir/governor.yaml", json_encode($config, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES));
        $env = getenv();
        $env['TEST_RECORDS'] = $this->records;
        $env['PYTHONUNBUFFERED'] = '1';
        $this->proc = proc_open(array_merge($governor, ['run', '-c', "$dir/governor.yaml"]),
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', "$dir/governor.log", 'a'],
                2 => ['file', "$dir/governor.log", 'a']], $pipes, $dir, $env);
        if (!is_resource($this->proc)) {
            throw new \RuntimeException('governor run did not start');
        }
    }

    public function assertRunning(): void
    {
        if (!proc_get_status($this->proc)['running']) {
            throw new Failure("the master exited:\n" . $this->log());
        }
    }

    public function log(): string
    {
        return (string)@file_get_contents("{$this->dir}/governor.log");
    }

    /** @return string[] the lines a handler wrote to records/$kind */
    public function lines(string $kind): array
    {
        $text = @file_get_contents("{$this->records}/$kind");
        return $text === false || $text === '' ? [] : explode("\n", rtrim($text, "\n"));
    }

    public function stop(): void
    {
        if (!is_resource($this->proc)) {
            return;
        }
        proc_terminate($this->proc, 2);  // SIGINT: drain and stop
        $deadline = microtime(true) + 15;
        while (proc_get_status($this->proc)['running'] && microtime(true) < $deadline) {
            usleep(50000);
        }
        if (proc_get_status($this->proc)['running']) {
            proc_terminate($this->proc, 9);
        }
        proc_close($this->proc);
    }
}

/** governor's Python Client (and Python itself) in a subprocess: python_client.py. */
final class Python
{
    /** @var string */
    public static $python = 'python3';

    public static function call(array $request)
    {
        $proc = proc_open([self::$python, __DIR__ . '/python_client.py'], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'],
            2 => ['pipe', 'w']], $pipes);
        fwrite($pipes[0], json_encode(self::pack($request), JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES));
        fclose($pipes[0]);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        $rc = proc_close($proc);
        if ($rc !== 0) {
            throw new Failure("python_client.py exited with $rc:\n$err");
        }
        return self::revive(json_decode($out, true, 512, JSON_THROW_ON_ERROR));
    }

    /** Floats travel as their IEEE bits (NaN, infinities and -0.0 too). */
    public static function pack($v)
    {
        if (is_float($v)) {
            return ['$f' => bin2hex(pack('E', $v))];
        }
        if ($v instanceof \stdClass) {
            return (object)self::pack(get_object_vars($v));
        }
        if (is_array($v)) {
            return array_map([self::class, 'pack'], $v);
        }
        return $v;
    }

    public static function revive($v)
    {
        if (is_array($v)) {
            if (count($v) === 1 && isset($v['$f'])) {
                return unpack('E', hex2bin($v['$f']))[1];
            }
            return array_map([self::class, 'revive'], $v);
        }
        return $v;
    }
}

/** What every test gets: the shared Redis and master, and where to make more. */
final class Env
{
    /** @var string */
    public $dir;
    /** @var string[] the command that runs governor */
    public $governor;
    /** @var RedisServer */
    public $redis;
    /** @var Master */
    public $master;
    /** @var string the master's prefix */
    public $prefix;
    /** @var RedisServer[] */
    private $extra = [];

    public function __construct(string $dir, array $governor)
    {
        $this->dir = $dir;
        $this->governor = $governor;
    }

    public function url(): string
    {
        return $this->redis->url();
    }

    /** A client of the master's prefix (the queues it serves: plain, ordered). */
    public function client(array $options = []): Client
    {
        return Client::fromUrl($this->url(), $options + ['prefix' => $this->prefix]);
    }

    /** Another redis-server of the test's own ($extra: its command-line options). */
    public function redisServer(string $name, array $extra = []): RedisServer
    {
        return $this->extra[] = new RedisServer("{$this->dir}/$name", $extra);
    }

    /** The keys under a prefix (SCAN), to tell that a refused call wrote nothing. */
    public function keysOf(string $prefix): array
    {
        $r = $this->redis->connect();
        $keys = [];
        $cursor = '0';
        do {
            [$cursor, $found] = $r->rawCommand('SCAN', $cursor, 'MATCH', "*$prefix*", 'COUNT', '1000');
            $keys = array_merge($keys, $found);
        } while ($cursor !== '0');
        sort($keys);
        return $keys;
    }

    /** Waits until the job is done (or dead), and returns its record. */
    public function waitDone(Client $c, string $id, float $timeout = 30): array
    {
        return waitFor(function () use ($c, $id) {
            $this->master->assertRunning();
            $rec = $c->job($id);
            return $rec !== null && in_array($rec['state'], ['done', 'dead'], true) ? $rec : null;
        }, $timeout, "job $id to be done");
    }

    public function stop(): void
    {
        if ($this->master) {
            $this->master->stop();
        }
        foreach ($this->extra as $server) {
            $server->stop();
        }
        if ($this->redis) {
            $this->redis->stop();
        }
    }
}
