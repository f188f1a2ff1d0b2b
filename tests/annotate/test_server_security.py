"""The embedded server lets nobody else in: private files, a Redis no other user can reach or use without
its password, nothing secret on command lines, no paths disclosed without a key (issue 19)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from curation.annotate.embedded import redis_ping, running

pytestmark = pytest.mark.argilla

ATTACK = r"""
import json, os, socket, sys, urllib.request, urllib.error
home, sock, url = sys.argv[1], sys.argv[2], sys.argv[3]
files = json.loads(sys.argv[4])
out = {}
def attempt(name, fn):
    try:
        out[name] = "ALLOWED: " + repr(fn())[:200]
    except OSError as exc:
        out[name] = "denied: " + type(exc).__name__
for f in files:
    attempt("read " + f, lambda f=f: open(f, "rb").read(64))
attempt("list home", lambda: os.listdir(home))
def redis():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sock)
    s.sendall(b"LPUSH rq:queue:default x\r\n")
    return s.recv(100)
attempt("redis socket", redis)
def http(path, key=None):
    req = urllib.request.Request(url + path, headers={"X-Argilla-Api-Key": key} if key else {})
    try:
        return urllib.request.urlopen(req, timeout=10).read().decode()
    except urllib.error.HTTPError as exc:
        return "HTTP %d" % exc.code
out["GET /api/v1/me"] = http("/api/v1/me")
out["GET /api/v1/me with a guessed key"] = http("/api/v1/me", "argilla.apikey")
out["GET /api/v1/status"] = http("/api/v1/status")
print(json.dumps(out))
"""


def _private_files(home: Path) -> list[Path]:
    return sorted(p for p in home.rglob("*") if p.is_file() or p.is_socket())


def test_home_folder_and_files_are_private(embedded):
    emb, _ = embedded
    assert stat.S_IMODE(emb.home.parent.stat().st_mode) == 0o755  # others may enter the parent: modes matter
    assert stat.S_IMODE(emb.home.stat().st_mode) == 0o700
    names = {p.name for p in _private_files(emb.home)}
    assert {"argilla.db", "search.sqlite3", "credentials.json", "redis.conf", "redis.sock", "server.log"} <= names
    for p in [emb.home, *emb.home.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


def _listening_tcp(pid: int) -> list[str]:
    """host:port of every TCP socket in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr, port = cols[1].split(":")
                host = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(addr) == 8 else addr
                found.append(f"{host}:{int(port, 16)}")
    return found


def test_redis_has_no_tcp_port_and_refuses_clients_without_the_password(embedded):
    emb, info = embedded
    procs = running(emb)
    assert set(procs) == {"redis", "worker", "server"}
    assert _listening_tcp(procs["redis"]) == [] and _listening_tcp(procs["worker"]) == []
    assert _listening_tcp(procs["server"]) == [f"127.0.0.1:{emb.port}"]
    assert stat.S_IMODE(emb.redis_socket.stat().st_mode) == 0o600
    # the same user without the password: no command runs (the worker would unpickle what we could enqueue)
    assert redis_ping(emb, password=None).startswith("-NOAUTH")
    assert redis_ping(emb, password="guess").startswith("-NOAUTH")
    assert redis_ping(emb, password=emb.redis_password()) == "+PONG"
    # no secret on any command line (/proc/<pid>/cmdline is readable by every user)
    secrets = [emb.redis_password(), info["api_key"], info["password"]]
    for pid in procs.values():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not any(s in cmdline for s in secrets), cmdline


def test_another_local_user_cannot_read_or_enqueue(embedded, as_other_user):
    emb, _ = embedded
    files = [str(p) for p in _private_files(emb.home) if p.is_file()]
    done = as_other_user(["/usr/bin/python3", "-c", ATTACK, str(emb.home), str(emb.redis_socket), emb.url,
                          json.dumps(files)])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    allowed = {k: v for k, v in out.items() if v.startswith("ALLOWED")}
    assert not allowed, allowed
    assert out["redis socket"].startswith("denied") and out["list home"].startswith("denied")
    assert out["GET /api/v1/me"] == out["GET /api/v1/me with a guessed key"] == "HTTP 401"
    status = json.loads(out["GET /api/v1/status"])
    assert str(emb.home) not in json.dumps(status) and "/" not in json.dumps(status["search_engine"])


def test_status_without_a_key_shows_what_upstream_shows_and_no_path(embedded):
    """Upstream's /api/v1/status (no key needed) returns the version, the search engine's info() and the
    server's memory; our SQLite engine's info() names the engine and SQLite version, not its file."""
    emb, _ = embedded
    for path in ("/api/v1/status", "/api/v1/version", "/api/v1/settings", "/api/v1/oauth2/providers"):
        r = httpx.get(emb.url + path, timeout=30)
        body = r.text
        for secret_path in (str(emb.home), str(emb.venv), str(Path.home())):
            assert secret_path not in body, (path, body)
    status = httpx.get(emb.url + "/api/v1/status", timeout=30).json()
    assert set(status) == {"version", "search_engine", "memory"}
    assert set(status["search_engine"]) == {"engine", "sqlite_version"}
