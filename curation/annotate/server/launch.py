"""Entry point run by the Argilla server venv's python: registers our SQLite search engine, then
hands over to argilla-server's own CLI (``start``, ``worker``, ``database migrate`` ...).

Usage: ``<server-venv>/bin/python launch.py start --host 127.0.0.1 --port 6900``.
``launch.py create-owner`` reads ``{"username", "password", "api_key", "workspace"}`` as JSON from stdin
and creates that owner (upstream's ``database users create`` takes them as arguments, which every
local user can read in ``ps``).
It must import nothing from slmforge (the server venv does not have our dependencies).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlite_engine  # noqa: E402,F401  (registers engine "sqlite")


def create_owner() -> None:
    from argilla_server.cli.database.users.create import _create
    from argilla_server.models import UserRole

    creds = json.loads(sys.stdin.read())
    asyncio.run(_create(first_name="Owner", username=creds["username"], role=UserRole.owner,
                        password=creds["password"], api_key=creds["api_key"], workspace=[creds["workspace"]]))


def main() -> None:
    if sys.argv[1:] == ["create-owner"]:
        create_owner()
        return
    from argilla_server.cli import app

    sys.argv[0] = "argilla_server"
    app()


if __name__ == "__main__":
    main()
