"""The fleet's page at ``/`` on metrics.listen: what ``governor status`` shows, for a browser.

Server-rendered HTML, no external asset (it works offline, on a phone), refreshing itself
every REFRESH seconds; every value is HTML-escaped, because job arguments and errors are
text anyone who can enqueue controls. Read-only unless ``web.token`` is set: then retry and
delete (a dead job), pause and resume (a queue) are POSTs to ``/action`` carrying the token
(compared in constant time); no token configured, or a wrong one, is 403 and changes
nothing. The token field is the page's one piece of JavaScript: it keeps what the operator
typed (sessionStorage, this tab only) across the refreshes and copies it into the form sent.

The view is read from Redis by governor.ops.webview in bounded steps the master's loop takes
between its timers, at most once a second (CACHE) however many browsers look; a request
waits for the view under way (its connection parked, the loop free), never the loop for it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import parse_qs

from governor.config import QueueConfig
from governor.ops.httpd import Request
from governor.ops.status import MasterStatus
from governor.ops.webview import CACHE, PageView, ViewBuilder
from governor.protocol.queue import Client
from governor.units import format_age, format_size

REFRESH = 5  # seconds between the page's own reloads
HTML = "text/html; charset=utf-8"
OPS = ("retry", "delete", "pause", "resume")
TEXT_SHOWN = 2000  # characters of one error, id or name shown (the rest: "...")
RUNNING_SHOWN = 50  # running jobs listed per master


def _e(value: Any, limit: int = TEXT_SHOWN) -> str:
    text = "-" if value is None else str(value)
    return escape(text if len(text) <= limit else text[:limit] + "...", quote=True)


class WebPage:
    def __init__(self, client: Client, token: str | None, reachable: Callable[[], bool],
                 queues: Callable[[], list[QueueConfig]],
                 local: Callable[[], dict[str, Any]], me: tuple[str, Callable[[], MasterStatus]]) -> None:
        """``queues``: the queues this master's config defines; ``local``: this master's own
        figures (oldest wait per queue, from its last pass); ``me``: this master's name in the
        fleet registry and its live record (fresher than the one it last wrote there)."""
        self.client = client
        self.token = token
        self.reachable = reachable  # the master's last word on Redis: no page call waits for a dead one
        self.views = ViewBuilder(client, queues, local, me)
        self.on_view: Callable[[], None] = lambda: None  # the server's resume: waiting pages are answered

    # -- the loop's side ---------------------------------------------------------------

    def busy(self) -> bool:
        """A view is being built: the loop should come back at once for its next step."""
        return self.views.building

    def step(self) -> None:
        """One bounded step of the view under way (the loop calls it once per pass)."""
        if self.views.step():
            self.on_view()

    # -- GET / -------------------------------------------------------------------------

    def page(self) -> tuple[int, str, bytes] | None:
        """The page from a view at most CACHE old; None (answered when the view under way is
        built) when there is none."""
        now = time.monotonic()
        failed = self.views.failed
        if failed and now - failed[0] < CACHE:  # Redis away: say so (for a second), the page keeps refreshing
            return 503, HTML, self._frame(f"<p class=bad>Redis did not answer: {_e(failed[1])}</p>").encode()
        if not self.reachable():
            return 503, HTML, self._frame("<p class=bad>Redis did not answer: the master cannot reach it "
                                          "now</p>").encode()
        v = self.views.fresh(now)
        if v is None:
            self.views.start()
            return None
        body = [self._summary(v), self._queues(v), self._hosts(v), self._dead(v)]
        return 200, HTML, self._frame("".join(body)).encode()

    def _frame(self, body: str) -> str:
        token = ("<p class=token><label>token <input id=token type=password autocomplete=off "
                 "placeholder='web.token, for actions'></label></p>") if self.token else (
            "<p class=muted>read-only: set web.token in the config to retry, delete, pause and resume</p>")
        return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<meta http-equiv=refresh content="{REFRESH}">
<title>governor</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:8px;max-width:1200px;color:#222}}
h1{{font-size:20px;margin:4px 0}} h2{{font-size:16px;margin:16px 0 4px}}
.scroll{{overflow-x:auto}} table{{border-collapse:collapse;width:100%}}
th,td{{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top;white-space:nowrap}}
td.err{{white-space:pre-wrap;word-break:break-word;max-width:420px;font-family:monospace;font-size:12px}}
.num{{text-align:right}} .bad{{color:#b00020;font-weight:600}} .muted{{color:#777}}
form{{display:inline;margin:0}} button{{font-size:12px;padding:2px 6px}}
</style></head><body>
<h1>governor</h1>
{token}
{body}
<script>
(function () {{
  var field = document.getElementById('token');
  if (!field) return;
  field.value = sessionStorage.getItem('governor-token') || '';
  field.addEventListener('input', function () {{ sessionStorage.setItem('governor-token', field.value); }});
  document.querySelectorAll('form.action').forEach(function (form) {{
    form.addEventListener('submit', function () {{ form.elements.token.value = field.value; }});
  }});
}})();
</script>
</body></html>"""

    def _action(self, op: str, queue: str, job: str = "") -> str:
        if not self.token:
            return ""
        jid = f"<input type=hidden name=id value='{_e(job)}'>" if job else ""
        return (f"<form class=action method=post action=/action><input type=hidden name=token>"
                f"<input type=hidden name=op value={op}><input type=hidden name=queue value='{_e(queue)}'>"
                f"{jid}<button type=submit data-op={op}>{op}</button></form>")

    @staticmethod
    def _summary(v: PageView) -> str:
        masters = v["fleet"]
        workers = [w for m in masters for p in m.get("pools") or [] for w in p.get("workers", [])]
        busy = sum(1 for w in workers if w.get("state") == "busy")
        readable = [q for q in v["queues"].values() if "error" not in q]
        waiting = sum(q["waiting"] for q in readable)
        dead = sum(q["dead"] for q in readable)
        return (f"<p id=summary>{len(masters)} master(s), {len(workers)} worker(s), {busy} busy; "
                f"{waiting} waiting, {dead} dead; as of {_e(time.strftime('%H:%M:%S', time.localtime(v['at'])))}</p>")

    def _queues(self, v: PageView) -> str:
        rows = []
        for name, q in v["queues"].items():
            if "error" in q:  # (registry entries any client can write: shown, never used)
                rows.append(f"<tr class=unreadable data-queue='{_e(name)}'><td>{_e(name)}</td>"
                            f"<td colspan=11 class=bad>unreadable: {_e(q['error'])}</td></tr>")
                continue
            parts = q.get("partitions")
            part = "-"
            if parts:
                part = f"{parts['count']}, held by {len(parts['holders'])}"
                if parts["unheld"]:
                    part += f", <span class=bad>{len(parts['unheld'])} unheld</span>"
            toggle = self._action("resume" if q["paused"] else "pause", name)
            rate = f"{q['rate']:.1f}/s" if q.get("rate") is not None else None
            rows.append(
                f"<tr data-queue='{_e(name)}'><td>{_e(name)}</td>"
                + "".join(f"<td class='num {k}'>{_e(q[k])}</td>" for k in ("waiting", "delayed", "active", "dead",
                                                                           "done_total"))
                + f"<td>{_e(format_age(q.get('oldest_age')))}</td>"
                + f"<td class='num rate'>{_e(rate)}</td>"
                + f"<td>{_e(q.get('limits') or '-')}</td>"
                + f"<td>{'<span class=bad>paused</span>' if q['paused'] else 'no'}</td><td>{part}</td>"
                + f"<td>{toggle}</td></tr>")
        return ("<h2>Queues</h2><div class=scroll><table id=queues><tr><th>queue</th><th>waiting</th>"
                "<th>delayed</th><th>active</th><th>dead</th><th>done</th><th>oldest wait</th><th>rate</th>"
                "<th>limits</th><th>paused</th>"
                "<th>partitions</th><th></th></tr>" + "".join(rows) + "</table></div>" + self._registry(v))

    @staticmethod
    def _registry(v: PageView) -> str:
        notes = []
        if v.get("unreadable"):
            notes.append(f"{len(v['unreadable'])} unreadable queue name(s) in the registry, skipped: "
                         + ", ".join(_e(n, 400) for n in v["unreadable"][:20]))
        if v.get("more_queues"):
            notes.append(f"{v['more_queues']} more queue(s) registered by producers, not shown")
        if v.get("unread"):
            notes.append(f"{v['unread']} more registry entries, not read")
        return "".join(f"<p class=bad>{n}</p>" for n in notes)

    @staticmethod
    def _hosts(v: PageView) -> str:
        rows = []
        for rec in v["fleet"]:
            if rec.get("error"):  # (a record of the wrong shape: fleet() says why, nothing of it is used)
                rows.append(f"<tr class=unreadable><td>{_e(rec.get('id'))}</td><td colspan=7 class=bad>"
                            f"{_e(rec['error'])}</td></tr>")
                continue
            m = rec.get("master") or {}
            pools = rec.get("pools") or []
            workers = [w for p in pools for w in p.get("workers", [])]
            # a worker running several jobs at once (jobs_per_worker) lists them all
            running = [j for w in workers for j in (w["jobs"] if isinstance(w.get("jobs"), list)
                                                    else [w["job"]] if w.get("job") else [])]
            jobs = [f"{j.get('handler')} {j['id']}" for j in running]
            if len(jobs) > RUNNING_SHOWN:
                jobs = [*jobs[:RUNNING_SHOWN], f"... and {len(jobs) - RUNNING_SHOWN} more"]
            sizes = " ".join(f"{p.get('queue')}={p.get('actual')}/{p.get('desired')}" for p in pools)
            rows.append(
                f"<tr><td>{_e(m.get('host'))}:{_e(m.get('pid'))}</td><td>{_e(m.get('version'))}</td>"
                f"<td>{_e(format_age(m.get('uptime')))}</td><td>{_e(sizes)}</td>"
                f"<td class=num>{len(workers)}</td><td class=num>{len(running)}</td>"
                f"<td class=num>{_e(format_size(sum(w.get('rss') or 0 for w in workers)))}</td>"
                f"<td class=err>{_e(chr(10).join(jobs) or '-')}</td></tr>")
        return ("<h2>Hosts</h2><div class=scroll><table id=hosts><tr><th>master</th><th>version</th><th>up</th>"
                "<th>pools</th><th>workers</th><th>jobs running</th><th>memory</th><th>running</th></tr>"
                + "".join(rows) + "</table></div>")

    def _dead(self, v: PageView) -> str:
        rows = []
        for name, q in v["queues"].items():
            for j in q.get("dead_jobs", []):
                err = j["error"]
                rows.append(
                    f"<tr class=dead data-job='{_e(j['id'])}'><td>{_e(name)}</td><td>{_e(j['id'])}</td>"
                    f"<td>{_e(j.get('handler'))}</td><td>{_e(j.get('reason'))}</td><td class=num>{_e(j.get('attempts'))}</td>"
                    f"<td class=err>{_e(err)}</td><td>{self._action('retry', name, j['id'])}"
                    f"{self._action('delete', name, j['id'])}</td></tr>")
        if not rows:
            return "<h2>Dead jobs</h2><p class=muted>none</p>"
        return ("<h2>Dead jobs</h2><div class=scroll><table id=dead><tr><th>queue</th><th>job</th><th>handler</th>"
                "<th>reason</th><th>attempts</th><th>last error</th><th></th></tr>" + "".join(rows) + "</table></div>")

    # -- POST /action --------------------------------------------------------------------

    def action(self, req: Request) -> tuple[int, str, bytes]:
        """One action from a form: the token first, then the fields; any refusal says why and
        changes nothing."""
        if not self.token:
            return self._answer(403, "read-only: no web.token is configured, so no action is allowed")
        if not req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._answer(400, "expected a form (application/x-www-form-urlencoded)")
        try:
            form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8"), strict_parsing=True,
                                                  max_num_fields=8).items()}
        except (ValueError, UnicodeDecodeError):
            return self._answer(400, "malformed form")
        if not hmac.compare_digest(form.get("token", "").encode(), self.token.encode()):
            return self._answer(403, "wrong or missing token: nothing changed")
        op, queue, job = form.get("op", ""), form.get("queue", ""), form.get("id", "")
        if op not in OPS:
            return self._answer(400, f"unknown action {op!r} (expected {', '.join(OPS)})")
        if not self.reachable():
            return self._answer(503, "Redis is unreachable from this master now: nothing changed")
        try:
            self.client.known_queue(queue)
            if op in ("retry", "delete") and not job:
                raise ValueError(f"{op} needs a job id")
            if op == "retry":
                self.client.retry(queue, [job])
                said = f"job {job} retried"
            elif op == "delete":
                self.client.delete(queue, job)
                said = f"job {job} deleted"
            elif op == "pause":
                self.client.pause(queue)
                said = f"queue {queue} paused"
            else:
                self.client.resume(queue)
                said = f"queue {queue} resumed"
        except ValueError as exc:
            return self._answer(400, str(exc))
        self.views.view = None  # the next page shows it: a view gathered after it
        self.views.start(restart=True)
        return self._answer(200, said)

    @staticmethod
    def _answer(status: int, message: str) -> tuple[int, str, bytes]:
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
                f"content='width=device-width, initial-scale=1'><meta http-equiv=refresh content='1; url=/'>"
                f"<title>governor</title></head><body><p id=result class={'ok' if status == 200 else 'bad'}>"
                f"{_e(message)}</p><p><a href=/>back</a></p></body></html>")
        return status, HTML, page.encode()
