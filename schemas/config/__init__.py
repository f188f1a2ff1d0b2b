"""Config models. Importing this package registers every stage type's config."""

from schemas.config.base import (  # noqa: F401
    STAGE_CONFIGS,
    Recipe,
    StageConfig,
    Strict,
    load_recipe,
    parse_stage,
    recipe_from_dict,
    runtime,
)
from schemas.config import curation  # noqa: F401,E402
from schemas.config import dedup  # noqa: F401,E402
from schemas.config import pii  # noqa: F401,E402
from schemas.config import annotate  # noqa: F401,E402
from schemas.config import synth  # noqa: F401,E402
from schemas.config import train  # noqa: F401,E402
