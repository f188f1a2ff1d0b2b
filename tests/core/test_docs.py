from pathlib import Path

from slmforge.docgen import render

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_reference_is_current():
    current = (ROOT / "docs/recipe-reference.md").read_text()
    assert current == render(), "docs/recipe-reference.md is stale: run python -m slmforge.docgen"


def test_every_config_field_is_documented():
    import schemas.config as cfg

    for stage, model in cfg.STAGE_CONFIGS.items():
        for name, field in model.model_fields.items():
            if name in ("stage", "name", "inputs"):
                continue
            assert field.description, f"stage {stage}: field {name} has no description"
