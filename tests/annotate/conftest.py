"""One real embedded Argilla server per test session (own home folder and ports under tmp)."""

from __future__ import annotations

import shutil
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); the embedded Argilla needs it")
    from curation.annotate.embedded import Embedded, start, stop

    base = Embedded.from_env()  # reuse the cached server venv
    emb = Embedded(home=tmp_path_factory.mktemp("argilla-home"), venv=base.venv, port=_free_port(),
                   redis_port=_free_port())
    info = start(emb)
    yield emb, info
    stop(emb)


@pytest.fixture(scope="session")
def client(embedded):
    import argilla as rg

    emb, info = embedded
    return rg.Argilla(api_url=emb.url, api_key=info["api_key"])
