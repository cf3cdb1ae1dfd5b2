"""``governor run | check | enqueue | pause | resume | status``: the operator's commands.

Exit codes: 0 success, 1 runtime failure (Redis unreachable, preload failed),
2 bad input (invalid config, bad arguments), as argparse and systemd expect.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
import yaml

from governor.config import Config, ConfigError, command_problem, load_config, mask_url
from governor.ops.status import client_for as _client
from governor.ops.status import gather_status
from governor.ops.terminal import _safe, _table, render_status
from governor.protocol.connection import RedisUnavailable
from governor.protocol.queue import DEFAULT_PRIORITY, Client, NotReplicated

DEFAULT_CONFIG = os.environ.get("GOVERNOR_CONFIG", "/etc/governor/governor.yaml")


def _fail(message: str, code: int = 1) -> int:
    print(f"governor: {message}", file=sys.stderr)
    return code


def _load(path: str, find_master: bool = False) -> Config:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"governor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if find_master and not cfg.explicit_state_dir:
        # an operator's shell lacks the service's RUNTIME_DIRECTORY: look where a master would be
        from governor.config import state_dir_candidates
        from governor.ops.control import SOCKET_NAME
        from governor.protocol.connection import EMBEDDED_SOCKET
        from governor.supervise.statedir import trusted

        candidates = state_dir_candidates(cfg.source)
        for candidate in candidates:
            if any(os.path.exists(os.path.join(candidate, n)) for n in (SOCKET_NAME, EMBEDDED_SOCKET)):
                # a socket in a directory someone else could have planted it in is not a master
                # of ours: never send it a command or a job
                if trusted(candidate, mine=candidate == candidates[-1]):
                    return dataclasses.replace(cfg, state_dir=candidate)
                if candidate == cfg.state_dir:  # the default itself: nowhere else to look
                    print(f"governor: {candidate} holds sockets but is not a state directory only "
                          "you can write in (another user may have planted them); not using it. "
                          "Remove it, or set state_dir", file=sys.stderr)
                    raise SystemExit(1)
                print(f"governor: warning: ignoring {candidate}: not a state directory only its "
                      "owner can write in", file=sys.stderr)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from governor.log import setup_logging
    from governor.supervise.master import Master

    cfg = _load(args.config)
    setup_logging(cfg.log, args.log_level)
    try:
        return Master(cfg).run()
    except RuntimeError as exc:  # embedded redis-server missing or failing
        return _fail(str(exc))
    except ImportError as exc:
        return _fail(f"app.preload failed: {exc}")
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach Redis at {mask_url(cfg.redis.url)}: {exc}")
    except OSError as exc:  # a port or socket we must bind is taken
        return _fail(f"{exc} (metrics.listen {cfg.metrics.listen}, state_dir {cfg.state_dir})")


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    problems = [(q.name, command_problem(q)) for q in cfg.queues.values()]
    problems = [(name, why) for name, why in problems if why]
    if problems:  # (`run` starts all the same: the program may come later; its pool backs off)
        for name, why in problems:
            print(f"governor: {cfg.source}: queues.{name}.command: {why}", file=sys.stderr)
        return 2
    print(f"# {cfg.source}: OK")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False).rstrip())
    return 0


def _json_arg(text: str | None, name: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        print(f"governor: {name} is not valid JSON: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not isinstance(value, kind):
        print(f"governor: {name} must be a JSON {'array' if kind is list else 'object'}, got {text}",
              file=sys.stderr)
        raise SystemExit(2)
    return value


def _undefined_queue(cfg: Config, args: argparse.Namespace, consequence: str, verb: str,
                     doing: str) -> int | None:
    """A typo'd queue name would otherwise act on a queue nobody runs, silently: refuse it
    (exit 2) unless ``--force``; None when the command may go on."""
    if args.queue in cfg.queues:
        return None
    defined = ", ".join(sorted(cfg.queues)) or "none"
    problem = f"queue {args.queue!r} is not defined in {cfg.source} (queues: {defined}); {consequence}"
    if not args.force:
        return _fail(f"{problem}. Use --force to {verb} anyway.", 2)
    print(f"governor: warning: {problem}; {doing} anyway (--force)", file=sys.stderr)
    return None


def cmd_enqueue(args: argparse.Namespace) -> int:
    cfg = _load(args.config, find_master=True)
    refused = _undefined_queue(cfg, args, "no worker would take the job", "enqueue", "enqueuing")
    if refused is not None:
        return refused
    q = cfg.queues.get(args.queue)
    if q is not None and bool(q.partitions) != bool(args.key):
        # (the client registers the config's count in Redis if no master has yet)
        return _fail(f"queue {args.queue!r} is partitioned: every job needs --key" if q.partitions else
                     f"queue {args.queue!r} is not partitioned: --key orders jobs only on a queue with "
                     f"partitions: N", 2)
    spec = {"handler": args.handler, "args": _json_arg(args.args, "--args", list),
            "kwargs": _json_arg(args.kwargs, "--kwargs", dict), "priority": args.priority,
            "delay": args.delay, "timeout": args.timeout, "max_retries": args.max_retries,
            "job_id": args.job_id, "unique": args.unique, "key": args.key}
    try:
        client = _client(cfg)
        job_id = client.enqueue_many(args.queue, [spec])[0]
    except NotReplicated as exc:
        print(exc.ids[0])
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(str(exc), 2)
    except RedisUnavailable as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:
        return _fail(f"Redis at {mask_url(cfg.redis.url)}: {exc}")
    print(job_id)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """``pause`` and ``resume``: the flag is in Redis, so every host obeys it within a second."""
    cfg = _load(args.config, find_master=True)
    pause = args.command == "pause"
    refused = _undefined_queue(cfg, args, "no worker of this config runs it", args.command,
                               "pausing" if pause else "resuming")
    if refused is not None:
        return refused
    try:
        client = _client(cfg)
        changed = client.pause(args.queue) if pause else client.resume(args.queue)
    except RedisUnavailable as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:
        return _fail(f"Redis at {mask_url(cfg.redis.url)}: {exc}")
    state = "paused" if pause else "resumed"
    print(f"queue {_safe(args.queue)} {state}" if changed else
          f"queue {_safe(args.queue)} was already {'paused' if pause else 'running'}")
    return 0


def _job_op(args: argparse.Namespace, op: Callable[[Client], int]) -> int:
    """Runs one job operation against the config's Redis; a bad id, queue or state is a clear
    error (exit 2) that changed nothing."""
    cfg = _load(args.config, find_master=True)
    try:
        return op(_client(cfg))
    except ValueError as exc:
        return _fail(str(exc), code=2)
    except RedisUnavailable as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:
        return _fail(f"Redis at {mask_url(cfg.redis.url)}: {exc}")


def _job_line(j: dict[str, Any]) -> list[str]:
    last = (j.get("errors") or [{}])[-1]
    err = str(last.get("error") or "-").split("\n", 1)[0][:80]
    when = j.get("finished_at") or j.get("started_at") or j.get("enqueued_at")
    return [str(j.get("id")), str(j.get("state")), str(j.get("handler")), str(j.get("attempts", 0)),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-",
            str(j.get("reason") or "-"), err]


def cmd_jobs(args: argparse.Namespace) -> int:
    def op(client: Client) -> int:
        jobs, cursor = client.jobs(args.queue, args.state, args.limit, args.cursor, args.handler, args.search)
        if args.json:
            print(json.dumps({"jobs": jobs, "next": cursor}, indent=2, default=str))
            return 0
        rows = [["ID", "STATE", "HANDLER", "ATTEMPTS", "AT", "REASON", "LAST ERROR"]]
        print(_table(rows + [_job_line(j) for j in jobs]))
        if cursor:
            print(f"more: --cursor {cursor}")
        return 0

    return _job_op(args, op)


def cmd_job(args: argparse.Namespace) -> int:
    def op(client: Client) -> int:
        record = client.job(args.id, args.queue)
        if record is None:
            raise ValueError(f"no such job: {args.id}" + (f" in queue {args.queue!r}" if args.queue else ""))
        if args.json:
            print(json.dumps(record, indent=2, default=str))
            return 0
        for key in ("id", "queue", "handler", "state", "attempts", "reason", "priority", "key", "unique",
                    "enqueued_at", "started_at", "finished_at", "due_at", "run_ms", "args", "kwargs", "result"):
            if record.get(key) not in (None, [], {}):
                value = record[key]
                if key.endswith("_at"):
                    value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
                print(f"{key}: {_safe(json.dumps(value) if isinstance(value, (list, dict)) else value)}")
        for n, e in enumerate(record.get("errors", []), 1):
            detail = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("error", "traceback"))
            print(f"error {n}: {_safe(e.get('error'))} ({_safe(detail)})")
            if e.get("traceback"):
                print("  " + _safe(e["traceback"]).replace("\\n", "\n  ").rstrip())
        return 0

    return _job_op(args, op)


def cmd_retry(args: argparse.Namespace) -> int:
    def op(client: Client) -> int:
        n = client.retry(args.queue, args.ids, all=args.all, handler=args.handler, search=args.search)
        print(f"{n} job(s) of {_safe(args.queue)} back to waiting")
        for job_id, unique, holder in n.skipped:  # left dead: a live job holds their unique key
            print(f"skipped job {_safe(job_id)}: its unique key {_safe(unique)!r} is held by live job "
                  f"{_safe(holder)}", file=sys.stderr)
        return 0

    if not (args.ids or args.all or args.handler or args.search):
        return _fail("name the jobs to retry: their ids, --all, or --handler/--search", code=2)
    return _job_op(args, op)


def cmd_purge(args: argparse.Namespace) -> int:
    def op(client: Client) -> int:
        if args.state == "active":
            raise ValueError("active jobs are running: they cannot be purged")
        client.known_queue(args.queue)
        n = client.counts(args.queue).get(args.state, 0)
        if not args.yes:
            if not sys.stdin.isatty():
                raise ValueError(f"purge deletes {n} {args.state} job(s) of {args.queue!r} for good: "
                                 "confirm with --yes")
            answer = input(f"delete {n} {args.state} job(s) of {_safe(args.queue)} for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        print(f"{client.purge(args.queue, args.state)} {args.state} job(s) of {_safe(args.queue)} deleted")
        return 0

    return _job_op(args, op)


def cmd_cancel(args: argparse.Namespace) -> int:
    def op(client: Client) -> int:
        record = client.job(args.id, args.queue)
        if record is None:
            raise ValueError(f"no such job: {args.id}")
        queue = args.queue or record.get("queue") or ""
        client.cancel(queue, args.id)
        print(f"job {_safe(args.id)} cancelled")
        return 0

    return _job_op(args, op)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config, find_master=True)
    while True:
        st = gather_status(cfg, args.host)
        if args.host:
            st["host"] = args.host
        text = json.dumps(st, indent=2) if args.json else render_status(st)
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="governor", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"YAML config file (default: $GOVERNOR_CONFIG or {DEFAULT_CONFIG})")
        return sp

    r = with_config(sub.add_parser("run", help="run the master in the foreground"))
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)

    with_config(sub.add_parser("check", help="validate the config and print it")).set_defaults(func=cmd_check)

    e = with_config(sub.add_parser("enqueue", help="queue a job and print its id"))
    e.add_argument("queue")
    e.add_argument("handler", help="module:function")
    e.add_argument("--args", help="JSON array of positional arguments")
    e.add_argument("--kwargs", help="JSON object of keyword arguments")
    e.add_argument("--priority", type=int, default=DEFAULT_PRIORITY, help="0-100, lower runs first")
    e.add_argument("--delay", help="run no earlier than this from now, e.g. 30s")
    e.add_argument("--timeout", help="hard time limit for this job, e.g. 5m")
    e.add_argument("--max-retries", type=int)
    e.add_argument("--job-id")
    e.add_argument("--unique", metavar="KEY",
                   help="while a job of the queue with this key is waiting, delayed or active, "
                        "add nothing and print that job's id")
    e.add_argument("--key", help="ordering key (partitioned queues): jobs with the same key run "
                                 "one at a time, in enqueue order")
    e.add_argument("--force", action="store_true",
                   help="enqueue even to a queue this config does not define")
    e.set_defaults(func=cmd_enqueue)

    for name, what in (("pause", "stop every host from starting jobs of a queue (running jobs finish)"),
                       ("resume", "let a paused queue's jobs start again")):
        pr = with_config(sub.add_parser(name, help=what))
        pr.add_argument("queue")
        pr.add_argument("--force", action="store_true", help=f"{name} even a queue this config does not define")
        pr.set_defaults(func=cmd_pause)

    j = with_config(sub.add_parser("jobs", help="list a queue's jobs in one state, newest first"))
    j.add_argument("queue")
    j.add_argument("--state", default="dead", choices=["waiting", "delayed", "active", "dead", "done"])
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--cursor", help="the next page (printed after a full page)")
    j.add_argument("--handler", help="only this handler's jobs")
    j.add_argument("--search", help="only jobs whose arguments or errors contain this text")
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)
    jb = with_config(sub.add_parser("job", help="one job's record: state, attempts, errors, result"))
    jb.add_argument("id")
    jb.add_argument("--queue")
    jb.add_argument("--json", action="store_true")
    jb.set_defaults(func=cmd_job)
    rt = with_config(sub.add_parser("retry", help="dead jobs back to waiting (attempts reset, errors kept)"))
    rt.add_argument("queue")
    rt.add_argument("ids", nargs="*")
    rt.add_argument("--all", action="store_true", help="every dead job of the queue")
    rt.add_argument("--handler", help="the dead jobs of this handler")
    rt.add_argument("--search", help="the dead jobs whose arguments or errors contain this text")
    rt.set_defaults(func=cmd_retry)
    pg = with_config(sub.add_parser("purge", help="delete every job of a state, for good"))
    pg.add_argument("queue")
    pg.add_argument("--state", required=True, choices=["waiting", "delayed", "dead", "done", "active"])
    pg.add_argument("--yes", action="store_true", help="do not ask")
    pg.set_defaults(func=cmd_purge)
    cn = with_config(sub.add_parser("cancel", help="remove a waiting or delayed job before it runs"))
    cn.add_argument("id")
    cn.add_argument("--queue")
    cn.set_defaults(func=cmd_cancel)

    s = with_config(sub.add_parser("status", help="queues, pools and workers"))
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="refresh in place")
    s.add_argument("--interval", type=float, default=1.0)
    s.add_argument("--host", metavar="NAME", help="one master's pools and workers, from the fleet registry "
                                                  "(its host name, or host:pid)")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
