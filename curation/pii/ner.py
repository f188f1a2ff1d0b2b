"""spaCy NER for PERSON / LOCATION / DATE_TIME, filtered for technical text before Presidio merges results.

The filter runs inside the recognizer: Presidio drops a span contained in a longer span of the same type,
so a bad NER span ("Lyndsey Flahive\\nDOB") must be removed before it can hide a good context span.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from schemas.errors import require_spacy_pipeline

NER_ENTITIES = {"PERSON", "LOCATION", "DATE_TIME"}
#: score of a (filtered) NER span: above the default threshold 0.5 and below every pattern/context score
#: (>= 0.6), so a precise pattern span inside an NER span survives Presidio's de-duplication and wins overlaps
NER_SCORE = 0.55

_TITLE = re.compile(r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Sra|Sir|Dame|Rev|Herr|Frau|Mme|Mlle|Nurse)\.?\s+")
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
            return False  # bare numbers, a year alone ("build 2057")
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


#: a line NER reads must hold a capitalised word: PERSON/LOCATION spans must start upper-case (keep_ner_span) and
#: dates in other lines are the patterns' job; lines of lower-case config, code and logs skip the network
_NAMEY = re.compile(r"(?<![\w.@/\\-])[A-Z][a-z]")


@dataclass
class _Ent:
    start_char: int
    end_char: int
    label_: str


def ner_view(text: str) -> tuple[str, list[tuple[int, int, int]]]:
    """(the lines of ``text`` that may hold a name or place, joined; segments (view start, text start, length))."""
    if not text:
        return text, [(0, 0, 0)]
    parts, segs, vpos, tpos = [], [], 0, 0
    for line in text.splitlines(True):
        if _NAMEY.search(line):
            if segs and segs[-1][1] + segs[-1][2] == tpos:  # adjacent to the previous kept line: one segment
                v, t, n = segs[-1]
                segs[-1] = (v, t, n + len(line))
            else:
                segs.append((vpos, tpos, len(line)))
            parts.append(line)
            vpos += len(line)
        tpos += len(line)
    return "".join(parts), segs or [(0, 0, 0)]


def _to_text(pos: int, segs: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(offset in the text of view offset ``pos``, end of its segment in the text)."""
    i = max(bisect.bisect_right([s[0] for s in segs], pos) - 1, 0)
    v, t, n = segs[i]
    return t + pos - v, t + n


def spacy_engine(config, entities: list[str]):
    """(SpacyNlpEngine with only tok2vec + ner, a filtering SpacyRecognizer) for ``config.spacy_model``."""
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    class FilteredSpacyRecognizer(SpacyRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001 (Presidio signature)
            out = []
            for r in super().analyze(text, entities, nlp_artifacts):
                if r.entity_type == "PERSON":  # "Mrs Green" -> "Green"
                    title = _TITLE.match(text, r.start, r.end)
                    r.start = title.end() if title and title.end() < r.end else r.start
                if keep_ner_span(r.entity_type, text[r.start:r.end]) and \
                        not common_word(r.entity_type, text[r.start:r.end], text):
                    r.score = min(r.score, NER_SCORE)  # context and pattern evidence wins an overlap
                    out.append(r)
            return out

    require_spacy_pipeline(config.spacy_model, needed_by="PII mode 'ner'", otherwise="set mode: patterns")
    nlp = spacy.load(config.spacy_model, disable=["parser", "senter", "tagger", "attribute_ruler", "lemmatizer"])
    nlp.max_length = max(nlp.max_length, config.chunk_chars + 1)
    ner_conf = NerModelConfiguration(
        model_to_presidio_entity_mapping={"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION",
                                          "LOC": "LOCATION", "DATE": "DATE_TIME", "TIME": "DATE_TIME"},
        low_confidence_score_multiplier=1.0, low_score_entity_names=[],
        labels_to_ignore=["CARDINAL", "ORDINAL", "ORG", "FAC", "NORP", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
                          "LANGUAGE", "QUANTITY", "PERCENT", "MONEY"],
    )
    class NerOnlyEngine(SpacyNlpEngine):
        def process_views(self, texts: list[str], batch_size: int):
            """NlpArtifacts per text from NER over its :func:`ner_view`, entity offsets mapped back to the text."""
            from presidio_analyzer.nlp_engine import NlpArtifacts

            conf = self.ner_model_configuration
            views = [ner_view(t) for t in texts]
            for (_, segs), doc in zip(views, self.nlp["en"].pipe((v for v, _ in views), batch_size=batch_size)):
                ents = []
                for e in doc.ents:
                    if e.label_ in conf.labels_to_ignore or e.label_ not in conf.model_to_presidio_entity_mapping:
                        continue
                    start, seg_end = _to_text(e.start_char, segs)
                    ents.append(_Ent(start, min(start + e.end_char - e.start_char, seg_end),
                                     conf.model_to_presidio_entity_mapping[e.label_]))
                yield NlpArtifacts(entities=ents, tokens=doc, tokens_indices=[], lemmas=[], nlp_engine=self,
                                   language="en", scores=[conf.default_score] * len(ents))

        def _doc_to_nlp_artifact(self, doc, language):  # noqa: ANN001 - no lemmas/token offsets: nothing reads them
            from presidio_analyzer.nlp_engine import NlpArtifacts

            entities, scores = self._get_updated_entities(doc.ents, [self.ner_model_configuration.default_score]
                                                          * len(doc.ents))
            return NlpArtifacts(entities=entities, tokens=doc, tokens_indices=[], lemmas=[], nlp_engine=self,
                                language=language, scores=scores)

    engine = NerOnlyEngine(models=[{"lang_code": "en", "model_name": config.spacy_model}],
                            ner_model_configuration=ner_conf)
    engine.nlp = {"en": nlp}
    return engine, FilteredSpacyRecognizer(supported_entities=entities, supported_language="en")
