"""The built-in extractive teacher: no model, questions from structure, answers quoted verbatim.

Questions come from definition lines (``- **Term**: meaning``), procedures (numbered lists),
bullet lists and headed sections, and ``Customer:``/``Agent:`` exchanges (the customer's words as
the question, the agent's reply as the answer); every answer is a contiguous substring of the chunk, returned with its span,
so groundedness holds by construction and is checked again by :func:`judge`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

_DEF = re.compile(r"^[ \t]*[-*][ \t]+(?:\*\*|`)?(?P<term>[^:*`\n]{2,60}?)(?:\*\*|`)?[ \t]*:[ \t]+(?P<body>\S[^\n]{15,})$", re.M)
_STEPS = re.compile(r"(?:^[ \t]*\d+\.[ \t]+\S.*(?:\n(?![ \t]*#).*)*?)(?=\n[ \t]*\n(?![ \t]*(?:\d+\.|[ \t]{2,}|```))|\Z)", re.M)
_LIST = re.compile(r"(?:^[ \t]*[-*][ \t]+\S[^\n]*\n?)+", re.M)
_TURN = re.compile(
    r"^(?:Customer|User|Q):[ \t]*(?P<ask>\S.*?)\n\s*(?:Agent|Support|A):[ \t]*(?P<reply>\S.*?)(?=\n\s*(?:Customer|User|Q|Agent|Support|A):|\Z)",
    re.M | re.S,
)
_HEAD_LINE = re.compile(r"^#{1,6}\s+.*$", re.M)
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    span_start: int
    span_end: int
    kind: str  # definition|procedure|list|section|dialogue


def _title(source: str) -> str:
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("-", " ").replace("_", " ").strip()


#: with a page title (from the recipe's index), questions name the page the way a user names it, in several
#: phrasings picked by a stable hash of the term, so a reader learns the meaning rather than one sentence frame
_DEF_FORMS = ("What does {term} mean in {title}?", "What does {term} do in {title}?", "In {title}, what is {term}?",
              "What is {term} used for in {title}?", "Explain {term} in {title}.")
_SECTION_FORMS = {  # common section headings of reference pages, asked as users ask them
    "description": "What does {title} do?", "overview": "What is {title}?", "introduction": "What is {title}?",
    "summary": "What is {title}?", "purpose": "What is {title} for?",
    "notes": "What should I know before using {title}?", "caveats": "What should I know before using {title}?",
    "examples": "How is {title} used in practice?", "example": "How is {title} used in practice?",
}


def _pick(forms: tuple[str, ...], key: str) -> str:
    return forms[zlib.crc32(key.encode()) % len(forms)]


def generate(text: str, *, heading: str | None, source: str, limit: int, title: str | None = None) -> list[QA]:
    """Question/answer pairs whose answers are exact substrings ``text[span_start:span_end]``.

    ``title``: the page's title (e.g. ``ALTER TABLE``); without one, questions name the file's stem as a document."""
    out: list[QA] = []
    topic = _title(source)
    for m in _DEF.finditer(text):
        term = m.group("term").strip()
        q = (_pick(_DEF_FORMS, f"{title}/{term}").format(term=term, title=title) if title
             else f"In the {topic} document, what does \"{term}\" mean?")
        out.append(QA(q, m.group("body").strip(), m.start("body"), m.start("body") + len(m.group("body").strip()),
                      "definition"))
    for m in _STEPS.finditer(text):
        if m.group(0).count("\n") < 1 and not re.match(r"\s*1\.", m.group(0)):
            continue
        s = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        e = m.start() + len(m.group(0).rstrip())
        page = title or topic
        what = heading if heading and heading.lower() not in {"procedure", "steps"} else page
        q = f"What are the steps for {page if title else page.lower()}?" if what == page else \
            f"What are the steps for {what.lower()} ({page})?"
        out.append(QA(q, text[s:e], s, e, "procedure"))
    if heading:
        for m in _LIST.finditer(text):
            block = m.group(0).rstrip()
            if _DEF.search(block) or block.count("\n") < 1:
                continue
            q = (f"What is listed under {heading} in {title}?" if title
                 else f"What does the {topic} document list under \"{heading}\"?")
            out.append(QA(q, block, m.start(),
                          m.start() + len(block), "list"))
            break
    if heading:
        body_start = 0
        hm = _HEAD_LINE.match(text)
        if hm:
            body_start = hm.end()
        para = re.search(r"\S[^\n]*(?:\n(?![ \t]*\n)[^\n]*)*", text[body_start:])
        if para and not re.match(r"\s*(?:[-*]|\d+\.|```)", para.group(0)):
            s, e = body_start + para.start(), body_start + para.end()
            e = s + len(text[s:e].rstrip())
            q = heading if heading.endswith("?") else f"What does the {topic} document say about \"{heading}\"?"
            if title and not heading.endswith("?"):
                form = _SECTION_FORMS.get(heading.strip().lower(), "What does {title} say about {heading}?")
                if heading.strip().lower() in (title.strip().lower(), topic.lower()):
                    form = "What is {title} about?"
                q = form.format(title=title, heading=heading.strip().lower())
            elif heading.lower() == topic.lower():
                q = f"What is the {topic} document about?"
            out.append(QA(q, text[s:e], s, e, "section"))
    for m in _TURN.finditer(text):
        ask, reply = m.group("ask").strip(), m.group("reply").strip()
        if len(ask) >= 15 and len(reply) >= 15:
            out.append(QA(ask, reply, m.start("reply"), m.start("reply") + len(reply), "dialogue"))
    seen, uniq = set(), []
    for qa in out:
        if qa.question not in seen:
            seen.add(qa.question)
            uniq.append(qa)
    return uniq[:limit]


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def judge(question: str, answer: str, passage: str) -> dict[str, float]:
    """Deterministic heuristic judge of the extractive teacher (not an LLM), scores in 0-1.

    groundedness: share of answer words present in the passage (1.0 when quoted verbatim);
    helpfulness: grows with answer length up to 12 words, 0 when the answer repeats the question.
    """
    aw, pw, qw = words(answer), set(words(passage)), set(words(question))
    grounded = sum(w in pw for w in aw) / len(aw) if aw else 0.0
    novel = [w for w in aw if w not in qw]
    helpful = min(1.0, len(novel) / 12) if aw else 0.0
    return {"groundedness": grounded, "helpfulness": helpful}
