"""The workspace folder: writable (a clear error otherwise) and used by one run at a time.

The lock is an ``flock`` on ``<workspace>/_runs/run.lock`` holding the holder's PID and host: a
second run on the same workspace fails at once naming that PID; the kernel releases the lock when
the holder dies (even by SIGKILL), so a stale lock file of a dead PID is simply taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import ConfigError

LOCK_FILE = Path("_runs") / "run.lock"


def writable_workspace(path: Path) -> Path:
    """Create ``path`` if needed and check a file can be written in it; returns it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".slmforge-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"the workspace folder {path} cannot be written: {exc.strerror or exc}",
                          received=str(path), expected="a folder this user can create files in",
                          fix="set 'workspace:' (or --output) to a writable folder, or make this one writable "
                              f"(e.g. chmod u+w {path})") from None
    return path


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@contextlib.contextmanager
def workspace_lock(workspace: Path) -> Iterator[Path]:
    """Hold the workspace lock for the duration of the block (one run per workspace)."""
    import fcntl

    lock = Path(workspace) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"the workspace {workspace} is in use by another run ({_holder(lock)})",
                              received=str(lock),
                              fix="wait for that run to finish (or stop it), or use another 'workspace:'") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["writable_workspace", "workspace_lock", "LOCK_FILE"]
