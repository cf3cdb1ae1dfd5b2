"""Workers do not inherit the variables the config read secrets from (issue 21, item 13): with
``web.token: ${GOVERNOR_WEB_TOKEN}`` (the README's advice), a Redis password in the environment
and a queue running as ``user: nobody``, a job finds neither in ``os.environ`` nor in
``/proc/self/environ``; a command pool's program neither. Other variables still reach jobs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from governor.config import parse_config

from harness import Governor, RedisServer, free_port, wait_for

TOKEN = "s3cret-web-token-0123456789"
PASSWORD = "redis-pass-9876543210"

def test_the_config_knows_which_variables_hold_secrets():
    env = {"GOVERNOR_WEB_TOKEN": TOKEN, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
           "APP_ENV": "production", "PREFIX": "gv"}
    cfg = parse_config({"redis": {"url": "${REDIS_URL}", "prefix": "${PREFIX}"},
                        "metrics": {"listen": "127.0.0.1:9999"}, "web": {"token": "${GOVERNOR_WEB_TOKEN}"},
                        "queues": {"q": {"concurrency": 1, "command": ["sh"], "env": {"A": "${APP_ENV}"}}}},
                       env=env)
    assert cfg.secret_env == ("GOVERNOR_WEB_TOKEN", "REDIS_URL")


@pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as nobody needs root")
def test_jobs_running_as_another_user_do_not_inherit_the_masters_secrets(tmp_path):
    server = RedisServer(tmp_path / "redis", "--requirepass", PASSWORD)
    server.start()
    base = Path(tempfile.mkdtemp(prefix="governor-secrets-"))
    g = None
    try:
        base.chmod(0o755)
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        g = Governor(base, url)
        g.records.chmod(0o777)
        g.add_app("probe")
        cmd_out = g.records / "cmd"
        program = f"{{ env; tr '\\0' '\\n' < /proc/self/environ; }} > {cmd_out}.tmp && mv {cmd_out}.tmp {cmd_out}; exec sleep 60"
        cfg = g.config({"py": {"concurrency": 1},
                        "cmd": {"concurrency": 1, "command": ["/bin/sh", "-c", program]}},
                       user="nobody", metrics={"listen": f"127.0.0.1:{free_port()}"},
                       web={"token": "${GOVERNOR_WEB_TOKEN}"})
        cfg["redis"]["url"] = "${GV_REDIS_URL}"
        cfg["app"]["handlers"] = ["probe:*"]
        g.config_path.write_text(yaml.safe_dump(cfg))
        g.start(env={"GOVERNOR_WEB_TOKEN": TOKEN, "GV_REDIS_URL": url, "APP_KEEPS_THIS": "visible"})
        out = g.records / "py"
        g.client.enqueue("py", "probe:probe", str(out))
        wait_for(out.exists, 10, "the probe job to run")
        wait_for(cmd_out.exists, 10, "the command pool's program to start")
        for seen in (out.read_text(), (g.records / "cmd").read_text()):
            assert TOKEN not in seen and PASSWORD not in seen, seen
            assert "GOVERNOR_WEB_TOKEN" not in seen and "GV_REDIS_URL" not in seen
            assert "visible" in seen  # the rest of the environment is the job's as before
    finally:
        if g is not None:
            g.stop()
        server.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)
