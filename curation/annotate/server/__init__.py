"""Embedded Argilla server: launcher (runs in the server venv) and our SQLite search-engine plugin."""
