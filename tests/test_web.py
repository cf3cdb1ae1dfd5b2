"""The fleet's page, driven in a real headless Chromium (Debian's chromium and chromium-driver,
through Selenium) as an operator would: read it, check it against `governor status`, click."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import free_port, wait_for

TOKEN = "s3cret-token-0123456789"
XSS = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"

selenium = pytest.importorskip("selenium", reason="pip install -e '.[test]' brings Selenium")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def body_text(browser) -> str:
    """The page's text; '' while it is being replaced (a navigation makes elements stale)."""
    try:
        return browser.find_element(By.TAG_NAME, "body").text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def click(browser, selector: str) -> bool:
    try:
        browser.find_element(By.CSS_SELECTOR, selector).click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


def post(url: str, fields: dict[str, str]) -> tuple[int, str]:
    data = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in fields.items()).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_page_shows_the_fleet_escapes_job_text_and_acts_only_with_the_token(governor, browser, tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    flag = tmp_path / "fixed"
    governor.add_app("webtasks")
    governor.env["TEST_FLAG"] = str(flag)
    governor.start({"mail": {"concurrency": 2, "retry": {"max": 0}}, "idle": {"concurrency": 1}},
                   app={"path": ["."], "handlers": ["tasks:*", "webtasks:*"]},
                   metrics={"listen": listen}, web={"token": TOKEN})
    c = governor.client
    victim = c.enqueue("mail", "webtasks:once_broken", XSS)
    c.enqueue_many("mail", [{"handler": "webtasks:once_broken", "args": [f"plain{i}"]} for i in range(3)])
    c.enqueue("idle", "tasks:record", "later", delay="1h")
    wait_for(lambda: c.counts("mail")["dead"] == 4, 10, "4 dead jobs")

    st = json.loads(subprocess.run([sys.executable, "-m", "governor", "status", "--json", "-c",
                                    str(governor.config_path)], capture_output=True, text=True).stdout)
    browser.get(f"http://{listen}/")  # (read at once: the page reloads itself every 5 s)
    for queue in ("mail", "idle"):
        row = browser.find_element(By.CSS_SELECTOR, f"#queues tr[data-queue='{queue}']")
        for state in ("waiting", "delayed", "active", "dead"):
            shown = row.find_element(By.CSS_SELECTOR, f"td.{state}").text
            assert shown == str(st["queues"][queue][state]), (queue, state, shown)
    hosts = browser.find_element(By.ID, "hosts").text
    assert f":{governor.proc.pid}" in hosts and "mail=2/2" in hosts
    # the attacker's text is shown as text: no script ran, no element was made of it
    assert XSS in browser.find_element(By.ID, "dead").text
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "#dead img") == []
    shot = tmp_path / "governor-web.png"
    browser.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot}")

    action = f"http://{listen}/action"
    fields = {"op": "retry", "queue": "mail", "id": victim}
    assert post(action, fields)[0] == 403  # no token
    assert post(action, {**fields, "token": "wrong-token-0123456789"})[0] == 403
    status, body = post(action, {"token": TOKEN, "op": "explode", "queue": "mail"})
    assert status == 400 and "unknown action" in body
    status, body = post(action, {"token": TOKEN, "op": "retry", "queue": "nope", "id": victim})
    assert status == 400 and "no queue named" in body
    assert c.job(victim)["state"] == "dead"  # nothing changed

    flag.write_text("fixed")  # the handler works now: a retry from the page runs the job
    browser.get(f"http://{listen}/")  # (a fresh load: the page reloads itself every 5 s)
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{victim}'] button[data-op=retry]").click()
    wait_for(lambda: "retried" in body_text(browser), 10, "the retry's answer")
    wait_for(lambda: c.job(victim)["state"] == "done", 10, "the retried job to run")
    assert Path(str(flag) + ".ran").read_text().split("\n")[0] == XSS
    # back on the page (the token kept for this tab): pause the queue
    wait_for(lambda: browser.find_elements(By.ID, "queues"), 10, "the page again")
    wait_for(lambda: click(browser, "#queues tr[data-queue='mail'] button[data-op=pause]"), 10, "the pause button")
    wait_for(lambda: c.paused("mail"), 10, "the queue paused from the page")


def test_without_a_token_the_page_is_read_only(governor, browser):
    listen = f"127.0.0.1:{free_port()}"
    governor.start({"work": {"concurrency": 1}}, metrics={"listen": listen})
    browser.get(f"http://{listen}/")
    assert "read-only" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.CSS_SELECTOR, "form.action") == []
    status, body = post(f"http://{listen}/action", {"token": "anything-at-all-123", "op": "pause",
                                                    "queue": "work"})
    assert status == 403 and "read-only" in body and not governor.client.paused("work")


def test_a_malformed_request_is_refused_and_the_master_lives_on(governor):
    import socket

    listen = f"127.0.0.1:{free_port()}"
    governor.start({"work": {"concurrency": 1}}, metrics={"listen": listen}, web={"token": TOKEN})
    host, port = listen.split(":")
    for length in ("\u00b2", "9" * 5000, "-1", "12345678"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"POST /action HTTP/1.0\r\nContent-Length: {length}\r\n\r\nop=pause".encode("latin-1"))
            answer = s.recv(1024).decode("latin-1")
        assert answer.split()[1] in ("400", "413"), (length, answer)
    assert governor.proc.poll() is None and not governor.client.paused("work")
    with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as resp:
        assert resp.status == 200
