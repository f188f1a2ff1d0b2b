"""Entry point run by the Argilla server venv's python: registers our SQLite search engine, then
hands over to argilla-server's own CLI (``start``, ``worker``, ``database migrate`` ...).

Usage: ``<server-venv>/bin/python launch.py start --host 127.0.0.1 --port 6900``.
It must import nothing from slmforge (the server venv does not have our dependencies).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlite_engine  # noqa: E402,F401  (registers engine "sqlite")


def main() -> None:
    from argilla_server.cli import app

    sys.argv[0] = "argilla_server"
    app()


if __name__ == "__main__":
    main()
