"""The Node producer client (clients/node, npm package governor-client): its own test suite, run
with node's built-in runner (``node --test``), one pytest test per file, so ``pytest -q`` covers it.

The suite is real end to end: it starts its own redis-server and a ``governor run`` master with
this interpreter (``GOVERNOR_PYTHON``), and asks the Python Client itself (clients/node/test/
oracle.py) for the messages, bytes, records and counts the Node client must match. Skipped only
when node or npm is missing (.ci/run installs them); its npm dependencies are installed from
package-lock.json (``npm ci``) when they are not there yet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"
SUITES = ("units.test.js", "validation.test.js", "client.test.js")


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not installed (apt-get install -y nodejs npm; .ci/run installs them)")
    if not (NODE_CLIENT / "node_modules" / "redis").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_CLIENT} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return node


@pytest.mark.parametrize("suite", SUITES)
def test_node_client(node: str, suite: str) -> None:
    env = dict(os.environ, GOVERNOR_PYTHON=sys.executable)
    done = subprocess.run([node, "--test", f"test/{suite}"], cwd=NODE_CLIENT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"node --test test/{suite} failed:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
