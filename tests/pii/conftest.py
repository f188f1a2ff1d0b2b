import pytest

pytest.importorskip("presidio_analyzer")

from tests.annotate.conftest import client, embedded  # noqa: E402,F401 (the real embedded Argilla server)


@pytest.fixture(scope="session")
def ner_config():
    """The NER config; the analyzer is cached per process, so the spaCy model loads once per session."""
    from curation.pii.engine import get_analyzer
    from curation.pii.config import PiiConfig

    cfg = PiiConfig()
    get_analyzer(cfg)
    return cfg
