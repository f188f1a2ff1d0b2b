"""Build one Presidio AnalyzerEngine per process and run it over batches of texts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from curation.pii.config import SECRET_ENTITIES, PiiConfig
from schemas.errors import ConfigError, require

from curation.pii.lexicon import NOT_NAMES
from curation.pii.ner import NER_ENTITIES, TECH_WORDS as _TECH  # noqa: F401 (re-exported)

_ENGINES: dict[tuple, Any] = {}


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

    from curation.pii.context import context_recognizers
    from curation.pii.recognizers import pii_recognizers
    from curation.pii.secrets import secret_recognizers

    _offline_tldextract()
    wanted = set(config.entities)
    recognizers = pii_recognizers() + context_recognizers() + secret_recognizers()
    known = {r.supported_entities[0] for r in recognizers} | NER_ENTITIES
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"unknown PII entity types {unknown}", received=unknown,
                          expected=", ".join(sorted(known)), fix="fix the 'entities' list of the pii stage")
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in recognizers:
        if rec.supported_entities[0] in wanted:
            registry.add_recognizer(rec)
    if config.mode == "ner" and wanted & NER_ENTITIES:
        from curation.pii.ner import spacy_engine

        engine, recognizer = spacy_engine(config, sorted(wanted & NER_ENTITIES))
        registry.add_recognizer(recognizer)
    else:
        engine = _noop_engine()
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"],
                          context_aware_enhancer=_no_context_enhancer())


def _no_context_enhancer():
    """Our recognizers weigh their own context (windows around the match); Presidio's lemma-based enhancer
    would only deep-copy every result list and walk every token again."""
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContext(ContextAwareEnhancer):
        def __init__(self) -> None:
            super().__init__(context_similarity_factor=0.0, min_score_with_context_similarity=0.0,
                             context_prefix_count=0, context_suffix_count=0)

        def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):  # noqa: ANN001
            return raw_results

    return NoContext()


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


def _resolve(spans: list[dict], threshold: float = 0.0) -> list[dict]:
    """Keep non-overlapping spans: those at or above ``threshold`` first, then secrets, then higher score,
    then longer; a lower-band span never displaces one the first pass replaces."""
    order = sorted(spans, key=lambda s: (s["score"] < threshold, s["entity_type"] not in SECRET_ENTITIES,
                                         -s["score"], s["start"] - s["end"]))
    taken: list[dict] = []
    for s in order:
        if all(s["end"] <= t["start"] or s["start"] >= t["end"] for t in taken):
            taken.append(s)
    return sorted(taken, key=lambda s: s["start"])


def scan_threshold(config: PiiConfig) -> float:
    """The lowest score analysed: residual_threshold when the residual scan is on."""
    return config.score_threshold if config.residual == "off" else min(config.score_threshold, config.residual_threshold)


def analyze_batch(texts: Sequence[str], config: PiiConfig) -> list[list[dict]]:
    """Spans per text down to :func:`scan_threshold` (spans below ``score_threshold`` are the residual band);
    raises on a text the analyzer cannot handle (the caller quarantines it)."""
    analyzer = get_analyzer(config)
    pieces: list[tuple[int, int, str]] = []  # (text index, offset, chunk)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        pieces.extend((i, off, c) for off, c in _chunks(t, config.chunk_chars))
    chunks = [p[2] for p in pieces]
    engine = analyzer.nlp_engine
    if hasattr(engine, "process_views"):
        artifacts = list(engine.process_views(chunks, config.batch_size))
    elif hasattr(engine, "nlp") and engine.nlp:
        artifacts = [a for _, a in engine.process_batch(chunks, "en", batch_size=config.batch_size)]
    else:
        artifacts = [engine.process_text(c, "en") for c in chunks]
    out: list[list[dict]] = [[] for _ in texts]
    entities = list(config.entities)
    for (i, off, chunk), art in zip(pieces, artifacts):
        results = analyzer.analyze(chunk, "en", entities=entities, score_threshold=scan_threshold(config),
                                   nlp_artifacts=art, regex_flags=re.MULTILINE,
                                   allow_list=list(config.allow_list) or None,
                                   allow_list_match=config.allow_list_match)
        for r in results:
            out[i].append({"start": r.start + off, "end": r.end + off, "entity_type": r.entity_type,
                           "score": round(float(r.score), 4)})
    allowed = _allowed(config)
    return [_resolve(_propagate_names(t, s, allowed=allowed), config.score_threshold) for t, s in zip(texts, out)]


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
                if len(t) > 2 and t[0].isupper() and t.lower() not in _TECH and t.lower().strip(".") not in NOT_NAMES \
                        and not allowed(t):
                    parts.setdefault(t, min(score, 0.7))
    extra = []
    for value, score in parts.items():
        for m in re.finditer(r"(?<![\w.@/-])" + re.escape(value) + r"(?![\w@-]|\.\w)", text):
            extra.append({"start": m.start(), "end": m.end(), "entity_type": "PERSON", "score": score})
    return spans + extra
