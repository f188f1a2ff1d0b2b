"""PII and secret scrubbing for technical corpora (Presidio analyzer + tuned recognizers).

Public API: :func:`find_pii`, :func:`scrub_texts` and the recipe stage ``curation.pii.stage:PiiStage``.
Presidio and spaCy are imported only when these functions run.
"""

from __future__ import annotations

from collections.abc import Sequence

from curation.pii.config import PiiConfig

__all__ = ["PiiConfig", "find_pii", "scan", "scrub_texts"]


def _init_worker(config_json: str) -> None:
    from curation.pii.engine import get_analyzer

    get_analyzer(PiiConfig.model_validate_json(config_json))


def _work(args: tuple[str, list[str]]) -> list[list[dict]]:
    from curation.pii.engine import analyze_batch

    config_json, texts = args
    return analyze_batch(texts, PiiConfig.model_validate_json(config_json))


def scan(texts: Sequence[str], *, config: PiiConfig | None = None) -> tuple[list[list[dict]], list[list[dict]]]:
    """Per text, (spans at or above ``score_threshold``, residual spans with ``residual_threshold`` <= score <
    ``score_threshold`` that no first-pass span covers). Residual lists are empty with ``residual: off``."""
    config = config or PiiConfig()
    spans = _analyze(list(texts), config)
    primary = [[s for s in found if s["score"] >= config.score_threshold] for found in spans]
    residual = [[s for s in found if s["score"] < config.score_threshold] for found in spans]
    return primary, residual


def find_pii(texts: Sequence[str], *, config: PiiConfig | None = None) -> list[list[dict]]:
    """Per text, the PII/secret spans ``{"start", "end", "entity_type", "score"}`` (sorted, non-overlapping)
    at or above ``score_threshold``.

    With ``config.workers > 1`` batches go to worker processes, each building its analyzer once.
    """
    return scan(texts, config=config)[0]


def _analyze(texts: list[str], config: PiiConfig) -> list[list[dict]]:
    texts = list(texts)
    if config.workers <= 1 or len(texts) <= config.batch_size:
        from curation.pii.engine import analyze_batch

        return analyze_batch(texts, config)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cj = config.model_dump_json()
    batches = [(cj, texts[i:i + config.batch_size]) for i in range(0, len(texts), config.batch_size)]
    with ProcessPoolExecutor(config.workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(cj,)) as pool:
        return [spans for batch in pool.map(_work, batches) for spans in batch]


def scrub_texts(texts: Sequence[str], *, config: PiiConfig | None = None) -> tuple[list[str], list[list[dict]]]:
    """Scrubbed texts and, per text, the replaced spans (type, score, offsets in the input; never values).

    With ``residual: replace`` the residual spans are replaced too (and listed); with ``review`` or ``off``
    they are left in place (the recipe stage pushes ``review`` rows to Argilla)."""
    from curation.pii.anonymize import corpus_key, replace

    config = config or PiiConfig()
    key = corpus_key(config) if config.anonymize == "pseudonym" and config.corpus_consistent else None
    texts = list(texts)
    primary, residual = scan(texts, config=config)
    if config.residual == "replace":
        primary = [sorted(p + r, key=lambda s: s["start"]) for p, r in zip(primary, residual)]
    return [replace(t, s, config, key=key) for t, s in zip(texts, primary)], primary
