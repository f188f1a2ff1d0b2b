"""One error base type for the whole project.

Every message says what was received, what was expected and how to fix it, so a user can act
on it without reading our code (DESIGN.md §6.7).
"""

from __future__ import annotations


class SlmforgeError(Exception):
    """Base error. Build it with ``received``/``expected``/``fix`` so messages teach."""

    def __init__(
        self,
        message: str,
        *,
        received: object | None = None,
        expected: object | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.received = received
        self.expected = expected
        self.fix = fix
        parts = [message]
        if received is not None:
            parts.append(f"received: {received}")
        if expected is not None:
            parts.append(f"expected: {expected}")
        if fix is not None:
            parts.append(f"fix: {fix}")
        super().__init__("\n  ".join(parts))


class ConfigError(SlmforgeError):
    """A recipe or stage configuration is invalid (raised before any work starts)."""


class SchemaError(SlmforgeError):
    """An Arrow table does not match the contract of a stage boundary."""


class StageError(SlmforgeError):
    """A stage failed in a way that is not about one row (rows are quarantined instead)."""


class MissingDependencyError(SlmforgeError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, *, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed",
            expected=f"'{package}' importable",
            fix=f"pip install 'slmforge[{extra}]'",
        )


def require(module: str, *, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(module.split(".")[0], extra=extra, purpose=purpose) from exc
