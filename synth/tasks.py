"""Tasks of LLM teachers as distilabel Tasks, their versioned prompt files and the parsers of their replies.

Templates live in ``synth/templates/<name>.j2`` (Jinja2); a changed prompt is a new file name (``_v2``),
so the ``template`` column of every example says which prompt made it. Parsers are lenient about
whitespace and case, strict about content, and raise :class:`ParseError` (the stage quarantines the row
with the raw output); they never return ``None`` fields.

* grounded QA (RAFT-style): ``grounded_qa_gen_v1`` -> ``Question: ...`` / ``Answer: ...``
* multi-turn follow-ups: ``followup_qa_v1`` (passage + conversation so far) -> the same format
* LLM-as-judge: ``judge_v1`` -> ``Groundedness: 1-5`` / ``Helpfulness: 1-5``
* SelfInstruct (distilabel's task and template, seeded by a chunk) -> one instruction per line
* EvolInstruct (distilabel's mutation templates, one evolution) -> the evolved instruction
* answers to instructions: ``answer_v1`` -> the answer, or ``NOT IN PASSAGE``
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).parent / "templates"
GEN_TEMPLATE = "grounded_qa_gen_v1"
FOLLOWUP_TEMPLATE = "followup_qa_v1"
JUDGE_TEMPLATE = "judge_v1"
ANSWER_TEMPLATE = "answer_v1"
NOT_IN_PASSAGE = "NOT IN PASSAGE"


class ParseError(ValueError):
    """A teacher/judge reply that does not follow its template's format (``reason`` is a short code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@lru_cache(maxsize=None)
def template_text(name: str) -> str:
    path = TEMPLATE_DIR / f"{name}.j2"
    if not path.is_file():
        from schemas.errors import ConfigError

        raise ConfigError(f"synth: no prompt template {name!r}", received=name,
                          expected=", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.j2"))),
                          fix="add the file to synth/templates or use a listed name")
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _jinja(name: str):
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(template_text(name))


def render(name: str, **values: Any) -> str:
    """Fill the versioned template ``synth/templates/<name>.j2`` (Jinja2), stripped."""
    values.setdefault("heading", None)
    return _jinja(name).render(**values).strip()


# --- parsers ----------------------------------------------------------------------------------
_QA = re.compile(r"^[\W_]*question[*_\s]*:[*_\s]*(?P<q>.+?)\s*^[\W_]*answer[*_\s]*:[*_\s]*(?P<a>.+?)\s*\Z", re.I | re.S | re.M)
_SCORE = {k: re.compile(rf"{k}\W*[:=]\s*\**\s*([1-5])(?:\s*/\s*5)?\b", re.I) for k in ("groundedness", "helpfulness")}
_ENUM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def _printable(text: str, *, what: str) -> None:
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\t\r"))
    if bad:
        raise ParseError("unreadable", f"{what} has {bad} control/replacement characters")


def parse_qa(text: str | None) -> tuple[str, str]:
    """(question, answer) from a ``Question: ...`` / ``Answer: ...`` reply."""
    if text is None or not text.strip():
        raise ParseError("empty_output", "the teacher returned no text")
    m = _QA.search(text.strip())
    if not m:
        raise ParseError("no_question_answer", "expected 'Question: ...' then 'Answer: ...'")
    q, a = m.group("q").strip(), m.group("a").strip()
    for part, what in ((q, "question"), (a, "answer")):
        _printable(part, what=what)
        if len(_WORDS.findall(part)) < 2:
            raise ParseError("too_short", f"the {what} has fewer than two words")
    return q, a


def parse_judge(text: str | None) -> dict[str, float]:
    """{"groundedness", "helpfulness"} in 0-1 from ``Groundedness: 1-5`` / ``Helpfulness: 1-5`` lines."""
    if text is None or not text.strip():
        raise ParseError("empty_output", "the judge returned no text")
    out = {}
    for k, rx in _SCORE.items():
        m = rx.search(text)
        if not m:
            raise ParseError("no_score", f"no '{k.capitalize()}: <1-5>' line")
        out[k] = (int(m.group(1)) - 1) / 4
    return out


def parse_instructions(text: str | None, *, limit: int) -> list[str]:
    """Instructions, one per line (numbering/bullets removed), at most ``limit``."""
    if text is None or not text.strip():
        raise ParseError("empty_output", "the teacher returned no text")
    out = []
    for line in text.splitlines():
        line = _ENUM.sub("", line).strip().strip('"')
        if len(_WORDS.findall(line)) >= 3 and "\ufffd" not in line:
            out.append(line)
    if not out:
        raise ParseError("no_instruction", "no line with three or more words")
    return out[:limit]


def parse_answer(text: str | None) -> str:
    if text is None or not text.strip():
        raise ParseError("empty_output", "the teacher returned no text")
    a = text.strip()
    if a.upper().startswith(NOT_IN_PASSAGE):
        raise ParseError("not_in_passage", "the teacher says the passage does not answer it")
    _printable(a, what="answer")
    if len(_WORDS.findall(a)) < 2:
        raise ParseError("too_short", "the answer has fewer than two words")
    return a


def parse_evolved(text: str | None) -> str:
    if text is None or not text.strip():
        raise ParseError("empty_output", "the teacher returned no text")
    a = re.sub(r"^#?\s*(?:rewritten|created) prompt#?\s*:?", "", text.strip(), flags=re.I).strip()
    _printable(a, what="instruction")
    if len(_WORDS.findall(a)) < 3:
        raise ParseError("too_short", "the evolved instruction has fewer than three words")
    return a


# --- distilabel tasks ---------------------------------------------------------------------------
@contextmanager
def _outside_pipeline(step_name: str) -> Iterator[None]:
    """Built outside a Pipeline (the direct engine), a distilabel step logs a warning each time; drop just that one."""
    import logging

    logger = logging.getLogger(f"distilabel.step.{step_name}")

    def keep(record: logging.LogRecord) -> bool:
        return "hasn't received a pipeline" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def text_task(llm, name: str, columns: list[str]):
    """A distilabel ``TextGeneration`` whose prompt is our versioned template file ``name``."""
    from distilabel.steps.tasks import TextGeneration

    step = name.replace("_", "-")
    with _outside_pipeline(step):
        return TextGeneration(name=step, llm=llm, template=template_text(name), columns=columns,
                              add_raw_output=True, add_raw_input=False)


def self_instruct_task(llm, *, num_instructions: int):
    """distilabel's ``SelfInstruct`` seeded by a chunk (column ``input``)."""
    from distilabel.steps.tasks import SelfInstruct

    with _outside_pipeline("self-instruct"):
        return SelfInstruct(name="self-instruct", llm=llm, num_instructions=num_instructions,
                            application_description="A support assistant answering questions about the team's "
                            "runbooks and documentation, using only that documentation.")


def evol_prompt(instruction: str) -> tuple[str, str]:
    """(mutation name, prompt) of one EvolInstruct evolution; the mutation is chosen by a hash of the instruction."""
    from distilabel.steps.tasks.evol_instruct.utils import MUTATION_TEMPLATES

    names = sorted(MUTATION_TEMPLATES)
    name = names[zlib.crc32(instruction.encode()) % len(names)]
    return name, MUTATION_TEMPLATES[name].replace("<PROMPT>", instruction)


@contextmanager
def prompt_side(task) -> Iterator[Any]:
    """Load a task's templates without (re)loading its LLM, which the Teacher has loaded already."""
    llm = task.llm
    object.__setattr__(llm, "load", lambda: None)
    try:
        task.load()
        yield task
    finally:
        llm.__dict__.pop("load", None)
