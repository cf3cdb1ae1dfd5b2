<?php
/**
 * governor's producer client for PHP: enqueue jobs for a governor fleet and read their records,
 * over the phpredis extension (Debian's php-redis), with the same validation and the same error
 * messages as the Python Client (governor/protocol/client.py).
 *
 *     require_once "clients/php/src/Client.php";
 *     $c = Governor\Client::fromUrl("redis://127.0.0.1:6379/0", ["prefix" => "governor"]);
 *     $id = $c->enqueue("email", "myapp.tasks:send", ["args" => ["ada@example.com"], "priority" => 10,
 *                       "delay" => "30s", "timeout" => "2m", "maxRetries" => 5, "jobId" => "x1"]);
 *     $ids = $c->enqueueMany("email", [["handler" => "myapp.tasks:send", "args" => [1]]]);
 *     $rec = $c->job($id);  $n = $c->counts("email");
 *
 * It speaks governor's wire API (docs/protocol.md): the functions of the Redis function library
 * governor_v1, called with FCALL. A governor master loads that library at its start; this client
 * cannot (the library is built from the Python package), so it needs Redis 7 or later and a
 * master that has started on that Redis once. Invalid input throws InvalidArgumentException with
 * the Python Client's message and writes nothing; what Redis refuses throws Governor\ServerError.
 *
 * One file, no dependencies beyond ext-redis and ext-json; PHP 7.4 or later.
 */

declare(strict_types=1);

namespace Governor;

/** Redis refused a call: the library is missing, the Redis is older than 7, or a function failed. */
class ServerError extends \RuntimeException
{
}

/**
 * The jobs are queued on the primary, but fewer replicas than asked for (the "wait" option)
 * confirmed them in time: a failover now could lose them. Re-sending the same jobs with their own
 * ids is safe (an existing id is not queued twice).
 */
class NotReplicated extends \RuntimeException
{
    /** @var int */
    public $acked;
    /** @var int */
    public $wanted;
    /** @var string[] */
    public $ids;

    public function __construct(string $what, int $acked, int $wanted, int $timeoutMs, array $ids = [])
    {
        parent::__construct("$what, but only $acked of $wanted replica(s) confirmed it within {$timeoutMs}ms: "
            . "a failover now could lose it");
        $this->acked = $acked;
        $this->wanted = $wanted;
        $this->ids = $ids;
    }
}

final class Client
{
    public const PROTOCOL = 1;
    /** The function library this client calls (its name carries the wire protocol's version). */
    public const LIBRARY = 'governor_v1';
    public const DEFAULT_PRIORITY = 50;
    public const MAX_PRIORITY = 100;
    public const MAX_RETRIES = 1000000;
    public const MAX_DELAY = 3650 * 86400.0;
    public const MAX_TIMEOUT = 365 * 86400.0;
    public const DEFAULT_MAX_PAYLOAD = 1048576;
    public const MAX_PARTITIONS = 1024;
    public const JOB_ID_RULE = '1-200 printable ASCII characters without spaces (letters, digits, punctuation)';
    public const QUEUE_NAME_RULE = "queue names are 1-64 letters, digits or _.- (no ':', which would name a partition)";

    private const BULK_CHUNK = 1000;
    private const MAX_QUEUES_READ = 1000;
    private const MAX_NAME_BYTES = 256;
    private const MAX_REGISTRY_BYTES = 1 << 20;
    private const JOB_FIELDS = ['handler', 'args', 'kwargs', 'priority', 'delay', 'timeout', 'maxRetries', 'jobId',
        'unique', 'key'];
    private const OPTIONS = ['prefix', 'maxPayload', 'wait', 'partitions'];
    private const URL_OPTIONS = ['connectTimeout', 'readTimeout', 'tls'];
    private const TIME_FIELDS = ['enqueued_at', 'started_at', 'finished_at', 'due_at'];
    private const STATES = ['waiting', 'delayed', 'active', 'dead', 'done'];

    /** @var \Redis */
    private $redis;
    /** @var string */
    private $prefix;
    /** @var int */
    private $maxPayload;
    /** @var array{0: int, 1: float} */
    private $wait;
    /** @var array<string, true> queues registered in <prefix>:queues by this client */
    private $registered = [];
    /** @var array<string, int> queue -> its partition count, as Redis holds it (it never changes) */
    private $partitionCounts = [];
    /** @var array<string, int> queue -> the partition count this client was told (option "partitions") */
    private $told = [];

    /**
     * @param \Redis $redis a connected phpredis client (its OPT_PREFIX and serializer do not apply:
     *     every command goes as rawCommand)
     * @param array $options "prefix" (default "governor"), "maxPayload" (bytes, default 1 MiB),
     *     "wait" ([replicas, timeout seconds]: every enqueue waits for them, else NotReplicated),
     *     "partitions" (queue => its partition count, as the config's partitions: says; registered
     *     as a master would, so keyed jobs can be queued before any master started the queue)
     */
    public function __construct(\Redis $redis, array $options = [])
    {
        self::checkOptions($options, self::OPTIONS);
        $this->redis = $redis;
        $prefix = $options['prefix'] ?? 'governor';
        if (!is_string($prefix) || $prefix === '') {
            throw new \InvalidArgumentException('prefix must be a non-empty string, got ' . PyFormat::repr($prefix));
        }
        $this->prefix = $prefix;
        $max = $options['maxPayload'] ?? self::DEFAULT_MAX_PAYLOAD;
        if (!is_int($max) || $max < 1) {
            throw new \InvalidArgumentException('maxPayload must be a positive integer, got ' . PyFormat::repr($max));
        }
        $this->maxPayload = $max;
        $wait = $options['wait'] ?? [0, 0.0];
        if (!is_array($wait) || count($wait) !== 2 || !is_int($wait[0] ?? null) || $wait[0] < 0
            || !(is_int($wait[1] ?? null) || is_float($wait[1] ?? null)) || !($wait[1] >= 0)) {
            throw new \InvalidArgumentException('wait must be [replicas, timeout seconds], got ' . PyFormat::repr($wait));
        }
        $this->wait = [$wait[0], (float)$wait[1]];
        foreach ($options['partitions'] ?? [] as $queue => $n) {
            $queue = (string)$queue;
            self::checkQueueName($queue);
            if (!is_int($n) || $n < 1 || $n > self::MAX_PARTITIONS) {
                throw new \InvalidArgumentException('the partition count of queue ' . PyFormat::repr($queue)
                    . ' must be an integer from 1 to ' . self::MAX_PARTITIONS . ', got ' . PyFormat::repr($n));
            }
            $this->told[$queue] = $n;
        }
    }

    /**
     * A client on a new connection: redis://[[user]:password@]host[:port][/db], rediss://... (TLS)
     * or unix://[[user]:password@]/path/to/socket[?db=N]. Besides the constructor's options:
     * "connectTimeout" and "readTimeout" (seconds), "tls" (the stream context's ssl options for
     * rediss://, e.g. ["cafile" => "/etc/ssl/ca.pem"]).
     */
    public static function fromUrl(string $url, array $options = []): self
    {
        self::checkOptions($options, array_merge(self::OPTIONS, self::URL_OPTIONS));
        if (preg_match('#\Aunix://(?:([^@/]*)@)?(/[^?]*)(?:\?(.*))?\z#is', $url, $m)) {  // (parse_url refuses unix:///)
            $parts = ['scheme' => 'unix', 'path' => rawurldecode($m[2]), 'query' => $m[3] ?? ''];
            if (($m[1] ?? '') !== '') {
                $auth = explode(':', $m[1], 2);
                $parts['user'] = $auth[0];
                if (isset($auth[1])) {
                    $parts['pass'] = $auth[1];
                }
            }
        } else {
            $parts = parse_url($url);
        }
        $scheme = is_array($parts) ? strtolower($parts['scheme'] ?? '') : '';
        if (!in_array($scheme, ['redis', 'rediss', 'unix'], true)) {
            throw new \InvalidArgumentException("a Redis URL is redis://, rediss:// or unix://, got " . PyFormat::repr($url));
        }
        $query = [];
        parse_str($parts['query'] ?? '', $query);
        $db = $query['db'] ?? null;
        if ($scheme === 'unix') {
            $host = $parts['path'] ?? '';
            $port = 0;
        } else {
            $host = trim($parts['host'] ?? '127.0.0.1', '[]');  // (an IPv6 address without its brackets)
            $port = $parts['port'] ?? 6379;
            $path = trim($parts['path'] ?? '', '/');
            if ($path !== '') {
                $db = $path;
            }
            if ($scheme === 'rediss') {
                $host = 'tls://' . $host;
            }
        }
        if ($db !== null && (!is_string($db) || !ctype_digit($db))) {
            throw new \InvalidArgumentException('the database in a Redis URL is a number, got ' . PyFormat::repr($db));
        }
        $redis = new \Redis();
        $args = [$host, (int)$port, (float)($options['connectTimeout'] ?? 0), null, 0, (float)($options['readTimeout'] ?? 0)];
        if ($scheme === 'rediss') {
            $args[] = ['stream' => $options['tls'] ?? []];  // (phpredis 5.3 and later)
        }
        $ok = $redis->connect(...$args);
        if (!$ok) {
            throw new ServerError("cannot connect to $host" . ($port ? ":$port" : ''));
        }
        $password = isset($parts['pass']) ? rawurldecode($parts['pass']) : null;
        if ($password !== null && $password !== '') {
            $user = isset($parts['user']) ? rawurldecode($parts['user']) : '';
            if (!$redis->auth($user !== '' ? [$user, $password] : $password)) {
                throw new ServerError('Redis refused the password' . ($user !== '' ? " of user $user" : '') . ': '
                    . $redis->getLastError());
            }
        }
        if ($db !== null && (int)$db !== 0 && !$redis->select((int)$db)) {
            throw new ServerError("Redis refused database $db: " . $redis->getLastError());
        }
        return new self($redis, array_diff_key($options, array_flip(self::URL_OPTIONS)));
    }

    public function redis(): \Redis
    {
        return $this->redis;
    }

    public function prefix(): string
    {
        return $this->prefix;
    }

    public function close(): void
    {
        $this->redis->close();
    }

    /**
     * Queues one job and returns its id; an existing jobId is not queued twice.
     *
     * @param string $queue
     * @param string $handler "module:function"
     * @param array $options "args" (a list), "kwargs" (an array of name => value), "priority"
     *     (0-100, lower runs first; default 50), "delay" and "timeout" (seconds, or "30s", "2m",
     *     "250ms"...), "maxRetries", "jobId" (1-200 printable ASCII characters without spaces),
     *     "unique" (while a job of this queue holding that key is waiting, delayed or active,
     *     nothing is queued and that job's id is returned), "key" (the ordering key on a
     *     partitioned queue: jobs with the same key run one at a time, in enqueue order)
     */
    public function enqueue($queue, $handler, array $options = []): string
    {
        if (array_key_exists('handler', $options)) {
            throw new \InvalidArgumentException("unknown job field(s): handler (enqueue's second argument is the handler)");
        }
        return $this->enqueueMany($queue, [['handler' => $handler] + $options])[0];
    }

    /**
     * Queues many jobs at once, all or none (one function call per 1,000 jobs); returns, per job, the id of the job that
     * holds it: its own, or, when its unique key is held (by a live job, or by an earlier job of
     * this batch), the holder's, and that job is not queued. Each job is an array with "handler"
     * and optionally the options of enqueue(). Every job is validated before anything is sent, so
     * a bad one throws InvalidArgumentException naming it and writes nothing. Over 1,000 jobs go
     * as several function calls in one MULTI/EXEC.
     *
     * @return string[]
     */
    public function enqueueMany($queue, iterable $jobs): array
    {
        self::checkQueueName($queue);
        $prepared = [];
        $i = 0;
        foreach ($jobs as $spec) {
            try {
                $prepared[] = $this->prepare($queue, $spec);
            } catch (\InvalidArgumentException $e) {
                throw new \InvalidArgumentException($i ? "job $i: " . $e->getMessage() : $e->getMessage());
            }
            $i++;
        }
        if (!$prepared) {
            return [];
        }
        $this->register($queue);
        $this->registerPartitions($queue);
        $keyed = false;
        foreach ($prepared as $p) {
            $keyed = $keyed || $p[4] !== null;
        }
        if ($keyed) {
            $replies = $this->enqueueKeyed($queue, $prepared);
        } else {
            $calls = [];
            foreach (array_chunk($prepared, self::BULK_CHUNK) as $chunk) {
                $calls[] = $this->enqueueCall($this->tag($queue), $chunk);
            }
            try {
                $replies = array_merge(...(count($calls) > 1 ? $this->transaction($calls) : $this->run($calls)));
            } catch (ServerError $e) {
                if (strpos($e->getMessage(), 'the queue is partitioned') === false) {
                    throw $e;
                }
                throw new \InvalidArgumentException('queue ' . PyFormat::repr($queue) . ' is partitioned: every job '
                    . 'needs a key (enqueue(..., key=...), or --key)');
            }
        }
        // 1 created, 0 the id existed, or the id of the job that holds the unique key
        $out = [];
        foreach ($prepared as $n => $p) {
            $out[] = is_string($replies[$n]) ? $replies[$n] : $p[0];
        }
        [$replicas, $timeout] = $this->wait;
        if ($replicas > 0) {
            $timeoutMs = max(1, (int)($timeout * 1000));
            $acked = (int)$this->one(['WAIT', $replicas, $timeoutMs]);
            if ($acked < $replicas) {
                throw new NotReplicated(count($out) . ' job(s) queued on the primary', $acked, $replicas, $timeoutMs,
                    $out);
            }
        }
        return $out;
    }

    /**
     * The job's record (state, attempts, result, errors, args, kwargs, times in seconds...), as
     * Python's Client.job returns it, or null if unknown or expired. Without $queue, every queue
     * of the registry is looked in.
     */
    public function job(string $jobId, ?string $queue = null): ?array
    {
        $queues = ($queue !== null && $queue !== '') ? [$queue] : $this->queues();
        $this->knowPartitions($queues);
        $lanes = [];
        $commands = [];
        foreach ($queues as $q) {
            foreach ($this->lanes($q) as $tag) {
                $lanes[] = $q;
                $commands[] = ['HGET', "$tag:meta", $jobId];
                $commands[] = ['HGET', "$tag:data", $jobId];
            }
        }
        if (!$commands) {
            return null;
        }
        $replies = $this->pipeline($commands);
        foreach ($lanes as $n => $q) {
            $meta = $replies[2 * $n];
            if (is_string($meta)) {
                $payload = $replies[2 * $n + 1];
                return $this->record($q, $jobId, $meta, is_string($payload) ? $payload : null);
            }
        }
        return null;
    }

    /**
     * How many jobs are in each state (a partitioned queue's summed over its partitions; waiting
     * includes jobs queued behind their key's head), "paused", and the lifetime counters; as
     * Python's Client.counts: waiting, delayed, active, dead, done, paused, enqueued_total,
     * retried_total, done_total, dead_total, throttled_total, throttled_jobs_total (and
     * partitions, for a queue of more than one).
     */
    public function counts(string $queue): array
    {
        $lanes = $this->lanes($queue);
        $commands = [];
        foreach ($lanes as $tag) {
            foreach (self::STATES as $state) {
                $commands[] = ['ZCARD', "$tag:$state"];
            }
            $commands[] = ['HGETALL', "$tag:stats"];
            $commands[] = ['EXISTS', "$tag:paused"];
        }
        $replies = $this->pipeline($commands);
        $out = array_fill_keys(self::STATES, 0);
        $stats = [];
        $paused = false;
        foreach (array_keys($lanes) as $n) {
            $lane = array_slice($replies, 7 * $n, 7);
            foreach (self::STATES as $s => $state) {
                $out[$state] += (int)$lane[$s];
            }
            $flat = is_array($lane[5]) ? array_values($lane[5]) : [];
            for ($f = 0; $f + 1 < count($flat); $f += 2) {
                $value = $flat[$f + 1];
                if (!is_int($value) && !(is_string($value) && preg_match('/\A\s*[+-]?\d+\s*\z/', $value))) {
                    throw new ServerError("queue $queue: its stats hash holds " . PyFormat::repr($flat[$f]) . ' = '
                        . PyFormat::repr($value) . ', not an integer');
                }
                $stats[$flat[$f]] = ($stats[$flat[$f]] ?? 0) + (int)$value;
            }
            $paused = $paused || (int)$lane[6] > 0;
        }
        $out['waiting'] += max($stats['queued'] ?? 0, 0);
        $out['paused'] = $paused;
        $out['enqueued_total'] = $stats['enqueued'] ?? 0;
        $out['retried_total'] = $stats['retried'] ?? 0;
        $out['done_total'] = $stats['done'] ?? 0;
        $out['dead_total'] = $stats['dead'] ?? 0;
        $out['throttled_total'] = $stats['throttled'] ?? 0;  // reserves a rate limit made wait
        $out['throttled_jobs_total'] = $stats['throttled_jobs'] ?? 0;  // jobs put back by governor.limit()
        if (count($lanes) > 1) {
            $out['partitions'] = count($lanes);
        }
        return $out;
    }

    /**
     * The queues clients have enqueued to under this prefix (sorted; at most 1,000 of them read;
     * names that are not UTF-8 or longer than 256 bytes are left out, as Python's Client does).
     *
     * @return string[]
     */
    public function queues(): array
    {
        $key = "{$this->prefix}:queues";
        $this->redis->clearLastError();
        $size = $this->redis->rawCommand('MEMORY', 'USAGE', $key, 'SAMPLES', '0');
        if (is_int($size) && $size > self::MAX_REGISTRY_BYTES) {
            throw new \InvalidArgumentException("the queue registry $key holds $size bytes, more than "
                . self::MAX_REGISTRY_BYTES . ' (names longer than ' . self::MAX_NAME_BYTES . ' bytes were added to it); '
                . 'not read: remove them (SSCAN and SREM)');
        }
        $names = [];
        $seen = 0;
        $cursor = '0';
        $limit = self::MAX_QUEUES_READ;
        while (true) {  // (filtered in Redis: a name of a megabyte never crosses the wire)
            $reply = $this->run([['FCALL_RO', self::LIBRARY . '_registry', 1, $key, $cursor,
                min($limit - $seen, 500), self::MAX_NAME_BYTES]])[0];
            $cursor = (string)$reply[0];
            $short = (int)$reply[1];
            $found = array_slice($reply, 2, $limit - $seen);
            foreach ($found as $n => $raw) {
                if ($n < $short && preg_match('//u', (string)$raw)) {
                    $names[(string)$raw] = true;
                }
            }
            $seen += min(count($reply) - 2, $limit - $seen);
            if ($cursor === '0' || $seen >= $limit) {
                break;
            }
        }
        $names = array_map('strval', array_keys($names));
        sort($names, SORT_STRING);
        return $names;
    }

    /** The queue's partition count, as its masters registered it; null: not partitioned. */
    public function partitions(string $queue): ?int
    {
        $this->knowPartitions([$queue]);
        return $this->partitionCounts[$queue] ?? null;
    }

    // -- the enqueue path ---------------------------------------------------------------------

    /**
     * One job's fields checked as Python's Client._prepare checks them, in the same order and with
     * the same messages: [id, payload, record JSON, delay ms, ordering key or null].
     */
    private function prepare(string $queue, $spec): array
    {
        if ($spec instanceof \stdClass) {
            $spec = get_object_vars($spec);
        }
        if (!is_array($spec)) {
            throw new \InvalidArgumentException('a job is an array of its fields (handler, args, ...), got '
                . PyFormat::repr($spec));
        }
        $unknown = array_diff(array_map('strval', array_keys($spec)), self::JOB_FIELDS);
        if ($unknown) {
            sort($unknown, SORT_STRING);
            throw new \InvalidArgumentException('unknown job field(s): ' . implode(', ', $unknown));
        }
        $handler = $spec['handler'] ?? null;
        if (!is_string($handler) || strpos($handler, ':') === false) {
            throw new \InvalidArgumentException("handler must be 'module:function', got " . PyFormat::repr($handler));
        }
        $args = PyFormat::truthy($spec['args'] ?? null) ? $spec['args'] : [];
        $kwargs = PyFormat::truthy($spec['kwargs'] ?? null) ? $spec['kwargs'] : new \stdClass();
        if (!(is_array($args) && PyFormat::isList($args)) || !PyFormat::isMapping($kwargs)) {
            throw new \InvalidArgumentException('args must be a list and kwargs a mapping');
        }
        $priority = $spec['priority'] ?? self::DEFAULT_PRIORITY;
        if (!is_int($priority) || $priority < 0 || $priority > self::MAX_PRIORITY) {
            throw new \InvalidArgumentException('priority must be an integer 0-' . self::MAX_PRIORITY
                . ' (lower runs first), got ' . PyFormat::repr($priority));
        }
        $maxRetries = $spec['maxRetries'] ?? null;
        if ($maxRetries !== null && (!is_int($maxRetries) || $maxRetries < 0 || $maxRetries > self::MAX_RETRIES)) {
            throw new \InvalidArgumentException('max_retries must be an integer from 0 to ' . self::MAX_RETRIES
                . ', got ' . PyFormat::repr($maxRetries));
        }
        $delay = self::seconds($spec['delay'] ?? null, 'delay', 0.0, self::MAX_DELAY, '0s', '3650') ?: 0.0;
        $timeout = self::seconds($spec['timeout'] ?? null, 'timeout', 0.001, self::MAX_TIMEOUT, '0.001s', '365');
        $jobId = PyFormat::truthy($spec['jobId'] ?? null) ? $spec['jobId'] : self::uuid4hex();
        if (!self::validId($jobId)) {
            throw new \InvalidArgumentException('job_id must be ' . self::JOB_ID_RULE . ', got ' . PyFormat::repr($jobId));
        }
        $unique = $spec['unique'] ?? null;
        if ($unique !== null && !self::validId($unique)) {
            throw new \InvalidArgumentException('unique must be ' . self::JOB_ID_RULE . ', got ' . PyFormat::repr($unique));
        }
        $key = $spec['key'] ?? null;
        if ($key !== null && !self::validId($key)) {
            throw new \InvalidArgumentException('key must be ' . self::JOB_ID_RULE . ', got ' . PyFormat::repr($key));
        }
        try {
            $payload = PyFormat::json(['handler' => $handler, 'args' => $args, 'kwargs' => $kwargs]);
        } catch (\UnexpectedValueException $e) {
            throw new \InvalidArgumentException('job arguments must be JSON-serialisable: ' . $e->getMessage());
        }
        if (strlen($payload) > $this->maxPayload) {
            throw new \InvalidArgumentException('job payload is ' . strlen($payload) . ' bytes, over the limit of '
                . $this->maxPayload);
        }
        $meta = ['id' => $jobId, 'queue' => $queue, 'handler' => $handler, 'priority' => $priority];
        if ($maxRetries !== null) {
            $meta['max_retries'] = $maxRetries;
        }
        if ($timeout !== null) {
            $meta['timeout'] = $timeout;
        }
        if ($unique !== null) {
            $meta['unique'] = $unique;
        }
        if ($key !== null) {
            $meta['key'] = $key;
        }
        return [$jobId, $payload, PyFormat::json($meta), (int)($delay * 1000), $key];
    }

    /** Python's _seconds: null, or seconds within [low, high] from a number or a duration string. */
    private static function seconds($value, string $what, float $low, float $high, string $lowText,
                                    string $highDays): ?float
    {
        if ($value === null) {
            return null;
        }
        try {
            $seconds = PyFormat::parseDuration($value);
        } catch (\InvalidArgumentException $e) {
            throw new \InvalidArgumentException("$what: " . $e->getMessage());
        }
        if (!($low <= $seconds && $seconds <= $high)) {
            throw new \InvalidArgumentException("$what must be from $lowText to $highDays days, got "
                . PyFormat::repr($value));
        }
        return $seconds;
    }

    private static function validId($id): bool
    {
        return is_string($id) && preg_match('/\A[\x21-\x7e]{1,200}\z/', $id) === 1;
    }

    private static function uuid4hex(): string
    {
        $b = random_bytes(16);
        $b[6] = chr((ord($b[6]) & 0x0f) | 0x40);
        $b[8] = chr((ord($b[8]) & 0x3f) | 0x80);
        return bin2hex($b);
    }

    /** The enqueue function's call for some prepared jobs, on one lane (a queue's or a partition's tag). */
    private function enqueueCall(string $tag, array $jobs): array
    {
        $call = ['FCALL', self::LIBRARY . '_enqueue', 11, "$tag:meta", "$tag:data", "$tag:waiting", "$tag:delayed",
            "$tag:seq", "$tag:wake", "$tag:stats", "$tag:unique", "$tag:heads", "$tag:key:", "$tag:partitions",
            count($jobs)];
        foreach ($jobs as $p) {
            array_push($call, $p[0], $p[1], $p[2], $p[3]);
        }
        return $call;
    }

    /**
     * Each job to its key's partition, then a hint to each partition's holder: atomic as a whole
     * (one MULTI/EXEC) when the jobs take several calls, as Python's Client does on one Redis.
     */
    private function enqueueKeyed(string $queue, array $prepared): array
    {
        $n = $this->partitions($queue);
        if ($n === null) {
            throw new \InvalidArgumentException('queue ' . PyFormat::repr($queue) . " is not partitioned: a job's key orders "
                . 'it only on a queue with partitions: N in its config (and a master has started it)');
        }
        $groups = [];
        foreach ($prepared as $i => $p) {
            if ($p[4] === null) {
                throw new \InvalidArgumentException("job $i: queue " . PyFormat::repr($queue)
                    . ' is partitioned: every job needs a key');
            }
            $groups[self::partitionOf($p[4], $n)][] = $i;
        }
        $calls = [];
        $order = [];
        $hint = ['FCALL', self::LIBRARY . '_hint', 3, $this->tag($queue) . ':holders', $this->tag($queue) . ':hint:',
            $this->tag($queue) . ':touched:'];
        foreach ($groups as $part => $idx) {
            foreach (array_chunk($idx, self::BULK_CHUNK) as $chunk) {
                $calls[] = $this->enqueueCall($this->tag($queue, $part), array_map(function ($i) use ($prepared) {
                    return $prepared[$i];
                }, $chunk));
                $order[] = $chunk;
            }
            // a job queued behind its key's head is no job for an idle worker: one hint per key at most
            $keys = [];
            foreach ($idx as $i) {
                $keys[$prepared[$i][4]] = true;
            }
            array_push($hint, $part, count($keys));
        }
        if (count($calls) === 1) {
            $results = array_slice($this->run([$calls[0], $hint]), 0, 1);
        } else {
            $results = $this->transaction($calls);
            $this->run([$hint]);
        }
        $replies = [];
        foreach ($order as $c => $chunk) {
            foreach ($chunk as $j => $i) {
                $replies[$i] = $results[$c][$j];
            }
        }
        return $replies;
    }

    /** The partition of an ordering key: CRC-32 (IEEE, as zlib computes it) of its bytes, modulo the count. */
    public static function partitionOf(string $key, int $partitions): int
    {
        return crc32($key) % $partitions;
    }

    // -- keys, lanes, the registry and partition counts -----------------------------------------

    /** A queue's hash tag, or one partition's: every key of theirs starts with it. */
    private function tag(string $queue, ?int $partition = null): string
    {
        return $partition === null ? "{{$this->prefix}:$queue}" : "{{$this->prefix}:$queue:$partition}";
    }

    /** @return string[] the tags of the queue's lanes: its own, or each of its partitions' */
    private function lanes(string $queue): array
    {
        $n = $this->partitions($queue);
        if ($n === null) {
            return [$this->tag($queue)];
        }
        $out = [];
        for ($i = 0; $i < $n; $i++) {
            $out[] = $this->tag($queue, $i);
        }
        return $out;
    }

    /** Reads the partition counts not known yet of these queues (one round trip for all of them). */
    private function knowPartitions(array $queues): void
    {
        $unknown = array_values(array_filter($queues, function ($q) {
            return !isset($this->partitionCounts[$q]);
        }));
        if (!$unknown) {
            return;
        }
        $raw = $this->pipeline(array_map(function ($q) {
            return ['GET', $this->tag($q) . ':partitions'];
        }, $unknown));
        foreach ($unknown as $i => $q) {
            if (is_string($raw[$i])) {
                $this->partitionCounts[$q] = self::partitionCount($q, $raw[$i]);
            }
        }
    }

    /** A partition-count key's value, checked as Python's partition_count checks it. */
    private static function partitionCount(string $queue, string $raw): int
    {
        if (!(ctype_digit($raw) && strlen($raw) <= 5 && (int)$raw >= 1 && (int)$raw <= self::MAX_PARTITIONS)) {
            $text = preg_replace('/[\x80-\xff]/', "\u{FFFD}", substr($raw, 0, 20));
            throw new \InvalidArgumentException('queue ' . PyFormat::repr($queue) . ': its partition count in Redis is '
                . PyFormat::repr($text) . (strlen($raw) > 20 ? '...' : '') . ', not from 1 to ' . self::MAX_PARTITIONS
                . '; not read');
        }
        return (int)$raw;
    }

    /** Once per client and queue: lets job(id) and status find the queue. */
    private function register(string $queue): void
    {
        if (!isset($this->registered[$queue])) {
            $this->one(['SADD', "{$this->prefix}:queues", $queue]);
            $this->registered[$queue] = true;
        }
    }

    /**
     * Once per client and queue it was told the partition count of: registers it as a master
     * would (Python's register_partitions), or refuses the count Redis holds if it differs.
     */
    private function registerPartitions(string $queue): void
    {
        $told = $this->told[$queue] ?? null;
        if ($told === null || isset($this->partitionCounts[$queue])) {
            return;
        }
        $home = $this->tag($queue);
        [, $stored, $paused] = $this->pipeline([['SET', "$home:partitions", (string)$told, 'NX'],
            ['GET', "$home:partitions"], ['EXISTS', "$home:paused"]]);
        $stored = self::partitionCount($queue, (string)$stored);
        if ($paused && $stored === $told) {
            $copies = [];
            for ($n = 0; $n < $told; $n++) {
                $copies[] = ['SET', $this->tag($queue, $n) . ':paused', '1', 'NX'];
            }
            $this->pipeline($copies);
        }
        if ($stored !== $told) {
            throw new \InvalidArgumentException('queue ' . PyFormat::repr($queue) . " has $stored partitions in Redis, "
                . "but this client was told $told (the config's partitions:): a key's jobs would go to another "
                . 'partition than its earlier ones; fix the config, or drain the queue and delete '
                . "$home:partitions");
        }
        $this->partitionCounts[$queue] = $stored;
    }

    private static function checkQueueName($queue): void
    {
        if (!is_string($queue) || !preg_match('/\A[A-Za-z0-9_.-]{1,64}\z/', $queue)) {
            throw new \InvalidArgumentException('bad queue name ' . PyFormat::repr($queue) . ': ' . self::QUEUE_NAME_RULE);
        }
    }

    private static function checkOptions(array $options, array $known): void
    {
        $unknown = array_diff(array_map('strval', array_keys($options)), $known);
        if ($unknown) {
            sort($unknown, SORT_STRING);
            throw new \InvalidArgumentException('unknown option(s): ' . implode(', ', $unknown) . ' (known: '
                . implode(', ', $known) . ')');
        }
    }

    // -- records ---------------------------------------------------------------------------

    /**
     * A job's record as Python's Client.job shows it: times in seconds, the result and the
     * arguments decoded; one that does not decode is shown as such (a worker dead-letters it).
     */
    private function record(string $queue, string $jobId, string $meta, ?string $payload): array
    {
        try {
            $decoded = PyFormat::loads($meta, "the job's record");
            if (!$decoded instanceof \stdClass) {
                throw new \UnexpectedValueException("the job's record is not a JSON object");
            }
            $record = get_object_vars($decoded);
        } catch (\UnexpectedValueException $e) {  // not written by governor; a worker will dead-letter it
            $record = ['id' => $jobId, 'queue' => $queue, 'state' => 'unknown', 'malformed' => $e->getMessage()];
        }
        if (!array_key_exists('id', $record)) {
            $record['id'] = $jobId;
        }
        if (array_key_exists('result_json', $record)) {
            $raw = $record['result_json'];
            unset($record['result_json']);
            try {
                if (!is_string($raw)) {
                    throw new \UnexpectedValueException('the result is not JSON (not a string)');
                }
                $record['result'] = PyFormat::loads($raw, 'the result');
            } catch (\UnexpectedValueException $e) {
                $record['result_error'] = $e->getMessage();
            }
        }
        foreach (self::TIME_FIELDS as $name) {
            if (!array_key_exists($name, $record)) {
                continue;
            }
            if (is_int($record[$name]) || is_float($record[$name])) {
                $record[$name] = $record[$name] / 1000.0;
            } else {
                unset($record[$name]);
            }
        }
        if (!(is_array($record['errors'] ?? null))) {
            $record['errors'] = [];
        }
        $record['errors'] = array_map(function ($e) {
            return $e instanceof \stdClass ? $e : (object)['error' => PyFormat::str($e)];
        }, $record['errors']);
        try {
            $body = $payload !== null && $payload !== '' ? PyFormat::loads($payload, 'the payload') : new \stdClass();
        } catch (\UnexpectedValueException $e) {
            $body = new \stdClass();
        }
        $isDict = $body instanceof \stdClass;
        $record['args'] = $isDict && property_exists($body, 'args') ? $body->args : [];
        $record['kwargs'] = $isDict && property_exists($body, 'kwargs') ? $body->kwargs : new \stdClass();
        return PyFormat::toArrays($record);
    }

    // -- talking to Redis --------------------------------------------------------------------

    /** One command; an error reply throws ServerError. */
    private function one(array $command)
    {
        return $this->pipeline([$command])[0];
    }

    /**
     * Commands in one round trip (not atomic); any error reply throws ServerError (a nil reply
     * comes back as false: phpredis has no other way to say it).
     */
    private function pipeline(array $commands): array
    {
        $r = $this->redis;
        $r->clearLastError();
        if (count($commands) === 1) {
            $replies = [$r->rawCommand(...$commands[0])];
        } else {
            $pipe = $r->pipeline();
            foreach ($commands as $c) {
                $pipe->rawCommand(...$c);
            }
            $replies = $pipe->exec();
        }
        $error = $r->getLastError();
        if ($error !== null) {
            $r->clearLastError();
            throw self::serverError($error);
        }
        return $replies;
    }

    /** Function calls in one round trip (not atomic); each replies something, so false is an error. */
    private function run(array $calls): array
    {
        $replies = $this->pipeline($calls);
        foreach ($replies as $reply) {
            if ($reply === false) {
                throw new ServerError('Redis answered an error (phpredis did not say which)');
            }
        }
        return $replies;
    }

    /**
     * Function calls as one MULTI/EXEC: Redis runs all of them or, if it refuses the
     * transaction, none. (A function that is not there fails every call of the transaction.)
     */
    private function transaction(array $calls): array
    {
        $r = $this->redis;
        $r->clearLastError();
        if ($r->rawCommand('MULTI') === false) {
            throw self::serverError($r->getLastError() ?? 'MULTI refused');
        }
        $done = false;
        try {
            foreach ($calls as $call) {
                if ($r->rawCommand(...$call) === false) {  // refused as it was queued (Redis < 7: no FCALL)
                    throw self::serverError($r->getLastError() ?? 'a call refused in MULTI');
                }
            }
            $done = true;
            $replies = $r->rawCommand('EXEC');
        } finally {
            if (!$done) {
                try {
                    $r->rawCommand('DISCARD');
                } catch (\Throwable $ignored) {
                }
            }
        }
        if (!is_array($replies)) {
            throw self::serverError($r->getLastError() ?? 'the transaction was aborted');
        }
        foreach ($replies as $reply) {
            if ($reply === false) {
                throw self::serverError($r->getLastError() ?? 'a call in the transaction failed');
            }
        }
        $r->clearLastError();
        return $replies;
    }

    private static function serverError(string $message): ServerError
    {
        $low = strtolower($message);
        if (strpos($low, 'function not found') !== false) {
            return new ServerError("governor's function library " . self::LIBRARY . ' is not loaded on this Redis: '
                . 'a governor master loads it at its start (start one on this Redis first); this client cannot '
                . "load it itself (it is built from governor's Python package) ($message)");
        }
        if (strpos($low, 'unknown command') !== false && strpos($low, 'fcall') !== false) {
            return new ServerError('this Redis has no functions (FCALL needs Redis 7 or later): the PHP client '
                . "calls governor's function library only; script mode, for a Redis before 7, is for Python "
                . "producers only ($message)");
        }
        return new ServerError($message);
    }
}

/**
 * What the Client needs of Python's formatting, so its messages and payloads are byte for byte
 * the Python Client's: repr() and str() of values, json.dumps (compact, ASCII, no NaN), truthiness,
 * governor.units.parse_duration, and governor.untrusted.loads. PHP arrays stand for Python lists
 * (when they are lists) and dicts (otherwise); stdClass objects for dicts.
 *
 * @internal
 */
final class PyFormat
{
    /** Python's \s in a str pattern: the characters str.isspace() says are whitespace. */
    private const SPACE = '[\t\n\x{0B}\f\r\x{1C}-\x{1F} \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}'
        . '\x{202F}\x{205F}\x{3000}]';
    private const DURATION_UNITS = ['ms' => 0.001, 's' => 1.0, 'm' => 60.0, 'h' => 3600.0, 'd' => 86400.0];

    public static function isList(array $a): bool
    {
        $i = 0;
        foreach ($a as $k => $_) {
            if ($k !== $i++) {
                return false;
            }
        }
        return true;
    }

    /** A dict in Python's terms: a non-list array, or a stdClass. */
    public static function isMapping($v): bool
    {
        return $v instanceof \stdClass || (is_array($v) && ($v === [] || !self::isList($v)));
    }

    /** Python's bool(): None, False, 0, 0.0, "", [] and {} are false (the string "0" is true). */
    public static function truthy($v): bool
    {
        if ($v === null || $v === false || $v === 0 || $v === 0.0 || $v === '' || $v === []) {
            return false;
        }
        if ($v instanceof \stdClass) {
            return (bool)get_object_vars($v);
        }
        return true;
    }

    /** Python's str(): a string is itself, anything else its repr. */
    public static function str($v): string
    {
        return is_string($v) ? $v : self::repr($v);
    }

    /** Python's repr() of the value PHP's stands for. */
    public static function repr($v): string
    {
        if ($v === null) {
            return 'None';
        }
        if (is_bool($v)) {
            return $v ? 'True' : 'False';
        }
        if (is_int($v)) {
            return (string)$v;
        }
        if (is_float($v)) {
            return self::floatRepr($v);
        }
        if (is_string($v)) {
            return self::stringRepr($v);
        }
        if (is_array($v) && self::isList($v)) {
            return '[' . implode(', ', array_map([self::class, 'repr'], $v)) . ']';
        }
        if (is_array($v) || $v instanceof \stdClass) {
            $items = [];
            foreach ((array)$v as $k => $item) {
                $items[] = self::stringRepr((string)$k) . ': ' . self::repr($item);
            }
            return '{' . implode(', ', $items) . '}';
        }
        if (is_object($v)) {
            return '<' . get_class($v) . ' object>';
        }
        return '<' . gettype($v) . '>';
    }

    /** repr() of a float: the shortest digits that read back as it, as Python writes them. */
    public static function floatRepr(float $f): string
    {
        if (is_nan($f)) {
            return 'nan';
        }
        if (is_infinite($f)) {
            return $f > 0 ? 'inf' : '-inf';
        }
        $sign = ord(pack('E', $f)[0]) >= 0x80 ? '-' : '';  // (the sign bit: -0.0 too)
        $a = abs($f);
        if ($a == 0.0) {
            return $sign . '0.0';
        }
        for ($p = 0; $p < 17; $p++) {
            $s = sprintf("%.{$p}e", $a);
            if ((float)$s === $a) {
                break;
            }
        }
        [$mantissa, $exp] = explode('e', $s);
        $digits = rtrim(str_replace('.', '', $mantissa), '0');
        $digits = $digits === '' ? '0' : $digits;
        $exp = (int)$exp;
        $point = $exp + 1;  // digits are 0.DIGITS x 10^point
        if ($point <= -4 || $point > 16) {
            $m = strlen($digits) > 1 ? $digits[0] . '.' . substr($digits, 1) : $digits;
            return $sign . $m . 'e' . ($exp < 0 ? '-' : '+') . sprintf('%02d', abs($exp));
        }
        if ($point <= 0) {
            return $sign . '0.' . str_repeat('0', -$point) . $digits;
        }
        if ($point >= strlen($digits)) {
            return $sign . $digits . str_repeat('0', $point - strlen($digits)) . '.0';
        }
        return $sign . substr($digits, 0, $point) . '.' . substr($digits, $point);
    }

    /**
     * repr() of a str: bytes that are not UTF-8 stand for what Python's surrogateescape makes
     * of them (U+DC80-U+DCFF, shown as \udcXX).
     */
    public static function stringRepr(string $s): string
    {
        $quote = (strpos($s, "'") !== false && strpos($s, '"') === false) ? '"' : "'";
        $out = $quote;
        foreach (self::codePoints($s) as [$cp, $char]) {
            if ($char === $quote || $char === '\\') {
                $out .= '\\' . $char;
            } elseif ($cp === 9) {
                $out .= '\t';
            } elseif ($cp === 10) {
                $out .= '\n';
            } elseif ($cp === 13) {
                $out .= '\r';
            } elseif ($cp < 0x20 || $cp === 0x7f) {
                $out .= sprintf('\x%02x', $cp);
            } elseif ($cp < 0x7f) {
                $out .= $char;
            } elseif (!self::printable($cp, $char)) {
                $out .= $cp < 0x100 ? sprintf('\x%02x', $cp) : ($cp < 0x10000 ? sprintf('\u%04x', $cp)
                    : sprintf('\U%08x', $cp));
            } else {
                $out .= $char;
            }
        }
        return $out . $quote;
    }

    /** str.isprintable() of one non-ASCII character: not of categories Other (C*) or Separator (Z*). */
    private static function printable(int $cp, string $char): bool
    {
        if ($cp >= 0xD800 && $cp <= 0xDFFF) {
            return false;
        }
        return preg_match('/\A[\p{C}\p{Z}]\z/u', $char) !== 1;
    }

    /**
     * A string's code points, each with its UTF-8 text: [code point, bytes]. A byte that starts
     * no well-formed sequence is U+DC00 + the byte, as Python's surrogateescape decodes it.
     *
     * @return array<int, array{0: int, 1: string}>
     */
    private static function codePoints(string $s): array
    {
        $out = [];
        $n = strlen($s);
        for ($i = 0; $i < $n;) {
            $b = ord($s[$i]);
            $len = $b < 0x80 ? 1 : ($b >= 0xC2 && $b <= 0xDF ? 2 : ($b >= 0xE0 && $b <= 0xEF ? 3
                : ($b >= 0xF0 && $b <= 0xF4 ? 4 : 0)));
            $seq = $len ? substr($s, $i, $len) : '';
            if ($len > 1 && (strlen($seq) !== $len || preg_match('//u', $seq) !== 1)) {
                $len = 0;
            }
            if ($len === 0) {
                $out[] = [0xDC00 + $b, "\u{FFFD}"];
                $i++;
                continue;
            }
            $cp = $len === 1 ? $b : self::decode($seq);
            $out[] = [$cp, $seq];
            $i += $len;
        }
        return $out;
    }

    private static function decode(string $seq): int
    {
        $b = array_values(unpack('C*', $seq));
        if (count($b) === 2) {
            return (($b[0] & 0x1F) << 6) | ($b[1] & 0x3F);
        }
        if (count($b) === 3) {
            return (($b[0] & 0x0F) << 12) | (($b[1] & 0x3F) << 6) | ($b[2] & 0x3F);
        }
        return (($b[0] & 0x07) << 18) | (($b[1] & 0x3F) << 12) | (($b[2] & 0x3F) << 6) | ($b[3] & 0x3F);
    }

    /**
     * json.dumps(v, separators=(",", ":"), allow_nan=False): ASCII only (\uXXXX escapes, DEL
     * too), floats as Python writes them. Throws UnexpectedValueException with Python's message
     * for what JSON cannot hold; a string that is not UTF-8 is refused (JSON holds text).
     */
    public static function json($v): string
    {
        if ($v === null) {
            return 'null';
        }
        if (is_bool($v)) {
            return $v ? 'true' : 'false';
        }
        if (is_int($v)) {
            return (string)$v;
        }
        if (is_float($v)) {
            if (!is_finite($v)) {
                throw new \UnexpectedValueException('Out of range float values are not JSON compliant');
            }
            return self::floatRepr($v);
        }
        if (is_string($v)) {
            $out = json_encode($v, JSON_UNESCAPED_SLASHES);
            if ($out === false) {
                throw new \UnexpectedValueException('a string is not UTF-8 (' . json_last_error_msg() . '): '
                    . self::stringRepr($v));
            }
            return str_replace("\x7f", '\u007f', $out);
        }
        if (is_array($v) && self::isList($v)) {
            return '[' . implode(',', array_map([self::class, 'json'], $v)) . ']';
        }
        if (is_array($v) || $v instanceof \stdClass) {
            $items = [];
            foreach ((array)$v as $k => $item) {
                $items[] = self::json((string)$k) . ':' . self::json($item);
            }
            return '{' . implode(',', $items) . '}';
        }
        if ($v instanceof \JsonSerializable) {
            return self::json($v->jsonSerialize());
        }
        $type = is_object($v) ? get_class($v) : gettype($v);
        throw new \UnexpectedValueException("Object of type $type is not JSON serializable");
    }

    /** governor.units.parse_duration: seconds from 30s, 10m, 250ms...; a bare number is seconds. */
    public static function parseDuration($value): float
    {
        if (is_bool($value)) {
            throw new \InvalidArgumentException('expected a duration such as 30s, got ' . self::repr($value));
        }
        if ((is_int($value) || is_float($value)) && $value >= 0 && is_finite((float)$value)) {
            return (float)$value;
        }
        $s = self::SPACE;
        if (!is_string($value)
            || preg_match("/\\A$s*(\\p{Nd}+(?:\\.\\p{Nd}+)?)$s*([a-zA-Z]*)$s*\\z/u", $value, $m) !== 1
            || ($m[2] !== '' && !isset(self::DURATION_UNITS[strtolower($m[2])]))) {
            throw new \InvalidArgumentException('expected a duration such as 30s (units ms/s/m/h/d), got '
                . self::repr($value));
        }
        $number = (float)preg_replace_callback('/[^\x00-\x7f]+/u', function ($d) {
            return self::asciiDigits($d[0]);
        }, $m[1]);
        $seconds = $number * ($m[2] !== '' ? self::DURATION_UNITS[strtolower($m[2])] : 1.0);
        if (!is_finite($seconds)) {
            throw new \InvalidArgumentException('expected a finite duration, got ' . self::repr($value));
        }
        return $seconds;
    }

    /**
     * Decimal digits of any script as ASCII ones (Python's float() reads them all): Unicode puts
     * each script's 0-9 in a run of ten, so a digit's value is its distance from its run's start.
     */
    private static function asciiDigits(string $digits): string
    {
        $out = '';
        foreach (self::codePoints($digits) as [$cp, $char]) {
            $start = $cp;
            while ($start > 0 && preg_match('/\A\p{Nd}\z/u', mb_chr_compat($start - 1)) === 1) {
                $start--;
            }
            $out .= (string)(($cp - $start) % 10);
        }
        return $out;
    }

    /**
     * governor.untrusted.loads: JSON read from Redis, where anyone with write access may have put
     * anything; objects come back as stdClass (toArrays turns them into arrays). Throws
     * UnexpectedValueException naming $what.
     */
    public static function loads(string $raw, string $what)
    {
        $v = json_decode($raw, false, 512);
        if (json_last_error() !== JSON_ERROR_NONE) {
            throw new \UnexpectedValueException("$what is not JSON (" . json_last_error_msg() . ')');
        }
        if (!self::finite($v)) {
            throw new \UnexpectedValueException("$what is not JSON (a number is out of range)");
        }
        return $v;
    }

    private static function finite($v): bool
    {
        if (is_float($v)) {
            return is_finite($v);
        }
        if (is_array($v) || $v instanceof \stdClass) {
            foreach ((array)$v as $item) {
                if (!self::finite($item)) {
                    return false;
                }
            }
        }
        return true;
    }

    /** JSON objects (stdClass) as PHP arrays, all the way down. */
    public static function toArrays($v)
    {
        if ($v instanceof \stdClass) {
            $v = get_object_vars($v);
        }
        if (is_array($v)) {
            foreach ($v as $k => $item) {
                $v[$k] = self::toArrays($item);
            }
        }
        return $v;
    }
}

/** The UTF-8 text of a code point (mb_chr without the mbstring extension). @internal */
function mb_chr_compat(int $cp): string
{
    if ($cp < 0x80) {
        return chr($cp);
    }
    if ($cp < 0x800) {
        return chr(0xC0 | ($cp >> 6)) . chr(0x80 | ($cp & 0x3F));
    }
    if ($cp < 0x10000) {
        return chr(0xE0 | ($cp >> 12)) . chr(0x80 | (($cp >> 6) & 0x3F)) . chr(0x80 | ($cp & 0x3F));
    }
    return chr(0xF0 | ($cp >> 18)) . chr(0x80 | (($cp >> 12) & 0x3F)) . chr(0x80 | (($cp >> 6) & 0x3F))
        . chr(0x80 | ($cp & 0x3F));
}
