"""The master's state directory: checked before anything is put in it, and held by one master.

Everything the master and an embedded Redis keep there (``control.sock``, ``redis.sock``,
the append-only file, ``redis.log``, ``master.lock``) is created by name, by us or by
redis-server, which follows symlinks like any program. That is safe only because nobody
else can write in the directory: nobody can plant ``redis.log`` as a symlink to a file of
root's, nor swap the directory for one of their own. So before the first write,
:func:`prepare` makes sure of it, for the directory and for every directory above it:

- the directory itself must be a real directory (a symlink in its place is refused, never
  followed), owned by the user we run as, and not writable by group or others; readable
  is fine (systemd creates StateDirectory 0755). When missing it is created 0700.
- every directory above it must be owned by us or root, and not writable by others
  unless sticky (like /tmp): else its owner could rename ours away and put theirs there.
  Missing ones are created 0700 (the default's per-user ``/tmp/governor-<uid>`` too).

:class:`MasterLock` makes a second ``governor run`` on the same state directory stop at
once with a clear message, instead of shutting down the first one's embedded Redis.

Runs in: master (and the CLI, to find one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

LOCK_NAME = "master.lock"


class StateDirError(RuntimeError):
    """A state or data directory we must not use; the message names it, what is wrong
    and how to fix it (``governor run`` prints it and exits 1)."""


class AlreadyRunning(RuntimeError):
    """Another master holds the state directory."""


def prepare(path: str, what: str = "state_dir") -> None:
    """Creates ``path`` (0700) if missing, then refuses it unless only we can write in it.

    ``what`` is the setting that chose the path (``state_dir``, ``data_dir``), for the message.
    """
    path = os.path.abspath(path)
    try:
        for above in _ancestors(path):
            _mkdir(above)
            _check_above(above, path, what)
        _mkdir(path)
        _check_own(path, what)
    except OSError as exc:
        raise StateDirError(f"{what} {path} cannot be used: {exc.strerror or exc}; "
                            f"fix it or set {what}") from None


def trusted(path: str, mine: bool) -> bool:
    """Whether the CLI may talk to sockets in ``path`` (never creates anything): it and every
    directory above it pass the checks ``prepare`` makes, except that with ``mine`` False the
    directory may belong to another user (a systemd service's, read by root) as long as only
    its owner can write in it. The per-user default under /tmp must be ``mine``: there, a
    directory of someone else's is exactly the squat these checks are for."""
    path = os.path.abspath(path)
    try:
        for above in _ancestors(path):
            _check_above(above, path, "state_dir")
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
            return False
        return not mine or st.st_uid == os.geteuid()
    except (OSError, StateDirError):
        return False


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``['/', '/a', '/a/b']``, top first (each is checked before what is in it)."""
    out = []
    parent = os.path.dirname(path)
    while True:
        out.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            return out[::-1]
        parent = up


def _mkdir(path: str) -> None:
    """Creates ``path`` 0700 if missing: exactly, whatever the umask took from our own bits."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _check_above(above: str, path: str, what: str) -> None:
    euid = os.geteuid()
    st = os.lstat(above)
    if stat.S_ISLNK(st.st_mode):  # /var/run -> /run is fine; a link someone else planted is not
        if st.st_uid not in (0, euid):
            raise StateDirError(f"{what} {path}: {above} above it is a symlink owned by uid {st.st_uid}, "
                                f"not by you (uid {euid}) or root; remove it or set {what}")
        st = os.stat(above)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{what} {path}: {above} is not a directory; set {what}")
    if st.st_uid not in (0, euid):
        raise StateDirError(f"{what} {path}: {above} above it is owned by uid {st.st_uid}, "
                            f"not by you (uid {euid}) or root; remove it or set {what}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StateDirError(f"{what} {path}: {above} above it is writable by {_who(st.st_mode)} "
                            f"(mode {_mode(st.st_mode)}); chmod go-w {above} or set {what}")


def _check_own(path: str, what: str) -> None:
    euid = os.geteuid()
    st = os.lstat(path)  # for the message; the O_NOFOLLOW open below is what decides
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"{what} {path} is a symlink (to {os.readlink(path)}), which is never "
                            f"followed; set {what} to the real directory or remove the link")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{what} {path} is not a directory; remove it or set {what}")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != euid:
        raise StateDirError(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {euid}); "
                            f"remove it (or chown it, if what is in it is yours) or set {what}")
    if st.st_mode & 0o022:
        raise StateDirError(f"{what} {path} is writable by {_who(st.st_mode)} (mode {_mode(st.st_mode)}); "
                            f"chmod 700 {path} (after checking what is in it) or set {what}")


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)


def _mode(mode: int) -> str:
    return format(stat.S_IMODE(mode), "04o")


class MasterLock:
    """``<state_dir>/master.lock``, locked for as long as this master runs.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so
    forked workers never hold it (whether or not they close the descriptor) and it is
    gone the instant the master dies, however it dies; a lock file left by a SIGKILLed
    master blocks nothing. The file is never unlinked (a lock on an unlinked file would
    let two masters in). Take it after :func:`prepare` and before anything else is done
    in the directory. One MasterLock per process and directory: closing any other
    descriptor of the file in this process would drop a POSIX lock.
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.path = os.path.join(self.state_dir, LOCK_NAME)
        self._fd = -1

    def acquire(self) -> None:
        """Raises AlreadyRunning (naming the holder's pid) when another master has it."""
        if self._fd >= 0:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateDirError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
            who = f"another governor master (pid {holder})" if holder else "another governor master"
            raise AlreadyRunning(f"{who} is running with state_dir {self.state_dir}; stop it first "
                                 f"(or give this one a state_dir of its own)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def fileno(self) -> int:
        """The lock file's descriptor (-1 when not held), for a forked worker to close."""
        return self._fd

    def release(self) -> None:
        """Only once whatever else this master ran in the directory (its Redis) has stopped."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
