"""THE retrieval prompt format: how a question and its retrieved passages become chat messages, and how an
answer's citations map back to sources.

Training (RAFT rows) and serving (``slmforge ask`` / ``serve``) both call :meth:`PromptFormat.render_messages`,
and the bundle stores the format as ``prompt_format.json`` next to the model together with its
:meth:`PromptFormat.fingerprint`, so the prompt a served model sees is token-identical to the one it was
trained on (the chat template, checked by the export's parity gate, turns these messages into tokens).
Pure Python and pydantic: no heavy imports.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigError

#: the fields a passage template may use
PASSAGE_FIELDS = ("n", "source_id", "text", "title", "chunk_id")

FILE_NAME = "prompt_format.json"


def _fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid format string: {exc}") from None


def _check_template(template: str, allowed: Sequence[str], required: Sequence[str]) -> str:
    names = _fields(template)
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; allowed: {list(allowed)}")
    missing = [r for r in required if r not in names]
    if missing:
        raise ValueError(f"must contain the placeholder(s) {['{' + m + '}' for m in missing]}")
    return template


def _get(passage: Any, key: str) -> Any:
    if isinstance(passage, Mapping):
        return passage.get(key)
    return getattr(passage, key, None)


class PromptFormat(BaseModel):
    """The retrieval prompt: a system text, one line per passage, the question; citations as ``[n]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(1, ge=1, description="Version of this prompt format (bump when the wording changes).")
    system: str = Field(
        "Answer the question using only the numbered passages below. Cite the passage you used as [n]. "
        "If the passages do not contain the answer, say that they do not.",
        description="System message of an open-book prompt (passages given).")
    closed_book_system: str | None = Field(
        None, description="System message of a closed-book prompt (no passages); None: no system message.")
    passage_template: str = Field(
        "[{n}] ({source_id}) {text}",
        description="One passage; placeholders: {n} (1-based number, what citations refer to), {source_id}, "
                    "{text}, {title}, {chunk_id}.")
    passage_separator: str = Field("\n\n", description="Text between two rendered passages.")
    question_template: str = Field(
        "Passages:\n{passages}\n\nQuestion: {question}",
        description="User message of an open-book prompt; placeholders {passages} and {question}.")
    closed_book_template: str = Field("{question}", description="User message of a closed-book prompt; {question}.")
    citation_pattern: str = Field(
        r"\[(\d+)\]", description="Regular expression whose first group is a cited passage number in an answer.")

    @field_validator("passage_template")
    @classmethod
    def _passage(cls, v: str) -> str:
        return _check_template(v, PASSAGE_FIELDS, ["n", "text"])

    @field_validator("question_template")
    @classmethod
    def _question(cls, v: str) -> str:
        return _check_template(v, ["passages", "question"], ["passages", "question"])

    @field_validator("closed_book_template")
    @classmethod
    def _closed(cls, v: str) -> str:
        return _check_template(v, ["question"], ["question"])

    @field_validator("citation_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            groups = re.compile(v).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if groups < 1:
            raise ValueError("needs one capturing group for the passage number, e.g. \\[(\\d+)\\]")
        return v

    # --- rendering ----------------------------------------------------------------------------
    def render_passages(self, passages: Sequence[Any]) -> str:
        """The passages block; each passage is a mapping or an object with ``source_id``, ``text`` (and
        optionally ``title``, ``chunk_id``), e.g. an index ``Hit``."""
        parts = []
        for n, p in enumerate(passages, start=1):
            values = {k: _get(p, k) for k in PASSAGE_FIELDS if k != "n"}
            values = {k: "" if v is None else str(v) for k, v in values.items()}
            parts.append(self.passage_template.format(n=n, **values))
        return self.passage_separator.join(parts)

    def render_messages(self, question: str, passages: Sequence[Any] | None) -> list[dict[str, str]]:
        """Chat messages (``role``/``content``) for ``question``; ``passages`` None: closed-book."""
        if passages is None:
            system = self.closed_book_system
            user = self.closed_book_template.format(question=question)
        else:
            system = self.system
            user = self.question_template.format(passages=self.render_passages(passages), question=question)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    # --- citations ------------------------------------------------------------------------------
    def cited_numbers(self, answer: str, n_passages: int) -> list[int]:
        """Passage numbers (1-based) cited in ``answer``, in order of first citation; numbers that name no
        passage are ignored."""
        seen: list[int] = []
        for m in re.finditer(self.citation_pattern, answer):
            try:
                n = int(m.group(1))
            except (TypeError, ValueError):
                continue
            if 1 <= n <= n_passages and n not in seen:
                seen.append(n)
        return seen

    def parse_citations(self, answer: str, passages: Sequence[Any]) -> list[str]:
        """Source ids of the passages ``answer`` cites, in order of first citation, without repeats."""
        out: list[str] = []
        for n in self.cited_numbers(answer, len(passages)):
            sid = str(_get(passages[n - 1], "source_id"))
            if sid not in out:
                out.append(sid)
        return out

    # --- identity and storage -------------------------------------------------------------------
    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: any change of wording, template or pattern changes it."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        from schemas.io import write_json

        return write_json({**self.model_dump(mode="json"), "fingerprint": self.fingerprint()}, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, expected_fingerprint: str | None = None) -> PromptFormat:
        """Read a ``prompt_format.json``; refuse it when its content does not hash to the fingerprint it
        records, or to ``expected_fingerprint`` (the one the model was trained and bundled with)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("prompt format file not found", received=str(path),
                              fix="point at a bundle folder that holds prompt_format.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"prompt format file {path} is not readable JSON: {exc}",
                              fix="restore the file from the bundle it came from") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"prompt format file {path} is not a JSON object", received=type(raw).__name__)
        recorded = raw.pop("fingerprint", None)
        try:
            fmt = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"prompt format file {path} is invalid: {exc}",
                              fix="restore the file from the bundle it came from") from None
        actual = fmt.fingerprint()
        for what, want in (("the fingerprint recorded in the file", recorded),
                           ("the fingerprint the model was bundled with", expected_fingerprint)):
            if want is not None and want != actual:
                raise ConfigError(
                    f"prompt format {path} does not match {what}: the served prompt would differ from the one the "
                    "model was trained on", received=actual, expected=want,
                    fix="restore prompt_format.json from the bundle (or rebuild the bundle from the same recipe)")
        return fmt


__all__ = ["PromptFormat", "PASSAGE_FIELDS", "FILE_NAME"]
