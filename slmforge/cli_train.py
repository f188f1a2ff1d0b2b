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

from slmforge.cli_common import SET_HELP, parse_sets, run_with_errors, stage_config, stats_table



def run_artifact(stage_type: str, fields: dict[str, Any], inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Validate the config and run the artifact stage into ``out`` through the runner's one step path
    (:func:`slmforge.runner.run_step`; resumable state in ``out/_work``)."""
    from slmforge.runner import run_step

    return run_step(stage_config(stage_type, fields, where=f"slmforge {stage_type}"), inputs, Path(out))


def _run(stage_type: str, fields: dict[str, Any], inputs: dict[str, Path], out: Path) -> None:
    stats = run_with_errors(run_artifact, stage_type, fields, inputs, out)
    stats_table(stage_type, stats, out)


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
                  "quantization": quantization, **parse_sets(set_)}
        _run("train", fields, {"dataset": dataset, "base_model": base_model}, out)

    @app.command("eval")
    def eval_cmd(
        dataset: Path = typer.Option(..., help="Dataset step folder or Parquet file (EXAMPLES with 'split')."),
        base_model: Path = typer.Option(..., help="base_model step folder or a local Hugging Face model folder."),
        adapter: Path = typer.Option(..., help="train step folder (holding adapter/)."),
        out: Path = typer.Option(..., help="Output folder: eval.json, eval.md, eval.png, samples.jsonl."),
        split: Optional[str] = typer.Option(None, help="test (default) or validation."),
        max_examples: Optional[int] = typer.Option(None, help="Rows evaluated (default 64)."),
        questions: Optional[Path] = typer.Option(None, help="Question file (JSON lines: id, question; optional "
                                                 "reference, keywords, page) for the four-way open-book table."),
        index: Optional[Path] = typer.Option(None, help="index step folder: adds the four-way table base/tuned x "
                                             "closed/open-book (passages retrieved from it)."),
        k: Optional[int] = typer.Option(None, "-k", help="Passages per open-book question (default 4)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Base vs tuned on held-out rows: loss, perplexity, exact match, token F1, ROUGE-L; with --index (and
        --questions), base vs tuned x closed-book vs open-book."""
        fields = {"split": split, "max_examples": max_examples, **parse_sets(set_)}
        inputs = {"dataset": dataset, "base_model": base_model, "adapter": adapter}
        if index is not None or questions is not None:
            fields["open_book"] = {**fields.get("open_book", {}), **({"questions": str(questions)} if questions else {}),
                                   **({"k": k} if k else {})}
        if index is not None:
            inputs["index"] = index
        _run("eval", fields, inputs, out)

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
        fields = {"quantizations": quant or None, "model_name": model_name, **parse_sets(set_)}
        if quant and "ollama_quantization" not in fields:
            fields["ollama_quantization"] = "Q8_0" if "Q8_0" in quant else quant[0]
        inputs = {"dataset": dataset, "base_model": base_model, "adapter": adapter}
        if eval_dir is not None:
            inputs["eval"] = eval_dir
        _run("export", fields, inputs, out)
