"""A worker's process tree: measure all of it, kill all of it, keep it whole.

The tree is the kernel's own: ``/proc/PID/task/TID/children`` lists what each
thread forked or adopted. A job's grandchild that starts a session of its own
(``start_new_session=True``, ``setsid``) leaves the worker's process group, so
``killpg`` alone misses it; it does not leave the tree. One that double-forks
(its parent exits) would leave the tree too, re-parented to init, were the
worker not a *child subreaper*: then it is re-parented to the worker instead,
so its memory still counts and the kill still finds it.

Four pieces, each usable alone:

- ``descendants`` and ``kill_tree``, run by the master on its workers;
- ``become_subreaper``, run once in a new worker, and ``reap_adopted``, run
  there (as a SIGCHLD handler) for the orphans it adopts;
- the sentry, the master's one helper process that makes every worker's tree
  die with a SIGKILLed master, without cgroups, and ``set_death_signal``,
  which the worker pairs with it.

The sentry is this very file run as a script (``_sentry`` below): ``python -I
-S proctree.py``, isolated, so that it stays small and cannot be broken by the
master's path or packages. It can therefore import nothing of governor (the
scoreboard it reads is loaded from its file), and what it runs (``kill_tree``,
``freeze_tree``, ``thaw_tree`` and the /proc helpers under them) must be here,
in the one file it executes. The master's side of it (start it, hand it
workers, close it: ``Sentry``) is ordinary master code and lives in
governor/supervise/sentry.py, whose docstring tells how it all works and its
limits.

Runs in: master, worker and the sentry (which runs this very file).
"""

from __future__ import annotations

# ctypes here, not at first use: a worker calls prctl after dropping privileges, when it may no
# longer be able to read the standard library
import ctypes
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time (type checkers know this name): the
if TYPE_CHECKING:  # sentry stays small
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


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (forked or adopted), from the kernel's lists."""
    return [c for tid in _tasks(pid) for c in _children(pid, tid)]


def freeze_tree(pid: int, pidfd: int | None = None, settle: float = SETTLE) -> list[int]:
    """SIGSTOP ``pid`` and every descendant, returning the pids found (``pid`` first; empty
    if ``pid`` is gone).

    Each process is sent SIGSTOP and its children are read only once every one
    of its threads is seen stopped (a stopped task can neither fork nor reap),
    then the whole tree is walked again until no new process appears. A pid
    is therefore never signalled after its process could have been reaped and
    the number reused: a stopped parent cannot reap, and ``pid`` itself must
    be safe from reuse (the caller's unreaped child, or ``pidfd`` names it).
    The wait for stops is bounded by ``settle`` in all (a task in
    uninterruptible sleep stops only when it leaves it). A worker with no
    children costs a handful of syscalls.
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
    return found


def kill_tree(pid: int, pidfd: int | None = None, settle: float = SETTLE) -> list[int]:
    """SIGKILL ``pid`` and every descendant, returning the pids found (``pid`` first).

    A tree that keeps forking while it is killed is frozen first (``freeze_tree``),
    then everything is SIGKILLed, deepest first, plus the process group.
    """
    found = freeze_tree(pid, pidfd, settle)
    if not found:
        return []
    for p in reversed(found[1:]):
        _send(p, signal.SIGKILL)
    _killpg(pid, signal.SIGKILL)
    _send(pid, signal.SIGKILL, pidfd)
    return found


def stop_now(pid: int, pidfd: int | None = None) -> None:
    """SIGSTOP a worker and its process group, without waiting: a caller about to kill many
    trees stops them all first, so each has stopped by the time ``kill_tree`` waits for it."""
    if _send(pid, signal.SIGSTOP, pidfd):
        _killpg(pid, signal.SIGSTOP)


def thaw_tree(pid: int, pidfd: int | None = None) -> None:
    """SIGCONT a tree ``freeze_tree`` stopped (its lease was provably still ours after all).
    Children first: the worker, once running again, must find them running too."""
    for p in reversed(descendants(pid)[1:]):
        _send(p, signal.SIGCONT)
    _killpg(pid, signal.SIGCONT)
    _send(pid, signal.SIGCONT, pidfd)


def raise_priority(boost: int) -> tuple[int, bool]:
    """Lowers this process's nice value by ``boost`` if it may (root, CAP_SYS_NICE, or an
    RLIMIT_NICE that allows it); returns (the nice value it had, whether it changed).

    The master wins the CPU against the workers it governs: with 64 CPU-bound workers on 2
    cores, a master at their priority waits for its turn behind them all, and every hard
    limit and memory kill is late by that wait. Its children go back to the value it had
    (``restore_priority``), so jobs run at the priority the operator started governor with."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, base - boost))
    except OSError:
        return base, False
    return base, True


def restore_priority(nice: int) -> None:
    """In a forked child: back to the nice value the master started with (always permitted:
    it is not above the master's own)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass


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


def become_subreaper() -> bool:
    """Make this process (a worker, or the master) the adoptive parent of its descendants'
    orphans. An orphan is then re-parented here rather than to init, so it stays in the tree
    that is measured and killed. Its zombie is reaped with ``reap_adopted``, called by the
    worker between jobs: not from a SIGCHLD handler, whose every run would interrupt the job's
    own poll/select/sleep calls with EINTR (SA_RESTART does not restart those)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    A worker whose master has a sentry asks for SIGSTOP, one without for
    SIGKILL (see ``Sentry`` in governor/supervise/sentry.py for why). A credential change clears it: set it
    after dropping privileges, then check that the parent is still the one
    expected (it may have died before the call took effect).
    """
    return _prctl(_PR_SET_PDEATHSIG, sig)


# -- the sentry -------------------------------------------------------------------------------

EOF_GRACE = 1.0  # seconds the sentry waits, on an unannounced EOF, for the master's death to show


def _sentry(sock_fd: int, master_fd: int, board_fd: int = -1, check: float = 1.0) -> None:  # pragma: no cover
    """The sentry's whole life: hold the live workers' pidfds until the master is gone, and
    freeze (then thaw, if a renewal comes) any worker whose lease deadline passes."""
    import socket

    _prctl(_PR_SET_NAME, b"governor-sentry")
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # never the terminal's to stop
    board = _open_board(board_fd)
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(master_fd, select.POLLIN)
    poller.register(sock_fd, select.POLLIN)
    workers: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, slot), live workers only
    looks = {"check": check}
    sock.send(b"ready")
    while True:
        wait = _guard_leases(board, workers, looks["check"]) if board is not None else None
        ready = dict(poller.poll(None if wait is None else max(1, int(wait * 1000) + 1)))
        said = None
        if sock_fd in ready or master_fd in ready:
            # first every worker the master handed over: one forked just before it died included
            said = _receive(sock, workers, poller, looks)
        if master_fd in ready:
            break
        if said == b"bye":
            return  # a clean stop: the master's workers are gone
        if said == b"":
            # The master closed the socket without a word, or died: its descriptors are closed a
            # moment before its pidfd turns readable, so wait that moment out.
            if readable(master_fd, EOF_GRACE):
                break
            return
        for fd in ready:
            if fd in workers:  # that worker exited: nothing left to kill there
                poller.unregister(fd)
                os.close(fd)
                del workers[fd]
    for pidfd, (pid, _) in workers.items():
        kill_tree(pid, pidfd=pidfd)


def _guard_leases(board: Any, workers: dict[int, tuple[int, int]], check: float) -> float:  # pragma: no cover
    """Freezes every worker running a job whose lease deadline has passed (no renewal confirmed
    in time: Redis may let another host take the job any moment now), thaws one whose
    deadline moved on (a late renewal came through: the lease was ours all along); returns
    how long until the next deadline, at most ``check`` (a new job's deadline is always at
    least a margin away, so a look every ``check`` catches it in time)."""
    now = time.monotonic()
    wait = check
    for pidfd, (pid, slot) in workers.items():
        if slot < 0:
            continue
        job, deadline, frozen = board.read(slot)
        if job and not frozen and deadline <= now:
            if freeze_tree(pid, pidfd):  # (nothing found: it exited, and its slot may be reused)
                board.set_frozen(slot, now)
        elif frozen and (not job or deadline > now):
            thaw_tree(pid, pidfd)
            board.set_frozen(slot, 0.0)
        elif job and not frozen:
            wait = min(wait, deadline - now)
    return max(wait, 0.0)


def _open_board(fd: int) -> Any:  # pragma: no cover - runs in the sentry
    """The scoreboard, loaded from its file: the sentry runs isolated (-I -S), without the
    governor package or its dependencies on its path."""
    if fd < 0:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "governor_scoreboard", os.path.join(os.path.dirname(os.path.abspath(__file__)), "scoreboard.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    size = os.fstat(fd).st_size
    return module.Scoreboard(size // module.SLOT_SIZE, fd=fd)


def _receive(sock: Any, workers: dict[int, tuple[int, int]], poller: Any,
             looks: dict[str, float]) -> bytes | None:  # pragma: no cover
    """Takes every message waiting on the sentry's socket: a worker's pid and scoreboard slot with
    its pidfd, which it then watches; returns b"bye", b"" at EOF, or None once nothing more is
    waiting."""
    import socket

    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 32, 1)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        parts = msg.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].lstrip(b"-").isdigit() and len(fds) == 1:
            workers[fds[0]] = (int(parts[0]), int(parts[1]))
            poller.register(fds[0], select.POLLIN)
            continue
        for fd in fds:
            os.close(fd)
        if msg.startswith(b"check "):  # the lease changed on reload: look as often as it now needs
            looks["check"] = float(msg.split()[1])
            continue
        if msg in (b"bye", b""):
            return msg


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


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` turns readable (or hangs up) within ``timeout`` seconds; poll, not select:
    a master with many workers has descriptors past select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


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
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


if __name__ == "__main__":  # the sentry: python -I -S proctree.py SOCKET_FD MASTER_PIDFD BOARD_FD CHECK
    _sentry(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
