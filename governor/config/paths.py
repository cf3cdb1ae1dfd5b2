"""Where the master keeps its sockets and an embedded Redis its data when the file does
not say (here, not in supervise/statedir.py: config must not import upward)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def state_dir_candidates(source: str) -> list[str]:
    """Where the control socket (and an embedded Redis's socket) may be when the file does
    not say, most specific first: ``$GOVERNOR_STATE_DIR``; systemd's ``$RUNTIME_DIRECTORY``
    (set for the service, not for an operator's shell, hence the next two);
    ``/run/governor/<config name>`` (the template unit) and ``/run/governor`` (the plain
    unit); last, a per-user directory under /tmp keyed by the config file's path."""
    import hashlib

    out = []
    for env in ("GOVERNOR_STATE_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(env):
            out.append(os.environ[env].split(":")[0])
    stem = Path(source).stem
    out += [f"/run/governor/{stem}", "/run/governor"] if stem != "governor" else ["/run/governor"]
    key = hashlib.sha1(os.path.abspath(source).encode()).hexdigest()[:8]
    out.append(os.path.join(tempfile.gettempdir(), f"governor-{os.getuid()}", key))
    return out


def default_state_dir(source: str) -> str:
    """The master's state directory when the file names none: the environment's choice, else
    the per-user fallback. (``/run/governor`` is only ever used because systemd set
    RUNTIME_DIRECTORY to it; the CLI finds it among the candidates.)"""
    for env in ("GOVERNOR_STATE_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(env):
            return os.environ[env].split(":")[0]
    return state_dir_candidates(source)[-1]


def default_data_dir(state_dir: str) -> str:
    """Where an embedded Redis keeps its append-only file: systemd's ``$STATE_DIRECTORY``
    (persistent, unlike RuntimeDirectory, which is emptied on every stop), else state_dir."""
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or state_dir
