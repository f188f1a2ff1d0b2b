"""slmforge: the CLI and the recipe runner (stage cache, resume, reports)."""

__version__ = "0.1.0"
