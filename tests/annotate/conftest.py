"""One real embedded Argilla server per test session (own home folder and port).

The home folder is created by the server inside a folder every user may enter (like a home folder
that is 0755, the Debian default), so the security tests check our file modes, not pytest's 0700
temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PROBE_USER = "slmforge-probe"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); the embedded Argilla needs it")
    from curation.annotate.embedded import Embedded, start, stop

    parent = Path(tempfile.mkdtemp(prefix="slmforge-argilla-", dir="/tmp"))
    parent.chmod(0o755)
    base = Embedded.from_env()  # reuse the cached server venv
    emb = Embedded(home=parent / "home", venv=base.venv, port=_free_port())
    info = start(emb)
    yield emb, info
    stop(emb)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def client(embedded):
    import argilla as rg

    emb, info = embedded
    return rg.Argilla(api_url=emb.url, api_key=info["api_key"])


@pytest.fixture(scope="session")
def as_other_user():
    """Run a command as another local user (created here when missing); skips where that is impossible."""
    if os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("runuser")):
        pytest.skip("needs root with useradd/runuser to act as another local user")
    created = subprocess.run(["id", PROBE_USER], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE_USER],
                       check=True, capture_output=True)

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", PROBE_USER, "--", *cmd], capture_output=True, text=True, timeout=60,
                              cwd="/")

    yield run
    if created:
        subprocess.run(["userdel", PROBE_USER], capture_output=True)
