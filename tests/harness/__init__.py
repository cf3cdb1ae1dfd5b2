"""The tests' harness: real redis-servers, a real `governor run` per test, and small helpers.

Nothing here is mocked (the design's rule): ``redis`` starts the real binary on a free
loopback port, ``governor`` runs the real CLI in a subprocess driven with real signals and
copies the handler modules of ``tests/apps/`` into the test's directory, ``helpers`` holds
what several test files need (waiting, the CLI, one raw reserve). conftest.py turns these into
fixtures; tests import the names from here (or, as before, from conftest).
"""

from harness.governor import APPS, Governor, copy_app
from harness.helpers import cli, dead_lettered, free_port, http_get, reserve, wait_for
from harness.redis import RedisServer, Sentinel

__all__ = ["APPS", "Governor", "RedisServer", "Sentinel", "cli", "copy_app", "dead_lettered", "free_port",
           "http_get", "reserve", "wait_for"]
