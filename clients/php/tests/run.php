<?php
/**
 * The PHP client's test suite: `php clients/php/tests/run.php [name filter]`.
 *
 * Starts a redis-server of its own on a free loopback port and a real `governor run` master on it
 * (serving queues "plain" and "ordered", the latter with 4 partitions), runs every test_*
 * function of the *_test.php files beside this one, prints one TAP line per test, and exits 1 if
 * any failed. Needs php-cli with the redis extension, redis-server, and governor's Python package:
 * GOVERNOR_PYTHON names the Python that has it (default: the repository's .venv/bin/python), whose
 * bin directory holds the `governor` command. GOVERNOR_TEST_DIR: where to make the test's
 * directory (default: the system's temp dir); KEEP=1 keeps it.
 */

declare(strict_types=1);

namespace GovernorTest;

error_reporting(E_ALL);
set_error_handler(function (int $no, string $message, string $file, int $line) {
    if (!(error_reporting() & $no)) {
        return false;  // (silenced with @)
    }
    throw new \ErrorException($message, 0, $no, $file, $line);
});

require_once __DIR__ . '/../src/Client.php';
require_once __DIR__ . '/harness.php';

if (!extension_loaded('redis')) {
    fwrite(STDERR, "the redis extension is not loaded (apt-get install php-redis)\n");
    exit(2);
}
$root = dirname(__DIR__, 3);
$python = getenv('GOVERNOR_PYTHON') ?: "$root/.venv/bin/python";
if (!is_executable($python)) {
    fwrite(STDERR, "no Python with governor at $python: set GOVERNOR_PYTHON, or make the venv (python3 -m venv .venv "
        . "&& .venv/bin/pip install -e '.[test]')\n");
    exit(2);
}
Python::$python = $python;
$governor = is_executable(dirname($python) . '/governor') ? [dirname($python) . '/governor'] : [$python, '-m', 'governor'];
$filter = $argv[1] ?? '';

$base = getenv('GOVERNOR_TEST_DIR') ?: sys_get_temp_dir();
$dir = "$base/governor-php-" . bin2hex(random_bytes(4));
mkdir($dir, 0755, true);

$before = get_defined_functions()['user'];
foreach (glob(__DIR__ . '/*_test.php') as $file) {
    require_once $file;
}
$tests = array_values(array_filter(array_diff(get_defined_functions()['user'], $before), function ($f) use ($filter) {
    return strpos($f, 'governortest\\test_') === 0 && ($filter === '' || strpos($f, strtolower($filter)) !== false);
}));

$env = new Env($dir, $governor);
$failed = 0;
try {
    $env->redis = new RedisServer("$dir/redis");
    $env->prefix = newPrefix();
    $env->master = new Master("$dir/master", $governor, $env->url(), $env->prefix, [
        'plain' => ['concurrency' => 2],
        'ordered' => ['concurrency' => 4, 'partitions' => 4],
    ]);
    // the master is up once it has loaded the function library
    $probe = $env->redis->connect();
    waitFor(function () use ($probe, $env) {
        $env->master->assertRunning();
        return (bool)$probe->rawCommand('FUNCTION', 'LIST', 'LIBRARYNAME', \Governor\Client::LIBRARY);
    }, 30, 'the master to load the function library');

    echo '1..' . count($tests) . "\n";
    foreach ($tests as $n => $test) {
        $name = substr($test, strlen('governortest\\'));
        $started = microtime(true);
        try {
            $test($env);
            printf("ok %d - %s (%.2fs)\n", $n + 1, $name, microtime(true) - $started);
        } catch (\Throwable $e) {
            $failed++;
            printf("not ok %d - %s (%.2fs)\n", $n + 1, $name, microtime(true) - $started);
            $where = $e instanceof Failure ? '' : get_class($e) . ' at ' . basename($e->getFile()) . ':' . $e->getLine() . ': ';
            foreach (explode("\n", $where . $e->getMessage()) as $line) {
                echo "#   $line\n";
            }
            if (!$e instanceof Failure) {
                foreach (explode("\n", $e->getTraceAsString()) as $line) {
                    echo "#   $line\n";
                }
            }
        }
    }
} finally {
    $env->stop();
    if ($failed && $env->master) {
        echo "# the master's log (last 40 lines):\n";
        foreach (array_slice(explode("\n", rtrim($env->master->log())), -40) as $line) {
            echo "#   $line\n";
        }
    }
    if (!getenv('KEEP')) {
        exec('rm -rf ' . escapeshellarg($dir));
    } else {
        echo "# kept $dir\n";
    }
}
echo '# ' . (count($tests) - $failed) . ' passed, ' . $failed . " failed\n";
exit($failed ? 1 : 0);
