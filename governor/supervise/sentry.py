"""The master's handle on its sentry (runs in the master): start it, hand it each new worker,
tell it the lease check, reap it, say goodbye.

The sentry process itself is ``governor/supervise/proctree.py`` run as a script (``_sentry``
there): it runs isolated (``python -I -S``), so it can import nothing of the package and
must live in one file with the tree functions it calls. This side is ordinary master code
and lives here, so that file stays the sentry's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from governor.supervise import proctree

SENTRY_START = 5.0  # seconds the master waits for a new sentry to say it is ready
SENTRY_STOP = 2.0  # seconds the master waits for its sentry to exit on a clean stop, then SIGKILLs it
SEND_TIMEOUT = 1.0  # seconds a hand-over may block (the socket is full: the sentry is wedged)


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

    - every worker's death signal is SIGSTOP (``proctree.set_death_signal``), which
      like SIGKILL cannot be caught, blocked or ignored: the moment the master
      dies, each worker stops running job code and, still alive, keeps its tree;
    - the sentry waits, without polling, on a pidfd of the master, on a
      socket from it, and on a pidfd of every live worker, which the master
      hands it over that socket (``SCM_RIGHTS``) as it forks each one. When
      the master dies it runs ``proctree.kill_tree`` on every worker it holds, then
      exits; when the master says goodbye and closes the socket (a clean
      stop, its workers gone) it exits without killing. It closes a worker's
      pidfd when that worker exits, so it holds only live ones.

    One per master, whatever the number of workers: a fresh ``python -I -S``
    running ``proctree.py`` (about 5 MiB private, 25 ms to start), not a fork of
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None  # our end of the socketpair
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
            argv = [sys.executable, "-I", "-S", os.path.abspath(proctree.__file__),
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
            if not (proctree.readable(mine.fileno(), SENTRY_START) and mine.recv(16) == b"ready"):
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
        if not proctree.readable(self._pidfd, SENTRY_STOP):
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
