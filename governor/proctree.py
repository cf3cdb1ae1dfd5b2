"""A worker's process tree: measure all of it, kill all of it, keep it whole.

The tree is the kernel's own: ``/proc/PID/task/TID/children`` lists what each
thread forked or adopted. A job's grandchild that starts a session of its own
(``start_new_session=True``, ``setsid``) leaves the worker's process group, so
``killpg`` alone misses it; it does not leave the tree. One that double-forks
(its parent exits) would leave the tree too, re-parented to init, were the
worker not a *child subreaper*: then it is re-parented to the worker instead,
so its memory still counts and the kill still finds it.

Three pieces, each usable alone:

- ``descendants`` and ``kill_tree``, run by the master on its workers;
- ``reap_adopted``, run in the worker (as a SIGCHLD handler) for the orphans it adopts;
- ``bind_to_parent``, run once in a new worker, which also makes the tree die
  with a SIGKILLed master, without cgroups (see its docstring for how, and its limits).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: the sentry stays small
    from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_STOPPED = frozenset("TtZXx")  # stopped, traced, zombie, dead: a task in these cannot fork
SETTLE = 0.1  # seconds kill_tree waits at most, in all, for processes to stop before killing anyway


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from the kernel's children lists."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for tid in _tasks(p):
            todo.extend(_children(p, tid))
    return found


def kill_tree(pid: int, pidfd: int | None = None, settle: float = SETTLE) -> list[int]:
    """SIGKILL ``pid`` and every descendant, returning the pids found (``pid`` first).

    A tree that keeps forking while it is killed is frozen first: each process
    is sent SIGSTOP and its children are read only once every one of its
    threads is seen stopped (a stopped task can neither fork nor reap), then
    the whole tree is walked again until no new process appears, and only
    then is everything SIGKILLed, deepest first, plus the process group as
    before. A pid is therefore never signalled after its process could have
    been reaped and the number reused: a stopped parent cannot reap, and
    ``pid`` itself must be safe from reuse (the caller's unreaped child, or
    ``pidfd`` names it). The wait for stops is bounded by ``settle`` in all
    (a task in uninterruptible sleep stops only when it leaves it); past it
    the kill goes ahead with what was found. A worker with no children costs
    a handful of syscalls.
    """
    if not _send(pid, signal.SIGSTOP, pidfd):
        return []  # already reaped: nothing under that number is ours any more
    _killpg(pid, signal.SIGSTOP)  # the common case, plain subprocesses, frozen in one call
    deadline = time.monotonic() + settle
    found, seen = [pid], {pid}
    unstoppable: set[int] = set()  # not ours to signal (EPERM): do not wait for them
    fresh = [pid]
    while fresh:
        for p in fresh:
            if p not in unstoppable:
                _wait_stopped(p, deadline)
        fresh = []
        for p in found:
            for tid in _tasks(p):
                for c in _children(p, tid):
                    if c not in seen:
                        seen.add(c)
                        found.append(c)
                        fresh.append(c)
                        if not _send(c, signal.SIGSTOP):
                            unstoppable.add(c)
    for p in reversed(found[1:]):
        _send(p, signal.SIGKILL)
    _killpg(pid, signal.SIGKILL)
    _send(pid, signal.SIGKILL, pidfd)
    return found


def reap_adopted() -> int:
    """Reap this subreaper's exited children that it provably did not fork; returns how many.

    An adopted orphan left as a zombie holds a pid (and a slot of the user's
    RLIMIT_NPROC, and a place in every tree walk) until its parent reaps it,
    and nothing in job code ever will. A blanket ``waitpid(-1)`` is wrong: it
    would steal the exit status of the job's own children (``subprocess``
    then reports 0, a ``multiprocessing.Pool`` never sees its worker exit).
    So only a child whose session is neither ours nor its own is reaped: a
    child we forked starts in our session and can only move to a session it
    leads (``setsid``), so such a child must have been adopted, as the
    classic double-forked daemon is. Other orphans (``sh -c 'cmd &'``) cannot
    be told from our own children; their zombies wait for the worker to exit.
    """
    me = os.getpid()
    try:
        own_session = os.getsid(0)
    except OSError:
        return 0
    reaped = 0
    for tid in _tasks(me):
        for c in _children(me, tid):
            fields = _stat(c)
            if len(fields) > 3 and fields[0] == "Z" and int(fields[3]) not in (own_session, c):
                try:
                    if os.waitpid(c, os.WNOHANG)[0] == c:
                        reaped += 1
                except ChildProcessError:
                    pass
    return reaped


_reaper = 0  # the pid that installed _on_sigchld: a fork of it inherits the handler, not the role


def _on_sigchld(signum: int, frame: Any) -> None:
    if os.getpid() != _reaper:
        return  # a job's own fork is no subreaper, and may setsid after forking: the rule fails there
    try:
        reap_adopted()
    except (OSError, ValueError):
        pass  # a signal handler must not raise into whatever job code it interrupted


def bind_to_parent(parent: int, title: str = "") -> bool:
    """Make this new worker, and every process it ever has below it, die with ``parent``.

    Without cgroups the kernel offers nothing that kills a whole tree when one
    process dies: ``PR_SET_PDEATHSIG`` covers only the process that sets it,
    and once a SIGKILLed worker is gone its children are re-parented to init,
    out of reach. A catchable death signal whose handler kills the tree would
    lose the one guarantee that matters (a worker blocked in C, or with that
    signal masked, would keep running its job after the master is gone, while
    the job's lease expires and another host runs it too). So:

    - the worker's death signal is SIGSTOP, which like SIGKILL cannot be
      caught, blocked or ignored: the moment the master dies the worker stops
      running job code, and, still alive, keeps its tree;
    - a *sentry* waits, without polling, on pidfds of the master and of this
      worker; when the master dies it runs ``kill_tree`` on the stopped
      worker, and when the worker exits it exits too. It is a fresh
      ``python -I -S`` running this file (about 5 MiB private, 25 ms to start,
      once per worker), double-forked into a session of its own: outside the
      tree, so neither measured nor killed with it, and not a fork of the
      worker, which would pin every page the worker and the master rewrite.
      The worker waits until the sentry reports that it is watching.

    Limits, honestly: if the sentry is killed on its own (by hand, by the OOM
    killer) and the master then dies, the worker stays stopped (it runs no
    more job code, but holds its memory) and its children run on, until
    someone kills them. Where no sentry can be had (no pidfds, no
    ``sys.executable``, it did not come up) or none is needed (the master is
    pid 1 of its namespace, whose death kills the namespace), the death signal
    stays SIGKILL, as before: the worker dies, its grandchildren may not. A
    sentry that exits is re-parented to init (or to the nearest subreaper
    above the master), which must reap it, as it reaps any orphan. Returns
    whether the sentry is in place.

    Then the worker becomes a child subreaper, and reaps the orphans it
    adopts with ``reap_adopted`` from a SIGCHLD handler installed with
    SA_RESTART, so job code sees no extra EINTR.
    """
    sentry = parent != 1 and _start_sentry(parent, title)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGSTOP if sentry else signal.SIGKILL)
    if _prctl(_PR_SET_CHILD_SUBREAPER, 1):  # after the sentry's double fork: it must not come back to us
        global _reaper
        _reaper = os.getpid()
        signal.signal(signal.SIGCHLD, _on_sigchld)
        signal.siginterrupt(signal.SIGCHLD, False)
    return sentry


# -- the sentry -------------------------------------------------------------------------------

SENTRY_START = 5.0  # seconds a new worker waits for its sentry to be up before doing without one


def _start_sentry(parent: int, title: str) -> bool:
    """Starts the sentry and returns once it is watching (or has failed)."""
    executable = sys.executable
    if not executable:
        return False
    try:
        parent_fd = os.pidfd_open(parent)
    except (OSError, AttributeError):
        return False
    fds = [parent_fd]
    try:
        if os.getppid() != parent:  # the parent died first: the fd may name another process
            return False
        worker = os.getpid()
        worker_fd = os.pidfd_open(worker)
        fds.append(worker_fd)
        ready_r, ready_w = os.pipe()
        fds += [ready_r, ready_w]
        argv = [executable, "-I", "-S", os.path.abspath(__file__),
                str(parent_fd), str(worker_fd), str(ready_w), str(worker), title]
        middle = os.fork()
        if middle == 0:  # pragma: no cover - runs in the forked children
            try:
                os.setsid()  # no terminal's signals, and out of the worker's process group
                if os.fork() == 0:
                    for fd in (parent_fd, worker_fd, ready_w):
                        os.set_inheritable(fd, True)
                    for sig in (signal.SIGINT, signal.SIGHUP):  # ignored in the worker: exec keeps that
                        signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # blocked since the master's fork
                    os.execv(executable, argv)
                os._exit(0)
            finally:
                os._exit(1)
        os.close(ready_w)
        fds.remove(ready_w)
        _, status = os.waitpid(middle, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return False
        # the worker must not count on a sentry that never came up: it would stay stopped
        if not select.select([ready_r], [], [], SENTRY_START)[0]:
            return False
        return os.read(ready_r, 1) == b"1"
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def _sentry(parent_fd: int, worker_fd: int, ready_fd: int, worker: int) -> None:  # pragma: no cover
    """The sentry's whole life, in a fresh interpreter (a forked one would pin, page by page, the
    memory the worker and the master rewrite): sleep until the master or the worker is gone."""
    _prctl(_PR_SET_NAME, b"governor-sentry")
    poller = select.poll()
    poller.register(parent_fd, select.POLLIN)
    poller.register(worker_fd, select.POLLIN)
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    ready = {fd for fd, _ in poller.poll()}  # EINTR is retried (PEP 475)
    if parent_fd in ready:
        kill_tree(worker, pidfd=worker_fd)


# -- /proc and signals ------------------------------------------------------------------------

def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _children(pid: int, tid: str) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _stat(pid: int, tid: str | None = None) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as fh:
            return fh.read().rpartition(b")")[2].decode("ascii", "replace").split()
    except OSError:
        return []


def _wait_stopped(pid: int, deadline: float) -> None:
    """Until every thread of ``pid`` is stopped (or gone), or the deadline passes."""
    pause = 0.0002
    while True:
        tasks = _tasks(pid)
        running = [t for t in tasks if (_stat(pid, t) or ["X"])[0] not in _STOPPED]
        if not running and _tasks(pid) == tasks:  # and no thread was cloned meanwhile
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(pause)  # let it run: a task stops in its own context
        pause = min(pause * 2, 0.005)


def _send(pid: int, sig: int, pidfd: int | None = None) -> bool:
    """Whether the signal was delivered: False if the process is gone or not ours to signal."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
        return True
    except OSError:
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _prctl(option: int, value: Any) -> bool:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


if __name__ == "__main__":  # the sentry, exec'd by _start_sentry as: python -I -S proctree.py FDS... PID TITLE
    _sentry(*(int(a) for a in sys.argv[1:5]))
