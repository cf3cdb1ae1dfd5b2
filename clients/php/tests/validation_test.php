<?php
/**
 * Every validation rule, compared with governor's Python Client run on the same input in a
 * subprocess (python_client.py): the same message for what either refuses, nothing written by a
 * refused call, and, for what both accept, the same payload and record stored in Redis.
 */

declare(strict_types=1);

namespace GovernorTest;

use Governor\Client;

const H = ['handler' => 'phptasks:add'];

/**
 * Runs each case through the PHP client (prefix A) and through Python's (prefix B), on the shared
 * Redis, and checks that they agree. A case: queue, jobs, and optionally "partitions" (the
 * client's option), "maxPayload", "stored" (the partition count set in Redis first: a string),
 * "registers" (a refused call may have registered the queue, as Python's does).
 *
 * @return array[] per case: [PHP's outcome, its prefix]
 */
function parity(Env $env, array $cases): array
{
    $php = [];
    $pyCases = [];
    $prefixes = [];
    foreach ($cases as $i => $case) {
        $a = newPrefix();
        $b = newPrefix();
        $r = $env->redis->connect();
        foreach ([$a, $b] as $p) {
            if (isset($case['stored'])) {
                $r->rawCommand('SET', "{{$p}:{$case['queue']}}:partitions", $case['stored']);
            }
        }
        $before = $env->keysOf($a);
        $options = ['prefix' => $a];
        if (isset($case['partitions'])) {
            $options['partitions'] = $case['partitions'];
        }
        if (isset($case['maxPayload'])) {
            $options['maxPayload'] = $case['maxPayload'];
        }
        try {
            $php[$i] = [['ids' => Client::fromUrl($env->url(), $options)->enqueueMany($case['queue'], $case['jobs'])], $a];
        } catch (\InvalidArgumentException $e) {
            $php[$i] = [['error' => $e->getMessage(), 'type' => 'ValueError'], $a];
            $wrote = array_values(array_diff($env->keysOf($a), $before));
            same(empty($case['registers']) ? [] : ["$a:queues"], $wrote, "case $i (" . show($case) . ') wrote');
        }
        $pyCase = ['prefix' => $b, 'queue' => $case['queue'], 'jobs' => $case['jobs']];
        if (isset($case['partitions'])) {
            $pyCase['partitions'] = $case['partitions'];
        }
        if (isset($case['maxPayload'])) {
            $pyCase['max_payload'] = $case['maxPayload'];
        }
        $pyCases[] = $pyCase;
        $prefixes[$i] = $b;
    }
    $python = Python::call(['op' => 'enqueue_many', 'url' => $env->url(), 'cases' => $pyCases]);
    foreach ($cases as $i => $case) {
        [$mine, $a] = $php[$i];
        $theirs = $python[$i];
        $what = "case $i: " . show($case['jobs']) . ' on ' . show($case['queue']);
        if (isset($theirs['error']) || isset($mine['error'])) {
            // (a message may name a key, and the two ran under prefixes of their own)
            $theirs = str_replace($prefixes[$i], 'PREFIX', show($theirs));
            $mine = str_replace($a, 'PREFIX', show($mine));
            same($theirs, $mine, "$what: refused as Python refuses it");
            continue;
        }
        same(count($theirs['ids']), count($mine['ids']), "$what: ids");
        foreach ($mine['ids'] as $j => $id) {
            same(stored($env, $prefixes[$i], $case['queue'], $theirs['ids'][$j]), stored($env, $a, $case['queue'], $id),
                "$what: job $j as stored by Python and by PHP");
        }
    }
    return $php;
}

/** A job as stored: its payload byte for byte, and its record without what differs per enqueue. */
function stored(Env $env, string $prefix, string $queue, string $id): array
{
    $r = $env->redis->connect();
    $n = $r->rawCommand('GET', "{{$prefix}:$queue}:partitions");
    $tags = ["{{$prefix}:$queue}"];
    for ($p = 0; is_string($n) && $p < (int)$n; $p++) {
        $tags[] = "{{$prefix}:$queue:$p}";
    }
    foreach ($tags as $tag) {
        $meta = $r->rawCommand('HGET', "$tag:meta", $id);
        if (is_string($meta)) {
            $record = json_decode($meta, true);
            $delay = isset($record['due_at']) ? $record['due_at'] - $record['enqueued_at'] : null;
            $generated = preg_match('/\A[0-9a-f]{32}\z/', $id) === 1;
            unset($record['seq'], $record['enqueued_at'], $record['due_at'], $record['ready_at']);
            if ($generated) {
                unset($record['id']);
            }
            return ['lane' => str_replace($prefix, 'PREFIX', $tag), 'payload' => $r->rawCommand('HGET', "$tag:data", $id),
                'record' => $record, 'delay_ms' => $delay, 'generated_id' => $generated];
        }
    }
    throw new Failure("job $id is not stored under $prefix");
}

function test_bad_queue_names_and_job_fields_say_what_python_says(Env $env): void
{
    $cases = [];
    foreach (['', 'a:b', str_repeat('q', 65), 'sp ace', 5, null, 'é', "new\nline", ['q']] as $queue) {
        $cases[] = ['queue' => $queue, 'jobs' => [H]];
    }
    $jobs = [
        H + ['colour' => 1, 'zeta' => 2, 'Alpha' => 0],
        new \stdClass(), ['handler' => 'nocolon'], ['handler' => 5], ['handler' => null], ['handler' => ['m:f']],
        ['handler' => "it's"], ['handler' => true], ['handler' => 'say "hi"'], ['handler' => "both '\""],
        ['handler' => "tab\there\x01\x7f"], ['handler' => "zero\u{200b}width\u{3000}space"], ['handler' => 1.5],
    ];
    foreach (['x', ['a' => 1], 5, '0', true, 1.5, new \stdClass(), (object)['a' => 1]] as $args) {
        $jobs[] = H + ['args' => $args];
    }
    foreach ([[1, 2], 'x', 5, true, '0'] as $kwargs) {
        $jobs[] = H + ['kwargs' => $kwargs];
    }
    foreach ([-1, 101, '5', 5.0, true, false, 1e16, 0.1, -0.0, NAN, INF, -INF, [], [1], 1e-7, 123456789012345680.0]
             as $priority) {
        $jobs[] = H + ['priority' => $priority];
    }
    foreach ([-1, 1000001, '3', 2.0, true, NAN, 'x'] as $retries) {
        $jobs[] = H + ['maxRetries' => $retries];
    }
    foreach (['has space', str_repeat('a', 201), 'é', 5, ['x'], "tab\tid", "\x7f", 1.0, true] as $id) {
        $jobs[] = H + ['jobId' => $id];
    }
    foreach (['', 'a b', 7, false, str_repeat('u', 201), 0.5, []] as $unique) {
        $jobs[] = H + ['unique' => $unique];
    }
    foreach (['', 'a b', 3, str_repeat('k', 201), true] as $key) {
        $jobs[] = H + ['key' => $key];
    }
    foreach ($jobs as $job) {
        $cases[] = ['queue' => 'v', 'jobs' => [$job]];
    }
    parity($env, $cases);
}

function test_bad_durations_say_what_python_says(Env $env): void
{
    $cases = [];
    $delays = ['-1s', '1.5x', '1e3', 'nan', 'inf', str_repeat('9', 400), '3651d', 3650 * 86400 + 1, 315360000.5,
        true, false, [], [1], ['a' => 1], -5, -0.5, NAN, INF, -INF, '5 sec', "\u{0663}x", '', ' ', '.5s', '5.s',
        '5..5s', '+5s', '5S5', "5\u{180E}s", '1_000s', '0x10s', "\u{00BD}s", '5mss'];
    foreach ($delays as $delay) {
        $cases[] = ['queue' => 'v', 'jobs' => [H + ['delay' => $delay]]];
    }
    foreach ([0, '0.5ms', '366d', 'abc', -1, 0.0009, 31536000.001, '0s', false, '1e-3'] as $timeout) {
        $cases[] = ['queue' => 'v', 'jobs' => [H + ['timeout' => $timeout]]];
    }
    parity($env, $cases);
}

function test_the_failing_job_is_named_and_nothing_is_written(Env $env): void
{
    parity($env, [
        ['queue' => 'v', 'jobs' => [H, ['handler' => 'x']]],
        ['queue' => 'v', 'jobs' => [H + ['priority' => 500], H]],
        ['queue' => 'v', 'jobs' => [H, H, H + ['delay' => 'soon']]],
        ['queue' => 'v', 'jobs' => array_merge(array_fill(0, 1500, H), [H + ['key' => 'a b']])],
    ]);
}

function test_payloads_that_are_not_json_or_too_big_say_what_python_says(Env $env): void
{
    $cases = [];
    foreach ([[NAN], [INF], [[1, [-INF]]], ['x' => NAN]] as $args) {
        $cases[] = ['queue' => 'v', 'jobs' => [H + (array_is_list_compat($args) ? ['args' => $args] : ['kwargs' => $args])]];
    }
    // around the limit: {"handler":"phptasks:add","args":["xx..."],"kwargs":{}} is 51 bytes and the x's
    for ($n = 45; $n <= 52; $n++) {
        $cases[] = ['queue' => 'v', 'maxPayload' => 100, 'jobs' => [H + ['args' => [str_repeat('x', $n)]]]];
    }
    $cases[] = ['queue' => 'v', 'maxPayload' => 100, 'jobs' => [H + ['args' => [str_repeat('é', 8)]]]];  // \u00e9: 6 bytes
    $cases[] = ['queue' => 'v', 'maxPayload' => 100, 'jobs' => [H, H + ['kwargs' => ['k' => str_repeat('y', 80)]]]];
    $cases[] = ['queue' => 'v', 'jobs' => [H + ['args' => [str_repeat('z', 1048576)]]]];
    parity($env, $cases);
}

function array_is_list_compat(array $a): bool
{
    return \Governor\PyFormat::isList($a);
}

function test_partition_rules_say_what_python_says(Env $env): void
{
    $keyed = H + ['key' => 'k1'];
    parity($env, [
        // a key on a queue that is not partitioned
        ['queue' => 'pq', 'jobs' => [$keyed], 'registers' => true],
        // no key on a partitioned queue: alone, among keyed jobs, first, and in a transaction
        ['queue' => 'pq', 'stored' => '4', 'jobs' => [H], 'registers' => true],
        ['queue' => 'pq', 'stored' => '4', 'jobs' => [$keyed, H], 'registers' => true],
        ['queue' => 'pq', 'stored' => '4', 'jobs' => [H, $keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => '4', 'jobs' => array_fill(0, 1500, H), 'registers' => true],
        // told another count than Redis holds
        ['queue' => 'pq', 'stored' => '4', 'partitions' => ['pq' => 8], 'jobs' => [$keyed], 'registers' => true],
        // counts in Redis that no master wrote
        ['queue' => 'pq', 'stored' => 'abc', 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => '0', 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => '1025', 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => '99999', 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => str_repeat('7', 30), 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => "\xff\xfe12", 'jobs' => [$keyed], 'registers' => true],
        ['queue' => 'pq', 'stored' => ' 4', 'jobs' => [$keyed], 'registers' => true],
        // and what both accept: keyed jobs, some over a chunk, told the count or finding it
        ['queue' => 'pq', 'stored' => '4', 'jobs' => [$keyed, H + ['key' => 'k2'], H + ['key' => 'k1']]],
        ['queue' => 'pq', 'partitions' => ['pq' => 3], 'jobs' => [$keyed]],
        ['queue' => 'pq', 'stored' => '2', 'jobs' => array_map(function ($i) {
            return H + ['key' => 'k' . ($i % 7), 'args' => [$i]];
        }, range(0, 2100))],
    ]);
}

function test_what_python_accepts_php_stores_byte_for_byte(Env $env): void
{
    $args = ['a/b', 'é', "\u{1F600}", "\x7f", "\x00\x1f\x08\x0c", "quote\"back\\", "</script>", 1e16, 0.1, -0.0, 1e-7,
        123456789, PHP_INT_MAX, -PHP_INT_MAX - 1, true, false, null, [], new \stdClass(),
        ['k' => [1, ['z' => null]]], 2.5e-300, 1.7976931348623157e308, 5e-324, 100.0, "\u{2028}\u{FEFF}"];
    $kwargs = ['a' => 1, 'ü' => 'x', 5 => 'five', 'nested' => ['list' => [1.5, 'two']], '' => 'empty'];
    $jobs = [
        H + ['args' => $args, 'kwargs' => $kwargs],
        ['handler' => "modé:f\u{1F600}", 'args' => [1]],
        H + ['args' => [], 'kwargs' => []],
        H + ['args' => null, 'kwargs' => null, 'priority' => null, 'maxRetries' => null, 'delay' => null,
            'timeout' => null, 'jobId' => null, 'unique' => null, 'key' => null],
        H + ['args' => new \stdClass(), 'kwargs' => new \stdClass()],
        H + ['kwargs' => (object)['x' => 1]],
        H + ['priority' => 0, 'maxRetries' => 0], H + ['priority' => 100, 'maxRetries' => 1000000],
        H + ['jobId' => '0'], H + ['jobId' => ''], H + ['jobId' => 0], H + ['jobId' => false],
        H + ['jobId' => str_repeat('~', 200)], H + ['unique' => 'u!', 'jobId' => 'with-unique'],
    ];
    foreach ([' 30s ', "\u{0663}s", "\u{3000}5m", "5m\n", "5s\n\n", '1.5h', 0, '0', -0.0, '0ms', '007.50s', '10 MS',
                 "\u{FF15}s", "\u{1D7D3}s", 0.0005, "\u{2028}5s", "5\u{00A0}s", "\x1c5\x1fs", "\u{0967}\u{0966}D",
                 '3650d', 315360000, 1.5, '250ms'] as $delay) {
        $jobs[] = H + ['delay' => $delay];
    }
    foreach (['1ms', 31536000, '365d', 0.001, '2m', 7, 1.25] as $timeout) {
        $jobs[] = H + ['timeout' => $timeout];
    }
    $cases = [];
    foreach ($jobs as $job) {
        $cases[] = ['queue' => 'v', 'jobs' => [$job]];
    }
    $cases[] = ['queue' => 'v', 'jobs' => $jobs];
    foreach (parity($env, $cases) as $i => [$outcome]) {
        check(isset($outcome['ids']), "case $i was accepted: " . show($outcome));
    }
}

function test_client_options_say_what_python_says(Env $env): void
{
    $cases = [['a:b' => 4], ['q' => 0], ['q' => 1025], ['q' => '4'], ['q' => true], ['q' => 4.0], ['q' => null],
        ['q' => 4, '' => 2], ['q' => 4]];
    $python = Python::call(['op' => 'client', 'url' => $env->url(), 'cases' => array_map(function ($p) {
        return ['prefix' => 'x', 'partitions' => $p];
    }, $cases)]);
    foreach ($cases as $i => $partitions) {
        try {
            Client::fromUrl($env->url(), ['prefix' => 'x', 'partitions' => $partitions]);
            $mine = null;
        } catch (\InvalidArgumentException $e) {
            $mine = $e->getMessage();
        }
        same($python[$i], $mine, 'partitions ' . show($partitions));
    }
}

function test_php_only_rules(Env $env): void
{
    $c = Client::fromUrl($env->url(), ['prefix' => newPrefix()]);
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueue('v', 'm:f', ['max_retries' => 3, 'job_id' => 'x']);
    });
    same('unknown job field(s): job_id, max_retries', $e->getMessage(), "Python's names are not this client's");
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueue('v', 'm:f', ['handler' => 'm:g']);
    });
    check(strpos($e->getMessage(), 'unknown job field(s): handler') === 0, $e->getMessage());
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueueMany('v', [H, 'm:f']);
    });
    same("job 1: a job is an array of its fields (handler, args, ...), got 'm:f'", $e->getMessage(), 'a job that is no array');
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueue('v', 'm:f', ['args' => ["\xff"]]);
    });
    check(strpos($e->getMessage(), 'job arguments must be JSON-serialisable: a string is not UTF-8') === 0,
        $e->getMessage());
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueue('v', 'm:f', ['args' => [new \ArrayObject()]]);
    });
    same('job arguments must be JSON-serialisable: Object of type ArrayObject is not JSON serializable',
        $e->getMessage(), 'an object JSON cannot hold');
    $e = throws(\InvalidArgumentException::class, function () use ($c) {
        $c->enqueue('v', 'm:f', ['jobId' => "\xff\xfe"]);
    });
    same("job_id must be " . Client::JOB_ID_RULE . ", got '\\udcff\\udcfe'", $e->getMessage(),
        "bytes that are not UTF-8 shown as Python's surrogateescape shows them");
    same([], $env->keysOf($c->prefix()), 'nothing written');
    $id = $c->enqueue('v', 'm:f', ['args' => [new class implements \JsonSerializable {
        public function jsonSerialize(): array
        {
            return ['from' => 'jsonSerialize'];
        }
    }]]);
    same([['from' => 'jsonSerialize']], $c->job($id)['args'], 'a JsonSerializable goes as what it serialises to');
}
