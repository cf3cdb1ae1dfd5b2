"""Runs in the worker child, between fork and its first job: what the master hands over
(``WorkerSpec``), and undoing what fork copied that the child must not keep (signals, the
master's descriptors, its priority, the secrets in its environment, root).

``main`` is the child's entry point; the loop it starts is ``worker.Worker`` (or a command
pool's ``command.CommandWorker``), handed in as ``runner``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from governor.config import AppConfig, QueueConfig, TlsConfig
from governor.protocol.client_base import DEFAULT_MAX_PAYLOAD
from governor.protocol.keys import NO_RULES
from governor.protocol.limits import Rules
from governor.supervise import proctree
from governor.supervise.channel import WorkerEnd
from governor.supervise.environ import forget_environment
from governor.supervise.scoreboard import Scoreboard

log = logging.getLogger("governor.worker")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, handed over by fork (never serialised)."""

    queue: QueueConfig
    app: AppConfig
    redis_url: str = field(repr=False)  # may hold a password
    prefix: str
    lease: float
    index: int
    master_pid: int
    max_jobs: int | None = None  # this worker's own, jittered, recycle limits
    max_age: float | None = None
    tls: TlsConfig | None = None
    user: str | None = None  # drop to this user/group after fork, before anything else runs
    group: str | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD  # a larger payload found in Redis is dead-lettered
    max_result: int = 64 * 1024  # a larger result is not kept (the record says so)
    sentry: bool = False  # the master has a sentry to kill our tree if it dies (proctree.Sentry)
    board: Scoreboard | None = None  # shared lease state, read by the sentry (scoreboard.py)
    rules: Rules = NO_RULES  # the queue's fleet-wide concurrency and rate limits
    limiters: Mapping[str, Any] = field(default_factory=dict)  # named limiters, for governor.limit()
    slot: int = -1  # ours in it
    held: Any = None  # partitioned queues: the partitions our master holds (partitions.HeldTable)
    hint_key: str = ""  # ... and the list our master's hints for them arrive on
    wait: tuple[int, float] = (0, 0.0)  # redis.wait: replicas each settle waits for, and how long
    nice: int | None = None  # the scheduling priority governor was started with (the master's is raised)
    shutdown_timeout: float = 30.0  # a command pool's program gets this long after stop_signal
    secret_env: tuple[str, ...] = ()  # variables the config read secrets from: not for job code



def main(spec: WorkerSpec, sock: socket.socket, inherited_fds: Iterable[int],
         runner: Callable[[WorkerSpec, WorkerEnd], Any]) -> NoReturn:
    """Entry point in the forked child; never returns. ``runner``: the worker class
    (worker.Worker, or a command pool's command.CommandWorker); its ``run()`` is the exit code."""
    code = 0
    channel = WorkerEnd(sock)
    try:
        _detach_from_master(spec, inherited_fds)
        code = runner(spec, channel).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        log.exception("worker %s[%d] crashed", spec.queue.name, spec.index)
        # the master shows this in `governor status` while the pool backs off
        channel.send("fatal", "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000])
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _detach_from_master(spec: WorkerSpec, inherited_fds: Iterable[int]) -> None:
    """Undo what fork copied from the master that the child must not keep."""
    if spec.board is not None:
        spec.board.narrow(spec.slot)  # (before its descriptor is closed below)
    signal.set_wakeup_fd(-1)  # else our signals would wake the master's loop
    if spec.nice is not None:
        proctree.restore_priority(spec.nice)  # jobs run at the operator's priority, not the master's
    try:
        os.setpgid(0, 0)  # own process group: the master can kill us with our grandchildren
    except OSError:
        pass
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the master decides what those mean
    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    import resource  # before the switch: the new user may not be able to read the standard library

    forget_environment(spec.secret_env)
    _drop_privileges(spec.user, spec.group)  # first: a credential change clears PDEATHSIG
    # Die with the master: stopped, for its sentry to kill with our whole tree; or, with no
    # sentry, killed outright (then our job's children may outlive us).
    proctree.set_death_signal(signal.SIGSTOP if spec.sentry else signal.SIGKILL)
    if os.getppid() != spec.master_pid:  # the master died before prctl took effect
        os._exit(1)
    proctree.become_subreaper()  # adopt (and reap) the orphans of our jobs
    hard = spec.queue.settings.memory.hard
    if spec.queue.settings.memory.rlimit and hard:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user``/``group`` for good (setgroups, setgid, then setuid), before any job code."""
    if not user and not group:
        return
    import grp
    import pwd

    pw = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else (pw.pw_gid if pw else os.getgid())
    if os.geteuid() != 0:
        if (pw is None or pw.pw_uid == os.geteuid()) and gid == os.getegid():
            return  # already who we should be
        raise PermissionError(f"cannot switch to user {user!r} group {group!r}: the master is not root")
    os.setgroups([gid])
    os.setgid(gid)
    if pw:
        os.setuid(pw.pw_uid)
        os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
