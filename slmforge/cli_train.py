"""CLI commands of the train area: ``slmforge train``, ``slmforge eval``, ``slmforge export``.

They run the same stages as a recipe, on paths: a dataset (a dataset step's folder or a Parquet
file with a ``split`` column), a base model (a base_model step's folder or a Hugging Face model
folder) and an adapter (a train step's folder). Import only typer/rich at module level
(``slmforge --help`` must stay instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

SET_HELP = "Any other config field, key=value (YAML value), repeatable, e.g. --set rank=8."


def _sets(values: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_artifact(stage_type: str, fields: dict[str, Any], inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Validate the config, run the artifact stage into ``out`` (resumable state in ``out/_work``)."""
    from slmforge.stages import load_stage, parse_stage
    from schemas.errors import ConfigError
    from schemas.io import write_json
    from schemas.stage import StageContext

    for name, path in inputs.items():
        if not Path(path).exists():
            raise ConfigError(f"--{name.replace('_', '-')}: path not found", received=str(path),
                              fix="pass an existing folder (or Parquet file for --dataset)")
    config = parse_stage({"stage": stage_type, **{k: v for k, v in fields.items() if v is not None}},
                         where=f"slmforge {stage_type}")
    stage = load_stage(config)
    out = Path(out)
    (out / "_work").mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage_dir=out, work_dir=out / "_work", step=stage_type, inputs=inputs, out_dir=out)
    stage.load()
    stats = stage.run(ctx)
    write_json(stats, out / "stats.json")
    return stats


def _report(title: str, stats: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("stat")
    table.add_column("value")
    for key, value in stats.items():
        if isinstance(value, (dict, list)) and key != "warnings":
            continue
        if key == "warnings":
            for w in value:
                table.add_row("[yellow]warning[/]", str(w))
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    Console().print(f"wrote {out}")


def _guarded(fn):
    from schemas.errors import SlmforgeError

    try:
        return fn()
    except SlmforgeError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""

    @app.command("train")
    def train_cmd(
        dataset: Path = typer.Option(..., help="Dataset step folder or Parquet file (EXAMPLES with 'split')."),
        base_model: Path = typer.Option(..., help="base_model step folder or a local Hugging Face model folder."),
        out: Path = typer.Option(..., help="Output folder: adapter/, loss.json, loss.png (checkpoints in out/_work)."),
        epochs: Optional[float] = typer.Option(None, help="Passes over the train split (default 3)."),
        max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
        rank: Optional[int] = typer.Option(None, help="LoRA rank (default 16)."),
        learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate (default 2e-4)."),
        quantization: Optional[str] = typer.Option(None, help="auto | none | nf4 (auto: QLoRA on CUDA, LoRA on CPU)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """LoRA/QLoRA fine-tune on the train split; resumes from out/_work when re-run."""
        fields = {"epochs": epochs, "max_steps": max_steps, "rank": rank, "learning_rate": learning_rate,
                  "quantization": quantization, **_sets(set_)}
        stats = _guarded(lambda: run_artifact("train", fields, {"dataset": dataset, "base_model": base_model}, out))
        _report("train", stats, out)

    @app.command("eval")
    def eval_cmd(
        dataset: Path = typer.Option(..., help="Dataset step folder or Parquet file (EXAMPLES with 'split')."),
        base_model: Path = typer.Option(..., help="base_model step folder or a local Hugging Face model folder."),
        adapter: Path = typer.Option(..., help="train step folder (holding adapter/)."),
        out: Path = typer.Option(..., help="Output folder: eval.json, eval.md, eval.png, samples.jsonl."),
        split: Optional[str] = typer.Option(None, help="test (default) or validation."),
        max_examples: Optional[int] = typer.Option(None, help="Rows evaluated (default 64)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Base vs tuned on held-out rows: loss, perplexity, exact match, token F1, ROUGE-L."""
        fields = {"split": split, "max_examples": max_examples, **_sets(set_)}
        inputs = {"dataset": dataset, "base_model": base_model, "adapter": adapter}
        stats = _guarded(lambda: run_artifact("eval", fields, inputs, out))
        _report("eval", stats, out)

    @app.command("export")
    def export_cmd(
        dataset: Path = typer.Option(..., help="Dataset step folder or Parquet file (held-out text for verification)."),
        base_model: Path = typer.Option(..., help="base_model step folder or a local Hugging Face model folder."),
        adapter: Path = typer.Option(..., help="train step folder (holding adapter/)."),
        out: Path = typer.Option(..., help="Output folder: GGUF files, Modelfile, README.md model card, merged/."),
        eval_dir: Optional[Path] = typer.Option(None, "--eval", help="eval step folder; its results go into the card."),
        quant: Optional[list[str]] = typer.Option(None, help="F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0 (repeatable; default F16, Q8_0, Q4_K_M)."),
        model_name: Optional[str] = typer.Option(None, help="Name for files and Ollama (default slmforge-model)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Merge the adapter, write GGUF files (llama.cpp quantises), verify each in llama.cpp, write an Ollama Modelfile."""
        fields = {"quantizations": quant or None, "model_name": model_name, **_sets(set_)}
        if quant and "ollama_quantization" not in fields:
            fields["ollama_quantization"] = "Q8_0" if "Q8_0" in quant else quant[0]
        inputs = {"dataset": dataset, "base_model": base_model, "adapter": adapter}
        if eval_dir is not None:
            inputs["eval"] = eval_dir
        stats = _guarded(lambda: run_artifact("export", fields, inputs, out))
        _report("export", stats, out)
