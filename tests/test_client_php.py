"""The PHP producer client (clients/php): its own suite, clients/php/tests/run.php, run by php-cli.

That suite starts its own redis-server and a real `governor run` master (this venv's governor),
enqueues from PHP, and compares every validation message, payload, record and count with this
package's Client, run in a subprocess. It is skipped only when php-cli or its redis extension
(Debian: php-cli, php-redis) is missing; .ci/run installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parent.parent / "clients" / "php" / "tests" / "run.php"


def _php() -> str:
    php = shutil.which("php")
    if php is None:
        pytest.skip("php-cli is not installed (apt-get install php-cli php-redis; .ci/run installs them)")
    probe = subprocess.run([php, "-r", "echo extension_loaded('redis') ? 'yes' : 'no';"],
                           capture_output=True, text=True, timeout=30)
    if probe.stdout.strip() != "yes":
        pytest.skip("php-cli has no redis extension (apt-get install php-redis; .ci/run installs it)")
    return php


def test_php_client_suite(tmp_path: Path) -> None:
    php = _php()
    env = dict(os.environ, GOVERNOR_PYTHON=sys.executable, GOVERNOR_TEST_DIR=str(tmp_path))
    proc = subprocess.run([php, str(SUITE)], capture_output=True, text=True, timeout=600, env=env)
    report = proc.stdout + proc.stderr
    planned = re.search(r"^1\.\.(\d+)$", proc.stdout, re.MULTILINE)
    assert planned and int(planned.group(1)) >= 20, f"the PHP suite did not run its tests:\n{report}"
    assert proc.returncode == 0, f"the PHP client's suite failed:\n{report}"
    passed = re.findall(r"^ok \d+ ", proc.stdout, re.MULTILINE)
    assert len(passed) == int(planned.group(1)), report
