"""Start/stop the embedded Argilla server: its own venv, SQLite, Redis, an rq worker, our search plugin.

Everything lives under two folders (both overridable):

* ``SLMFORGE_ARGILLA_VENV`` (default ``~/.cache/slmforge/argilla-server-venv``): the server venv,
  built on first use with :data:`SERVER_PINS` (argilla-server's pins clash with transformers 5).
* ``SLMFORGE_ARGILLA_HOME`` (default ``~/.cache/slmforge/argilla``): ``argilla.db`` (SQLite),
  ``search.sqlite3`` (our index), ``redis/`` (AOF), ``redis.conf`` (its password), ``run/*.pid`` and
  ``run/redis.sock``, ``logs/``, ``credentials.json``.

Nobody else on the machine gets in: the home folder is 0700 and every process we start runs with
umask 077 (database, index, logs and secrets are 0600); Redis listens on no TCP port, only on a unix
socket (0600, inside the 0700 folder) and requires a random password (the rq worker unpickles jobs
from it, so whoever can write to it runs code as this user); the server binds 127.0.0.1; secrets are
never put on a command line (``ps`` shows those to every user) — the owner is created from stdin.

Library code: no printing; functions return what happened and raise :class:`StageError` with a fix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import StageError

SERVER_PINS = (
    "argilla-server==2.8.0",
    "click==8.1.8",
    "huggingface-hub==0.36.2",
    "datasets==3.6.0",
)
LAUNCHER = Path(__file__).parent / "server" / "launch.py"
PROCESSES = ("redis", "worker", "server")
UMASK = 0o077
#: longest unix socket path Linux accepts (sun_path is 108 bytes with the final NUL)
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Embedded:
    """Where the embedded server lives and listens."""

    home: Path
    venv: Path
    port: int = 6900
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, *, port: int | None = None) -> "Embedded":
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slmforge"
        return cls(
            home=Path(os.environ.get("SLMFORGE_ARGILLA_HOME", cache / "argilla")).expanduser().absolute(),
            venv=Path(os.environ.get("SLMFORGE_ARGILLA_VENV", cache / "argilla-server-venv")).expanduser(),
            port=port or int(os.environ.get("SLMFORGE_ARGILLA_PORT", "6900")),
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    @property
    def redis_socket(self) -> Path:
        return self.run_dir / "redis.sock"

    @property
    def redis_conf(self) -> Path:
        return self.home / "redis.conf"

    def redis_password(self) -> str:
        """The Redis password from redis.conf (0600), made at the first start."""
        for line in self.redis_conf.read_text().splitlines():
            if line.startswith("requirepass "):
                return line.split(None, 1)[1].strip()
        raise StageError(f"{self.redis_conf} has no 'requirepass' line", fix=f"delete {self.redis_conf} and start again")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "VIRTUAL_ENV", "PYTHON"))}
        redis_url = f"unix://:{self.redis_password()}@{self.redis_socket}?db=0" if self.redis_conf.exists() else ""
        env.update(
            ARGILLA_HOME_PATH=str(self.home),
            ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{self.home / 'argilla.db'}",
            ARGILLA_REDIS_URL=redis_url,
            ARGILLA_SEARCH_ENGINE="sqlite",
            ARGILLA_ENABLE_TELEMETRY="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_OFFLINE="1",
            SLMFORGE_SEARCH_DB=str(self.home / "search.sqlite3"),
        )
        return env


# --- venv ----------------------------------------------------------------------------------------
def venv_ready(emb: Embedded) -> bool:
    if not emb.python.exists():
        return False
    probe = subprocess.run([str(emb.python), "-c", "import argilla_server, numpy"], capture_output=True)
    return probe.returncode == 0


def ensure_venv(emb: Embedded) -> bool:
    """Build the server venv when missing; returns True when it was built now."""
    if venv_ready(emb):
        return False
    base = getattr(sys, "_base_executable", sys.executable)
    emb.venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [[base, "-m", "venv", str(emb.venv)], [str(emb.python), "-m", "pip", "install", "-q", *SERVER_PINS]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StageError(
                f"building the Argilla server venv failed at `{' '.join(cmd)}`:\n{done.stderr[-2000:]}\n"
                f"Fix the error above, or delete {emb.venv} and retry."
            )
    return True


# --- processes -------------------------------------------------------------------------------------
def _pid_file(emb: Embedded, name: str) -> Path:
    return emb.run_dir / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def running(emb: Embedded) -> dict[str, int]:
    """Processes we started that are still alive: name -> pid."""
    out = {}
    for name in PROCESSES:
        f = _pid_file(emb, name)
        if f.exists():
            pid = int(f.read_text().strip() or 0)
            if pid and _alive(pid):
                out[name] = pid
    return out


def _spawn(emb: Embedded, name: str, cmd: list[str]) -> int:
    emb.log_dir.mkdir(parents=True, exist_ok=True)
    emb.run_dir.mkdir(parents=True, exist_ok=True)
    log = os.fdopen(os.open(emb.log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=emb.env(), cwd=str(emb.home), start_new_session=True, umask=UMASK)
    log.close()
    _write_secret(_pid_file(emb, name), str(proc.pid))
    return proc.pid


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _run_launcher(emb: Embedded, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(emb.python), str(LAUNCHER), *args], env=emb.env(), cwd=str(emb.home),
                          capture_output=True, text=True, input=stdin, umask=UMASK)


def _write_secret(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def lock_down(emb: Embedded) -> None:
    """Home folder and its subfolders 0700, files 0600 (also fixes homes made by older versions)."""
    emb.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in (emb.home, emb.run_dir, emb.log_dir, emb.home / "redis"):
        d.mkdir(exist_ok=True, mode=0o700)
    for folder, dirs, files in os.walk(emb.home):
        os.chmod(folder, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _redis_config(emb: Embedded) -> None:
    """redis.conf (0600): no TCP port, a unix socket 0600, a random password kept across restarts."""
    if len(str(emb.redis_socket)) > MAX_SOCKET_PATH:
        raise StageError(f"the Redis socket path is longer than {MAX_SOCKET_PATH} bytes: {emb.redis_socket}",
                         fix="set SLMFORGE_ARGILLA_HOME to a shorter folder")
    password = emb.redis_password() if emb.redis_conf.exists() else secrets.token_hex(32)
    _write_secret(emb.redis_conf, "\n".join([
        "port 0", f"unixsocket {emb.redis_socket}", "unixsocketperm 600", f"requirepass {password}",
        f"dir {emb.home / 'redis'}", "appendonly yes", 'save ""', "daemonize no", "protected-mode yes", ""]))


def redis_ping(emb: Embedded, *, password: str | None) -> str:
    """The first reply line of PING over the socket (after AUTH when ``password`` is given)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2.0)
        s.connect(str(emb.redis_socket))
        if password is not None:
            s.sendall(f"AUTH {password}\r\n".encode())
            s.recv(1024)
        s.sendall(b"PING\r\n")
        return s.recv(1024).decode(errors="replace").strip()


def _redis_up(emb: Embedded) -> bool:
    try:
        return redis_ping(emb, password=emb.redis_password()) == "+PONG"
    except OSError:
        return False


def credentials(emb: Embedded) -> dict[str, str] | None:
    if emb.credentials_file.exists():
        return json.loads(emb.credentials_file.read_text())
    return None


def _wait(what: str, ok, *, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise StageError(f"{what} did not come up within {timeout:.0f} s.\n{tail}")


def start(emb: Embedded, *, timeout: float = 120.0) -> dict[str, object]:
    """Start (or find running) redis, the rq worker and the server; create the owner on first start.

    Returns {"url", "username", "password", "api_key", "started": [...], "built_venv": bool, "seconds": float}.
    """
    t0 = time.monotonic()
    redis = shutil.which("redis-server")
    if redis is None:
        raise StageError(
            "redis-server is not installed; the embedded Argilla server needs it for its job queue",
            fix="apt-get update && apt-get install -y redis-server (or point ARGILLA_API_URL/ARGILLA_API_KEY at an "
                "existing Argilla server)",
        )
    built = ensure_venv(emb)
    lock_down(emb)
    alive = running(emb)
    started = []
    if alive and not emb.redis_conf.exists():
        raise StageError("an embedded server started by an older slmforge (Redis without a password) is running",
                         fix="stop it with `slmforge annotate stop`, then start again")
    if "redis" not in alive:
        _redis_config(emb)
        emb.redis_socket.unlink(missing_ok=True)  # left by a killed redis
        _spawn(emb, "redis", [redis, str(emb.redis_conf)])
        started.append("redis")
        _wait("redis-server", lambda: _redis_up(emb), timeout=20, log=emb.log_dir / "redis.log")
    if "server" not in alive:
        migrate = _run_launcher(emb, "database", "migrate")
        if migrate.returncode != 0:
            raise StageError(f"`argilla_server database migrate` failed:\n{migrate.stderr[-3000:]}")
        if credentials(emb) is None:
            creds = {"username": "owner", "password": secrets.token_urlsafe(12), "api_key": secrets.token_urlsafe(24)}
            made = _run_launcher(emb, "create-owner", stdin=json.dumps({**creds, "workspace": "argilla"}))
            if made.returncode != 0:
                raise StageError("creating the owner user failed:\n"
                                 + (made.stdout[-2000:] + made.stderr[-2000:]).replace(creds["api_key"], "***"))
            _write_secret(emb.credentials_file, json.dumps(creds, indent=2))
    if "worker" not in alive:
        _spawn(emb, "worker", [str(emb.python), str(LAUNCHER), "worker", "--num-workers", "1"])
        started.append("worker")
    if "server" not in alive:
        if _port_open(emb.host, emb.port):
            raise StageError(f"port {emb.port} is taken by a process slmforge did not start; "
                             "set SLMFORGE_ARGILLA_PORT (or --port) to a free port.")
        _spawn(emb, "server", [str(emb.python), str(LAUNCHER), "start", "--host", emb.host, "--port", str(emb.port),
                               "--no-access-log"])
        started.append("server")
    creds = credentials(emb) or {}
    _wait("the Argilla server", lambda: _server_ready(emb, creds.get("api_key", "")), timeout=timeout,
          log=emb.log_dir / "server.log")
    return {"url": emb.url, **creds, "started": started, "built_venv": built, "seconds": time.monotonic() - t0}


def _server_ready(emb: Embedded, api_key: str) -> bool:
    import httpx

    if "server" not in running(emb):
        raise StageError(f"the Argilla server exited; see {emb.log_dir / 'server.log'}:\n"
                         + (emb.log_dir / "server.log").read_text(errors="replace")[-3000:])
    try:
        r = httpx.get(f"{emb.url}/api/v1/me", headers={"X-Argilla-Api-Key": api_key}, timeout=2.0)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def stop(emb: Embedded, *, timeout: float = 20.0) -> list[str]:
    """Stop every process slmforge started (server, worker, redis — in that order); returns their names."""
    stopped = []
    for name in ("server", "worker", "redis"):
        f = _pid_file(emb, name)
        if not f.exists():
            continue
        pid = int(f.read_text().strip() or 0)
        if pid and _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)  # its own session: pgid == pid
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        f.unlink(missing_ok=True)
    return stopped
