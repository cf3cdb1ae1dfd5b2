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
- ``Sentry``, the master's one helper process that makes every worker's tree
  die with a SIGKILLed master, without cgroups (see its docstring for how,
  and its limits), and ``set_death_signal``, which the worker pairs with it.
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

    A worker whose master has a ``Sentry`` asks for SIGSTOP, one without for
    SIGKILL (see ``Sentry`` for why). A credential change clears it: set it
    after dropping privileges, then check that the parent is still the one
    expected (it may have died before the call took effect).
    """
    return _prctl(_PR_SET_PDEATHSIG, sig)


# -- the sentry -------------------------------------------------------------------------------

SENTRY_START = 5.0  # seconds the master waits for a new sentry to say it is ready
SENTRY_STOP = 2.0  # seconds the master waits for its sentry to exit on a clean stop, then SIGKILLs it
SEND_TIMEOUT = 1.0  # seconds a hand-over may block (the socket is full: the sentry is wedged)
EOF_GRACE = 1.0  # seconds the sentry waits, on an unannounced EOF, for the master's death to show


class Sentry:
    """The master's handle on its sentry: one small process that kills every worker's tree
    when the master dies, however it dies, without cgroups.

    The kernel offers nothing else for it: ``PR_SET_PDEATHSIG`` covers only
    the process that sets it, and once a SIGKILLed worker is gone its
    children are re-parented, out of reach. A catchable death signal whose
    handler kills the tree would lose the one guarantee that matters (a
    worker blocked in C, or with that signal masked, would keep running its
    job after the master is gone, while the job's lease expires and another
    host runs it too). So:

    - every worker's death signal is SIGSTOP (``set_death_signal``), which
      like SIGKILL cannot be caught, blocked or ignored: the moment the master
      dies, each worker stops running job code and, still alive, keeps its tree;
    - the sentry waits, without polling, on a pidfd of the master, on a
      socket from it, and on a pidfd of every live worker, which the master
      hands it over that socket (``SCM_RIGHTS``) as it forks each one. When
      the master dies it runs ``kill_tree`` on every worker it holds, then
      exits; when the master says goodbye and closes the socket (a clean
      stop, its workers gone) it exits without killing. It closes a worker's
      pidfd when that worker exits, so it holds only live ones.

    One per master, whatever the number of workers: a fresh ``python -I -S``
    running this file (about 5 MiB private, 25 ms to start), not a fork of
    the master, which would pin every page the master rewrites. It is the
    master's child, so the master sees it die (``fileno`` is its pidfd) and
    reaps it; in a session of its own, so no terminal's signals and no
    ``killpg`` of the master's group reach it; and with no death signal: it
    must outlive the master. After the master's death it is re-parented to
    init (or the nearest subreaper), which reaps it. The master starts a new
    one if it dies, and hands it every live worker again.

    Limits, honestly: a worker forked in the microseconds before the master
    hands its pidfd over stays stopped if the master dies right then (it runs
    no more job code, but holds its memory) and its children live on; once
    handed over it is safe, even if the sentry had not read it yet. So do
    every worker and their children if the sentry is killed (by hand, by the
    OOM killer) and the master dies before it has started another. Where no
    sentry can be had (no pidfds, no ``sys.executable``, it did not come up)
    or none is needed (the master is pid 1 of its namespace, whose death
    kills the namespace), workers keep SIGKILL as their death signal: each
    dies with the master, its grandchildren may not.
    """

    def __init__(self) -> None:
        self._proc: Any = None  # subprocess.Popen, imported only by the master that starts one
        self._sock: Any = None  # our end of the socketpair
        self._pidfd = -1
        self.pid = 0

    @property
    def alive(self) -> bool:
        """Up and taking workers: a worker forked now may count on it."""
        return self._sock is not None

    def fileno(self) -> int:
        """The sentry's pidfd, readable once it has exited (for the master's selector); -1 if none."""
        return self._pidfd

    def fds(self) -> list[int]:
        """Descriptors a forked worker must close: a job must not hand the sentry pidfds."""
        return [fd for fd in (self._pidfd, self._sock.fileno() if self._sock else -1) if fd >= 0]

    def start(self, board_fd: int = -1, check: float = 1.0) -> str | None:
        """Starts a sentry and waits (``SENTRY_START`` at most) until it is watching the master;
        returns None when it is, or why not. ``board_fd`` is the scoreboard's memfd: the sentry
        then also freezes a worker whose lease deadline passed (see governor/supervise/scoreboard.py),
        looking at least every ``check`` seconds."""
        import socket
        import subprocess

        if self._proc is not None:
            raise RuntimeError("a sentry is already running")
        if not sys.executable:
            return "no sys.executable to run it with"
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            return f"socketpair: {exc}"
        master_fd = -1
        try:
            master_fd = os.pidfd_open(os.getpid())
            argv = [sys.executable, "-I", "-S", os.path.abspath(__file__),
                    str(theirs.fileno()), str(master_fd), str(board_fd), repr(check)]
            passed = (theirs.fileno(), master_fd, *((board_fd,) if board_fd >= 0 else ()))
            proc = subprocess.Popen(argv, pass_fds=passed, start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd="/")
        except (OSError, AttributeError, subprocess.SubprocessError) as exc:
            mine.close()
            return f"cannot start it: {exc}"
        finally:
            theirs.close()
            if master_fd >= 0:
                os.close(master_fd)
        pidfd, why = -1, None
        try:
            pidfd = os.pidfd_open(proc.pid)  # our unreaped child: the pid cannot have been reused
            # an EOF (it died, say at import) ends the wait too: a failed sentry costs no timeout
            if not (_readable(mine.fileno(), SENTRY_START) and mine.recv(16) == b"ready"):
                why = f"it exited or was not ready within {SENTRY_START:.0f}s"
        except OSError as exc:
            why = f"it did not come up: {exc}"
        if why:
            if pidfd >= 0:
                os.close(pidfd)
            mine.close()
            proc.kill()
            proc.wait()
            return why
        mine.settimeout(SEND_TIMEOUT)
        self._proc, self._sock, self._pidfd, self.pid = proc, mine, pidfd, proc.pid
        return None

    def watch(self, pid: int, pidfd: int, slot: int = -1) -> bool:
        """Hands the sentry a new worker (a duplicate of ``pidfd`` travels with it). False when
        there is no sentry, or it did not take it: then it is killed, and the master, seeing it
        exit, starts another and hands it every live worker again."""
        if self._sock is None:
            return False
        import socket

        try:
            socket.send_fds(self._sock, [b"%d %d" % (pid, slot)], [pidfd])
            return True
        except OSError:  # gone (EPIPE) or wedged (the send timed out)
            self._kill()
            self._sock.close()
            self._sock = None  # not alive: workers forked from now on die by SIGKILL
            return False

    def set_check(self, check: float) -> None:
        """How often, at least, the sentry looks at the leases (the lease changed on reload)."""
        if self._sock is not None:
            try:
                self._sock.send(b"check %.3f" % check)
            except OSError:
                pass  # gone: the master starts another, with the new figure

    def reap(self) -> str:
        """After it exited (its pidfd is readable): reaps it, returns how it ended."""
        code = self._proc.wait() if self._proc is not None else 0
        self._release()
        if code >= 0:
            return f"exit code {code}"
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"

    def close(self) -> None:
        """On the master's clean stop, once its workers are gone: tells the sentry to exit without
        killing anything, waits for it (``SENTRY_STOP`` at most, then SIGKILL) and reaps it."""
        if self._proc is None:
            return
        if self._sock is not None:
            try:
                self._sock.send(b"bye")
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if not _readable(self._pidfd, SENTRY_STOP):
            self._kill()
        self._proc.wait()
        self._release()

    def _kill(self) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except OSError:
            pass

    def _release(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
        self._proc, self._sock, self._pidfd, self.pid = None, None, -1, 0


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
            if _readable(master_fd, EOF_GRACE):
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


def _readable(fd: int, timeout: float) -> bool:
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
