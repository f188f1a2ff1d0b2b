from pathlib import Path

from slmforge.docgen import render

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_reference_is_current():
    current = (ROOT / "docs/recipe-reference.md").read_text()
    assert current == render(), "docs/recipe-reference.md is stale: run python -m slmforge.docgen"


def test_every_config_field_is_documented():
    from slmforge.stages import config_models

    for stage, model in config_models().items():
        for name, field in model.model_fields.items():
            if name in ("stage", "name", "inputs"):
                continue
            assert field.description, f"stage {stage}: field {name} has no description"


def test_every_registered_stage_imports_and_names_itself():
    """The stage index is the one list of stage types: each config and implementation imports, the
    config's ``stage`` literal is its key, and the config lives in the implementation's package."""
    from schemas.stage import Stage
    from slmforge.stages import STAGES, config_models, load_stage

    for name, model in config_models().items():
        assert model.model_fields["stage"].default == name
        stage = load_stage(model.model_construct(stage=name))
        assert isinstance(stage, Stage), name
        assert model.__module__.split(".")[0] == STAGES[name].impl.split(".")[0], name
