from tests.core.conftest import corpus  # noqa: F401  (shared fixture)
