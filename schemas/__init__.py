"""Contracts between stages: Arrow schemas, config models, errors, fingerprints, atomic IO.

Imports only pyarrow, polars and pydantic (docs/architecture.md, "Layers").
"""

from schemas.arrow import CHUNKS, DECISIONS, DOCUMENTS, EXAMPLES, QUARANTINE, SCHEMA_VERSION  # noqa: F401
from schemas.errors import ConfigError, MissingDependencyError, SchemaError, SlmforgeError, StageError  # noqa: F401
