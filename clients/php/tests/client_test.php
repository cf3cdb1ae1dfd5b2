<?php
/**
 * The client against a real master: jobs enqueued from PHP run, once, and their records and the
 * queues' counts read as Python's Client reads them; partitioned queues, unique keys, existing
 * ids; a Redis without the library, or without functions at all.
 */

declare(strict_types=1);

namespace GovernorTest;

use Governor\Client;
use Governor\NotReplicated;
use Governor\ServerError;

function tag(): string
{
    return 't' . bin2hex(random_bytes(4));
}

function test_enqueue_with_every_option_runs_once_and_job_says_done(Env $env): void
{
    $c = $env->client();
    $t = tag();
    $id = $c->enqueue('plain', 'phptasks:add', ['args' => [$t, 2, 3], 'kwargs' => ['scale' => 10], 'priority' => 10,
        'delay' => '1s', 'timeout' => '2m', 'maxRetries' => 5, 'jobId' => "job-$t", 'unique' => "u-$t"]);
    same("job-$t", $id, 'the id enqueue returns');
    $queued = $c->job($id);
    same('delayed', $queued['state'], 'a job with a delay, at first');
    $rec = $env->waitDone($c, $id);
    same('done', $rec['state'], 'its state');
    same(['sum' => 50, 'tag' => $t], $rec['result'], 'its result');
    same(1, $rec['attempts'], 'its attempts');
    same(10, $rec['priority'], 'its priority');
    same(5, $rec['max_retries'], 'its max_retries');
    same(120, $rec['timeout'], 'its timeout (read back from JSON, as Python reads it)');
    same("u-$t", $rec['unique'], 'its unique key');
    same('plain', $rec['queue'], 'its queue');
    same('phptasks:add', $rec['handler'], 'its handler');
    same([$t, 2, 3], $rec['args'], 'its args');
    same(['scale' => 10], $rec['kwargs'], 'its kwargs');
    same([], $rec['errors'], 'its errors');
    check($rec['started_at'] - $rec['enqueued_at'] >= 0.99, 'it started after its delay: ' . show($rec));
    check($rec['finished_at'] >= $rec['started_at'], 'finished after it started');
    same($rec, Python::call(['op' => 'job', 'url' => $env->url(), 'prefix' => $env->prefix, 'id' => $id]),
        "the record Python's Client.job reads");
    same($rec, $c->job($id, 'plain'), 'the record, read from its queue');
    usleep(300000);  // (a second run would have shown by now)
    same([$t], $env->master->lines('ran'), 'the handler ran once');
}

function test_every_option_with_a_key_on_a_partitioned_queue(Env $env): void
{
    $c = $env->client();
    $t = tag();
    $id = $c->enqueue('ordered', 'phptasks:add', ['args' => [$t, 1, 1], 'priority' => 0, 'delay' => 0.2,
        'timeout' => 30, 'maxRetries' => 0, 'jobId' => "k-$t", 'unique' => "u-$t", 'key' => "key-$t"]);
    $part = Client::partitionOf("key-$t", 4);
    $r = $env->redis->connect();
    same(1, $r->rawCommand('HEXISTS', "{{$env->prefix}:ordered:$part}:meta", $id), "the job is in its key's partition");
    $rec = $env->waitDone($c, $id);
    same('done', $rec['state'], 'its state');
    same(['sum' => 2, 'tag' => $t], $rec['result'], 'its result');
    same("key-$t", $rec['key'], 'its key');
    same(30, $rec['timeout'], 'its timeout');
    same(0, $rec['max_retries'], 'its max_retries');
    same($rec, Python::call(['op' => 'job', 'url' => $env->url(), 'prefix' => $env->prefix, 'id' => $id]),
        "the record Python's Client.job reads");
    $counts = $c->counts('ordered');
    same(4, $counts['partitions'], 'counts of a partitioned queue name its partitions');
}

function test_enqueue_many_runs_every_job_and_counts_agree_with_python(Env $env): void
{
    $c = $env->client();
    $t = tag();
    $before = $c->counts('plain');
    $jobs = [];
    for ($i = 0; $i < 20; $i++) {
        $jobs[] = ['handler' => 'phptasks:add', 'args' => ["$t-$i", $i, 1]];
    }
    $jobs[] = ['handler' => 'phptasks:fail', 'args' => ["$t-fail"], 'maxRetries' => 0];
    $ids = $c->enqueueMany('plain', $jobs);
    same(21, count(array_unique($ids)), 'one id per job');
    foreach ($ids as $i => $id) {
        check(preg_match('/\A[0-9a-f]{32}\z/', $id) === 1, "a generated id is a uuid4's hex: $id");
        $rec = $env->waitDone($c, $id);
        if ($i < 20) {
            same(['sum' => $i + 1, 'tag' => "$t-$i"], $rec['result'], "job $i's result");
        } else {
            same('dead', $rec['state'], 'a job that fails with no retries');
            same("ValueError: boom $t-fail", $rec['errors'][0]['error'] ?? null, 'its error');
            same($rec, Python::call(['op' => 'job', 'url' => $env->url(), 'prefix' => $env->prefix, 'id' => $id]),
                "a dead job's record, as Python's Client.job reads it");
        }
    }
    $counts = waitFor(function () use ($c) {
        $n = $c->counts('plain');
        return $n['active'] === 0 ? $n : null;
    }, 10, 'no job active');
    same($before['enqueued_total'] + 21, $counts['enqueued_total'], 'enqueued_total');
    same($before['done_total'] + 20, $counts['done_total'], 'done_total');
    same($before['dead_total'] + 1, $counts['dead_total'], 'dead_total');
    same(Python::call(['op' => 'counts', 'url' => $env->url(), 'prefix' => $env->prefix, 'queue' => 'plain']), $counts,
        "the counts Python's Client.counts reads");
    same(['waiting', 'delayed', 'active', 'dead', 'done', 'paused', 'enqueued_total', 'retried_total', 'done_total',
        'dead_total', 'throttled_total', 'throttled_jobs_total'], array_keys($counts), "counts' fields");
    same([], $c->enqueueMany('plain', []), 'no jobs, no ids');
}

function test_enqueue_many_over_a_chunk_goes_in_one_transaction(Env $env): void
{
    $prefix = newPrefix();
    $c = Client::fromUrl($env->url(), ['prefix' => $prefix]);
    $jobs = [];
    for ($i = 0; $i < 2500; $i++) {
        $jobs[] = ['handler' => 'phptasks:add', 'args' => [$i, $i, 1], 'delay' => $i % 2 ? '1h' : null];
    }
    $ids = $c->enqueueMany('bulk', $jobs);
    same(2500, count(array_unique($ids)), 'one id per job');
    $counts = $c->counts('bulk');
    same(1250, $counts['waiting'], 'waiting');
    same(1250, $counts['delayed'], 'delayed');
    same(2500, $counts['enqueued_total'], 'enqueued_total');
    same(Python::call(['op' => 'counts', 'url' => $env->url(), 'prefix' => $prefix, 'queue' => 'bulk']), $counts,
        "the counts Python's Client.counts reads");
    same(['bulk'], $c->queues(), 'the queue is registered');
    $rec = $c->job($ids[2499]);
    same('delayed', $rec['state'], 'the last job, found through the registry');
    check($rec['due_at'] - $rec['enqueued_at'] > 3599, 'its due time is an hour on');
}

function test_a_partitioned_queue_runs_each_keys_jobs_in_order(Env $env): void
{
    $c = $env->client();
    $t = tag();
    $keys = ["$t-a", "$t-b", "$t-c", "$t-d", "$t-e"];
    $jobs = [];
    for ($seq = 0; $seq < 12; $seq++) {
        foreach ($keys as $key) {
            $jobs[] = ['handler' => 'phptasks:step', 'args' => [$key, $seq], 'key' => $key,
                'priority' => 100 - $seq * 8];  // (priorities never reorder a key's own jobs)
        }
    }
    $ids = $c->enqueueMany('ordered', $jobs);
    $r = $env->redis->connect();
    foreach ($jobs as $i => $job) {
        $part = Client::partitionOf($job['key'], 4);
        same(1, $r->rawCommand('HEXISTS', "{{$env->prefix}:ordered:$part}:meta", $ids[$i]),
            "job $i in its key's partition");
    }
    waitFor(function () use ($env, $t) {
        $env->master->assertRunning();
        return count(array_filter($env->master->lines('order'), function ($l) use ($t) {
            return strpos($l, $t) === 0;
        })) >= 60;
    }, 60, 'all 60 keyed jobs to run');
    $seen = [];
    foreach ($env->master->lines('order') as $line) {
        [$key, $seq] = explode(' ', $line);
        if (strpos($key, $t) === 0) {
            $seen[$key][] = (int)$seq;
        }
    }
    foreach ($keys as $key) {
        same(range(0, 11), $seen[$key], "the order $key's jobs ran in");
    }
}

function test_partition_of_is_pythons(Env $env): void
{
    $cases = [];
    foreach (['+4915112345678', 'a', 'user:42', '~!@#$%^&*()', str_repeat('z', 200), 'k-' . bin2hex(random_bytes(8))]
             as $key) {
        foreach ([1, 2, 3, 48, 1024] as $n) {
            $cases[] = [$key, $n];
        }
    }
    $python = Python::call(['op' => 'partition_of', 'cases' => $cases]);
    foreach ($cases as $i => [$key, $n]) {
        same($python[$i], Client::partitionOf($key, $n), "the partition of $key among $n");
    }
}

function test_unique_and_existing_ids_queue_nothing_twice(Env $env): void
{
    $c = $env->client();
    $t = tag();
    $first = $c->enqueue('plain', 'phptasks:add', ['args' => [$t, 0, 0], 'delay' => '1h', 'unique' => "u-$t"]);
    $again = $c->enqueue('plain', 'phptasks:add', ['args' => [$t, 0, 0], 'unique' => "u-$t"]);
    same($first, $again, "a job whose unique key a delayed job holds: the holder's id");
    $ids = $c->enqueueMany('plain', [['handler' => 'phptasks:add', 'args' => [$t, 0, 0], 'delay' => '1h',
        'unique' => "v-$t"], ['handler' => 'phptasks:add', 'args' => [$t, 0, 0], 'unique' => "v-$t"]]);
    same($ids[0], $ids[1], 'within one batch, the first holds the key');
    $before = $c->counts('plain')['enqueued_total'];
    same($first, $c->enqueue('plain', 'phptasks:add', ['args' => [$t, 0, 0], 'jobId' => $first]),
        'an existing id');
    same($before, $c->counts('plain')['enqueued_total'], 'an existing id is not queued twice');
    $r = $env->redis->connect();
    same("v-$t", json_decode($r->rawCommand('HGET', "{{$env->prefix}:plain}:meta", $ids[0]), true)['unique'],
        'the holder');
}

function test_job_of_an_unknown_id_is_null(Env $env): void
{
    $c = $env->client();
    same(null, $c->job('no-such-job'), 'an unknown id');
    same(null, $c->job('no-such-job', 'ordered'), 'an unknown id, in a partitioned queue');
    same(null, Client::fromUrl($env->url(), ['prefix' => newPrefix()])->job('x'), 'a prefix with no queues');
}

function test_records_that_do_not_decode_read_as_pythons(Env $env): void
{
    $prefix = newPrefix();
    $c = Client::fromUrl($env->url(), ['prefix' => $prefix]);
    $id = $c->enqueue('odd', 'phptasks:add', ['args' => [1, 2, 3], 'delay' => '1h']);
    $r = $env->redis->connect();
    $meta = "{{$prefix}:odd}:meta";
    $records = [
        json_encode(['state' => 'done', 'result_json' => '{"a": [1, 2.5, null]}', 'errors' => ['x', 5, ['a' => 1]],
            'enqueued_at' => 1700000000123, 'started_at' => 'soon', 'finished_at' => true]),
        json_encode(['state' => 'done', 'result_json' => 'not json']),
        json_encode(['state' => 'dead', 'errors' => 'not a list', 'due_at' => 12.5]),
        '[1, 2]',
    ];
    foreach ($records as $raw) {
        $r->rawCommand('HSET', $meta, $id, $raw);
        $php = $c->job($id);
        $python = Python::call(['op' => 'job', 'url' => $env->url(), 'prefix' => $prefix, 'id' => $id]);
        foreach (['result_error', 'malformed'] as $message) {  // (JSON decoders word their errors their own way)
            check(isset($php[$message]) === isset($python[$message]), "$message in both or neither: " . show($php));
            if (isset($php[$message]) && strpos($python[$message], 'is not JSON (') !== false) {
                check(strpos($php[$message], 'is not JSON (') !== false, $php[$message]);
                unset($php[$message], $python[$message]);
            }
        }
        same($python, $php, "the record read from $raw");
    }
}

function test_wait_for_replicas_that_are_not_there(Env $env): void
{
    $c = Client::fromUrl($env->url(), ['prefix' => newPrefix(), 'wait' => [1, 0.05]]);
    $e = throws(NotReplicated::class, function () use ($c) {
        $c->enqueue('w', 'phptasks:add', ['jobId' => 'w1', 'args' => [1, 1, 1]]);
    });
    same('1 job(s) queued on the primary, but only 0 of 1 replica(s) confirmed it within 50ms: a failover now '
        . 'could lose it', $e->getMessage(), "NotReplicated's message");
    same(['w1'], $e->ids, 'the ids it names');
    same('waiting', $c->job('w1')['state'], 'the job is queued all the same');
}

function test_a_redis_without_the_library_says_to_start_a_master(Env $env): void
{
    $server = $env->redisServer('nolib', ['--requirepass', 'sesame']);
    $c = Client::fromUrl("redis://:sesame@127.0.0.1:{$server->port}/2", ['prefix' => 'p']);
    foreach ([1, 1500] as $n) {
        $e = throws(ServerError::class, function () use ($c, $n) {
            $c->enqueueMany('q', array_fill(0, $n, ['handler' => 'm:f']));
        }, "$n job(s)");
        check(strpos($e->getMessage(), "governor's function library governor_v1 is not loaded on this Redis: a governor "
                . 'master loads it at its start (start one on this Redis first)') === 0, $e->getMessage());
    }
    $r = $server->connect();
    $r->auth('sesame');
    $r->select(2);
    same(['p:queues'], $r->keys('*'), 'nothing written but the registry (database 2, as the URL says)');
    same(0, $c->counts('q')['waiting'], 'plain reads need no library');
}

function test_a_redis_without_functions_says_script_mode_is_pythons(Env $env): void
{
    $server = $env->redisServer('nofcall', ['--rename-command', 'FCALL', '', '--rename-command', 'FCALL_RO', '',
        '--rename-command', 'FUNCTION', '']);
    $c = Client::fromUrl($server->url(), ['prefix' => 'p']);
    foreach ([1, 1500] as $n) {
        $e = throws(ServerError::class, function () use ($c, $n) {
            $c->enqueueMany('q', array_fill(0, $n, ['handler' => 'm:f']));
        }, "$n job(s)");
        check(strpos($e->getMessage(), 'this Redis has no functions (FCALL needs Redis 7 or later): the PHP client calls '
                . "governor's function library only; script mode, for a Redis before 7, is for Python producers only")
            === 0, $e->getMessage());
    }
    same(true, $c->redis()->ping(), 'the connection is still good');
    throws(ServerError::class, function () use ($c) {
        $c->job('x');
    }, 'job() reads the registry through a function');
}

function test_from_url_refuses_what_it_cannot_use(Env $env): void
{
    foreach (['http://127.0.0.1/', 'redis://127.0.0.1:1/x', 'nonsense'] as $url) {
        throws(\InvalidArgumentException::class, function () use ($url) {
            Client::fromUrl($url);
        }, $url);
    }
    $e = throws(\InvalidArgumentException::class, function () use ($env) {
        Client::fromUrl($env->url(), ['prefx' => 'x']);
    });
    check(strpos($e->getMessage(), 'unknown option(s): prefx') === 0, $e->getMessage());
}

function test_from_url_over_tls_with_a_client_certificate_and_over_a_unix_socket(Env $env): void
{
    $pki = "{$env->dir}/pki";
    @mkdir($pki, 0755, true);
    $openssl = function (string ...$args) use ($pki): void {
        exec('cd ' . escapeshellarg($pki) . ' && openssl ' . implode(' ', array_map('escapeshellarg', $args))
            . ' 2>&1', $out, $rc);
        if ($rc !== 0) {
            throw new Failure("openssl " . implode(' ', $args) . ":\n" . implode("\n", $out));
        }
    };
    $openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1',
        '-subj', '/CN=governor-php-test-ca');
    file_put_contents("$pki/san.ext", "subjectAltName=IP:127.0.0.1\n");
    foreach (['server', 'client'] as $name) {
        $openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', "$name.key", '-out', "$name.csr", '-subj', "/CN=$name");
        $openssl('x509', '-req', '-in', "$name.csr", '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out',
            "$name.crt", '-days', '1', '-extfile', 'san.ext');
    }
    $tlsPort = freePort();
    $socket = "{$env->dir}/tls/redis.sock";
    if (strlen($socket) > 100) {  // (a unix socket's path has room for 107 bytes)
        $socket = sys_get_temp_dir() . '/governor-php-' . bin2hex(random_bytes(4)) . '.sock';
    }
    $server = $env->redisServer('tls', ['--tls-port', (string)$tlsPort, '--tls-cert-file', "$pki/server.crt",
        '--tls-key-file', "$pki/server.key", '--tls-ca-cert-file', "$pki/ca.crt", '--tls-auth-clients', 'yes',
        '--unixsocket', $socket]);
    Python::call(['op' => 'load_library', 'url' => $server->url()]);  // (as a master would at its start)
    $tls = ['cafile' => "$pki/ca.crt", 'local_cert' => "$pki/client.crt", 'local_pk' => "$pki/client.key"];
    $c = Client::fromUrl("rediss://127.0.0.1:$tlsPort/1", ['prefix' => 'p', 'tls' => $tls, 'connectTimeout' => 5.0]);
    $id = $c->enqueue('q', 'm:f', ['args' => ['over tls']]);
    $r = $server->connect();
    $r->select(1);
    same(1, $r->rawCommand('HEXISTS', '{p:q}:meta', $id), 'the job, queued over TLS into database 1');
    throws(\Exception::class, function () use ($tlsPort, $pki) {  // (RedisException, or ServerError)
        Client::fromUrl("rediss://127.0.0.1:$tlsPort/1", ['tls' => ['cafile' => "$pki/ca.crt"]])->counts('q');
    }, 'without its certificate the server refuses us: TLS is really in force');
    $u = Client::fromUrl("unix://$socket?db=3", ['prefix' => 'p']);
    $id = $u->enqueue('q', 'm:f');
    $r->select(3);
    same(1, $r->rawCommand('HEXISTS', '{p:q}:meta', $id), 'the job, queued over the unix socket into database 3');
    same('waiting', $u->job($id)['state'], 'and read back');
}
