"""Merge the LoRA adapter, write GGUF files, and verify every file in llama.cpp before the stage succeeds.

Top to bottom: merge (and check the merged model equals the adapter-applied one) -> write the F16 GGUF
(``train.gguf_export``) -> optional importance matrix (llama.cpp, train split) -> quantise with llama.cpp's
own quantiser (``llama_model_quantize``: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0; Q4_0 by default GPTQ-calibrated on
the train split instead, ``train.q4_calibrate``, which measured far closer to the merged model) -> tokenizer check in llama.cpp
(training conversations and plain text tokenize to the training ids, BOS exactly once, end-of-turn is an
end-of-generation token) -> greedy generation in llama.cpp stops at the end-of-turn token -> KL divergence,
top-1 agreement and perplexity ratio of every file against the merged model over held-out text, gated per
file type -> Ollama Modelfile -> model card. When the base model was read from a GGUF, also that file's
tensors unchanged + the LoRA as a llama.cpp adapter GGUF (``train.gguf_lora``), verified as a pair. Every phase's
wall time goes into ``export.json`` (``timings``) and the model card. A failed check fails the stage after the card is written, so the
reason can be read next to the files.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from schemas.errors import StageError
from schemas.io import write_json, write_text
from schemas.stage import Stage, StageContext
from train.chat import encode_example
from train.config import ExportConfig, KLDGate
from train.export_card import model_card
from train.gguf_export import write_gguf
from train.gguf_lora import gguf_source, read_source, write_base_gguf, write_lora_gguf
from train.inputs import EXAMPLE_COLUMNS, conversations, find_inputs, load_model, load_tokenizer, read_examples, torch_setup
from train.modelfile import ollama_modelfile


def heldout_conversations(examples: Path) -> list[list[dict[str, str]]]:
    rows = read_examples(examples, split="test") or read_examples(examples, split="validation")
    if not rows:
        raise StageError("export: no held-out rows (test or validation split) to verify with",
                         received=str(examples), fix="give the dataset step a non-zero test_fraction")
    return conversations(rows)


def token_sequences(tokenizer, convs: list[list[dict[str, str]]], *, tokens: int, max_length: int) -> list[list[int]]:
    """Rendered conversations (training ids, cut to ``max_length``), in order, until ``tokens`` are reached."""
    out, total = [], 0
    for conv in convs:
        if total >= tokens:
            break
        ids = encode_example(tokenizer, conv, max_length=max_length)["input_ids"]
        if len(ids) > 1:
            out.append(ids)
            total += len(ids)
    return out


def item_logits(model, ids: list[int]) -> Any:
    """Logits (positions x vocabulary, float32, CPU) of one token sequence."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()


def leading_fit(model, sequences: list[list[int]], *, budget_bytes: int) -> int:
    """How many of the first ``sequences`` have logits that fit in ``budget_bytes`` together."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    used = 0
    for n, ids in enumerate(sequences):
        used += len(ids) * vocab * 4
        if used > budget_bytes:
            return n
    return len(sequences)


def model_dtype(precision: str):
    import torch

    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def merge_adapter(base_dir: Path, adapter: Path, probe: list[list[int]], *, budget_bytes: int,
                  dtype=None, keep_logits: list | None = None) -> tuple[Any, float, int]:
    """The merged model, the largest logit difference between it and the adapter-applied model, and on how
    many ``probe`` sequences that was measured (the first ones whose logits fit in ``budget_bytes``, at
    least one: the adapter-applied logits must be kept until the merge is done). ``keep_logits``: a list the
    merged model's logits of those sequences are appended to (the verification's reference reuses them)."""
    peft_model = load_model(base_dir, adapter=adapter, dtype=dtype)
    n = max(1, leading_fit(peft_model, probe, budget_bytes=budget_bytes))
    before = [item_logits(peft_model, ids) for ids in probe[:n]]
    merged = peft_model.merge_and_unload().eval()
    diff = 0.0
    for i, ids in enumerate(probe[:n]):
        after = item_logits(merged, ids)
        diff = max(diff, float((before[i] - after).abs().max()))
        before[i] = None
        if keep_logits is not None:
            keep_logits.append(after)
    return merged, diff, n


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gate_failures(stats: dict[str, Any], gate: KLDGate) -> list[str]:
    """What in ``stats`` misses ``gate`` (empty: the file passes)."""
    out = []
    if not stats["kld_mean"] <= gate.max_kld_mean:
        out.append(f"mean KLD {stats['kld_mean']:.3g} > {gate.max_kld_mean:g}")
    if not stats["kld_p99"] <= gate.max_kld_p99:
        out.append(f"p99 KLD {stats['kld_p99']:.3g} > {gate.max_kld_p99:g}")
    if not stats["top1"] >= gate.min_top1:
        out.append(f"top-1 {stats['top1']:.4f} < {gate.min_top1:g}")
    if not stats["ppl_ratio"] <= gate.max_ppl_ratio:
        out.append(f"PPL ratio {stats['ppl_ratio']:.4f} > {gate.max_ppl_ratio:g}")
    return out


class Timer:
    """Wall seconds per phase, in order (``with timer("phase"):``; a phase entered twice adds up)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            started = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - started, 3)
        return timed()


def base_lora_files(merged, tokenizer, source: Path, adapter: Path, out: Path, *, name: str) -> dict[str, Any]:
    """``<name>-base-<TYPE>.gguf`` (``source``'s tensors, this export's metadata) + ``<name>-lora-F16.gguf``."""
    started = time.perf_counter()
    reader, qtype = read_source(source)
    base = write_base_gguf(merged, tokenizer, reader, out / f"{name}-base-{qtype}.gguf", name=name)
    lora = write_lora_gguf(adapter, merged.config, out / f"{name}-lora-F16.gguf", name=name)
    return {"file": base["file"], "adapter": lora["file"], "type": f"{qtype} base + F16 LoRA",
            "bytes": base["bytes"] + lora["bytes"], "method": "base GGUF + LoRA adapter", "imatrix": False,
            "source": str(source), "lora": {k: lora[k] for k in ("alpha", "ranks", "adapted_tensors", "bytes")},
            "write_seconds": round(time.perf_counter() - started, 3)}


def label(f: dict[str, Any]) -> str:
    """A file's name in tables (``base + adapter`` for the pair)."""
    return f["file"] + (f" + {f['adapter']}" if f.get("adapter") else "")


def quantize_all(f16: Path, out: Path, *, name: str, quants: list[str], imatrix: dict | None,
                 threads: int | None, progress, write_gptq=None,
                 tensor_types: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """llama.cpp's quantiser from the F16 file to every type in ``quants`` except F16 (and Q4_0 when
    ``write_gptq(path)`` is given: GPTQ-calibrated, written by slmforge; returns the calibration's stats)."""
    from train.llama_cpp import quantize

    files = {}
    for q in quants:
        path = out / f"{name}-{q}.gguf"
        started = time.perf_counter()
        method = "slmforge" if q == "F16" else "llama.cpp"
        calibration = None
        if q == "Q4_0" and write_gptq is not None:
            calibration, method = write_gptq(path), "gptq"
        elif q != "F16":
            override = (tensor_types or {}).get(q)
            quantize(f16, path, qtype=q, threads=threads, imatrix=imatrix,
                     **({"token_embedding_type": override.token_embedding_type,
                         "tensor_types": override.tensor_types} if override else {}))
        if q != "F16":
            progress(1)
        files[q] = {"file": path.name, "type": q, "bytes": path.stat().st_size, "method": method,
                    "imatrix": imatrix is not None and method == "llama.cpp",
                    **({"tensor_types": tensor_types[q].model_dump()} if q in (tensor_types or {}) else {}),
                    "write_seconds": round(time.perf_counter() - started, 3),
                    **({"calibration": calibration} if calibration else {})}
    return files


class ExportStage(Stage[ExportConfig]):
    kind = "artifact"
    needs = ("examples", "base_model", "adapter")
    provides = "export"  # what a bundle step needs
    version = "4"  # 4: llama.cpp quantises (K-quants) and verifies (KL divergence gates)
    #: checked at plan time when the dataset step is listed first in inputs
    requires = EXAMPLE_COLUMNS

    def run(self, ctx: StageContext) -> dict[str, Any]:
        torch_setup(self.config.threads)
        from train.llama_cpp import GGUFModel
        from train.llama_imatrix import collect_imatrix, save_imatrix
        from train.verify import generation_check, tokenizer_check, verify_files

        cfg = self.config
        timer, run_started = Timer(), time.perf_counter()
        inputs = find_inputs(ctx.inputs)
        inputs.need("examples", "base_model", "adapter", where=ctx.step)
        out = Path(ctx.out_dir)
        tokenizer = load_tokenizer(inputs.base_model)
        heldout = heldout_conversations(inputs.examples)
        sequences = token_sequences(tokenizer, heldout, tokens=cfg.verify_tokens, max_length=cfg.verify_max_length)

        # 1. merge, and check the merge did not change the model
        dtype = model_dtype(cfg.precision)
        with timer("merge and merge check"):
            merged_logits: list = []  # the merge check's merged-model logits: the verification's first reference
            merged, merge_diff, merge_n = merge_adapter(inputs.base_model, inputs.adapter, sequences,
                                                        budget_bytes=cfg.logits_memory_mb << 20, dtype=dtype,
                                                        keep_logits=merged_logits)
        if merge_diff > 1e-3:
            raise StageError("export: the merged model differs from the adapter-applied model",
                             received=f"max |logit diff| {merge_diff:.3g}", expected="<= 1e-3",
                             fix="check the adapter matches the base model (same base_model step)")
        if cfg.keep_merged:
            with timer("merged model saved"):
                merged.save_pretrained(str(out / "merged"))
                tokenizer.save_pretrained(str(out / "merged"))
        ctx.progress(1)

        # 2. the F16 file (ours), the importance matrix and the quantised files (llama.cpp's)
        started = time.perf_counter()
        f16_dir = out if "F16" in cfg.quantizations else Path(ctx.work_dir)
        f16 = f16_dir / f"{cfg.model_name}-F16.gguf"
        smoothing = None
        if cfg.smooth:
            from train.q4_calibrate import calibration_sequences
            from train.smooth import smooth_checked

            with timer("smoothing scales searched and checked"):
                calib = calibration_sequences(tokenizer, inputs.examples, rows=cfg.smooth_rows + cfg.smooth_check_rows,
                                              max_length=cfg.calibration_max_length, purpose="choose the smoothing scales on",
                                              fix="set smooth: false on the export step")
                smoothing = smooth_checked(merged, calib, check_rows=cfg.smooth_check_rows, max_tokens=cfg.smooth_tokens,
                                           progress=ctx.progress)
        with timer("F16 GGUF written"):
            write_gguf(merged, tokenizer, f16, quant="F16", name=cfg.model_name,
                       smoothing=smoothing if smoothing is not None and smoothing.kept else None)
        f16_seconds = time.perf_counter() - started
        imatrix, imatrix_info = None, None
        if cfg.imatrix:
            started = time.perf_counter()
            train_rows = conversations(read_examples(inputs.examples, split="train")[:cfg.imatrix_rows])
            calib = token_sequences(tokenizer, train_rows, tokens=1 << 62, max_length=cfg.verify_max_length)
            if not calib:
                raise StageError("export: no train-split rows for the importance matrix", received=str(inputs.examples),
                                 fix="give the dataset step train rows, or set imatrix: false")
            stats = collect_imatrix(f16, calib, threads=cfg.threads, n_ctx=max(map(len, calib)))
            save_imatrix(stats, out / f"{cfg.model_name}.imatrix.gguf", dataset="train split",
                         chunk_size=max(map(len, calib)))
            imatrix = stats.means()
            imatrix_info = {"file": f"{cfg.model_name}.imatrix.gguf", "sequences": stats.sequences,
                            "tokens": stats.tokens, "tensors": len(stats.sums),
                            "seconds": round(time.perf_counter() - started, 3)}
            timer.seconds["importance matrix"] = imatrix_info["seconds"]
        write_gptq = None
        if "Q4_0" in cfg.quantizations and cfg.q4_0_method == "gptq":
            def write_gptq(path: Path) -> dict[str, Any]:
                from train.q4_calibrate import calibrate_q4_0, calibration_sequences

                calib = calibration_sequences(tokenizer, inputs.examples, rows=cfg.calibration_rows,
                                              max_length=cfg.calibration_max_length, tokens=cfg.calibration_tokens)
                weights, info = calibrate_q4_0(merged, calib, damp=cfg.calibration_damp)
                write_gguf(merged, tokenizer, path, quant="Q4_0", name=cfg.model_name, q4_0_weights=weights)
                return info
        files = quantize_all(f16, out, name=cfg.model_name, quants=cfg.quantizations, imatrix=imatrix,
                             threads=cfg.threads, progress=ctx.progress, write_gptq=write_gptq,
                             tensor_types=cfg.tensor_types)
        for q, f in files.items():
            if q != "F16":
                timer.seconds[f"{q} written ({f['method']})"] = f["write_seconds"]
        if "F16" in files:
            files["F16"]["write_seconds"] = round(f16_seconds, 3)
        source = gguf_source(inputs.base_model) if cfg.base_gguf else None
        if source is not None:
            files["base+lora"] = base_lora_files(merged, tokenizer, source, inputs.adapter, out, name=cfg.model_name)
            timer.seconds["base GGUF + LoRA adapter written"] = files["base+lora"]["write_seconds"]
        elif cfg.ollama_quantization == "base+lora":
            raise StageError("export: ollama_quantization base+lora, but the base model was not read from a GGUF",
                             received=str(inputs.base_model), fix="point the Modelfile at one of the quantizations")
        paths = {q: (out / f["file"], out / f["adapter"]) if f.get("adapter") else out / f["file"]
                 for q, f in files.items()}

        # 3. tokenizer check (every file) and the stop at end-of-turn in greedy generation (the F16 file), in llama.cpp
        probe = heldout[:cfg.tokenizer_samples]
        with timer("tokenizer checks"):
            for q, path in paths.items():
                with GGUFModel(path[0] if isinstance(path, tuple) else path, vocab_only=True) as gguf_model:
                    files[q]["tokenizer"] = tokenizer_check(gguf_model, tokenizer, probe)
        generation = None
        started = time.perf_counter()
        if cfg.generation_checks:
            convs = [c for c in heldout[:cfg.generation_checks] if c and c[-1]["role"] == "assistant"]
            n_ctx = max(len(s) for s in token_sequences(tokenizer, convs, tokens=1 << 62, max_length=1 << 30))
            with GGUFModel(f16, n_ctx=n_ctx + cfg.generation_max_tokens, threads=cfg.threads) as gguf_model:
                generation = generation_check(gguf_model, merged, tokenizer, convs, max_new_tokens=cfg.generation_max_tokens)
            timer.seconds["generation check"] = round(time.perf_counter() - started, 3)
        ctx.progress(1)

        # 4. KL divergence of every file against the merged model, held-out text, in llama.cpp
        started = time.perf_counter()
        kld = verify_files(merged, sequences, list(paths.values()), threads=cfg.threads, reference_logits=merged_logits,
                           group_bytes=cfg.verify_group_mb << 20, progress=ctx.progress)
        verify_seconds = time.perf_counter() - started
        timer.seconds["KLD verification"] = round(verify_seconds, 3)
        failures = []
        for q, f in files.items():
            f["verify"] = dict(kld[label(f)])
            f["verify_timing"] = f["verify"].pop("timing")
            f["bits_per_weight"] = f["verify"]["tensor_bytes"] * 8 / f["verify"]["n_params"]
            gate = cfg.adapter_gate if q == "base+lora" else cfg.gates[q]
            f["gate"] = gate.model_dump()
            problems = gate_failures(f["verify"], gate) + f["tokenizer"]["failures"]
            f["passed"] = not problems
            f["sha256"] = sha256(out / f["file"])
            if f.get("adapter"):
                f["adapter_sha256"] = sha256(out / f["adapter"])
            if problems:
                failures.append(f"{label(f)}: " + "; ".join(problems))
        if generation is not None and generation["failed"]:
            failures.append("greedy generation in llama.cpp (F16): " + "; ".join(generation["failures"]))
        if "F16" not in cfg.quantizations:
            f16.unlink()

        # 5. Ollama Modelfile and the model card
        pick = files["base+lora"] if cfg.ollama_quantization == "base+lora" else None
        modelfile = ollama_modelfile(gguf_name=pick["file"] if pick else f"{cfg.model_name}-{cfg.ollama_quantization}.gguf",
                                     adapter_name=pick["adapter"] if pick else None,
                                     tokenizer=tokenizer, system=cfg.system_prompt)
        write_text(modelfile, out / "Modelfile")
        eval_md = None
        if inputs.eval is not None:
            eval_md = (inputs.eval / "eval.md").read_text()
            for name in ("eval.png", "eval.json"):
                if (inputs.eval / name).exists():
                    shutil.copy2(inputs.eval / name, out / name)
        has_loss = (inputs.adapter.parent / "loss.png").exists()
        if has_loss:
            shutil.copy2(inputs.adapter.parent / "loss.png", out / "loss.png")
        stats = {"merge_max_abs_logit_diff": merge_diff, "merge_check_sequences": merge_n,
                 "precision": str(dtype).removeprefix("torch."), "verify_tokens": sum(len(s) - 1 for s in sequences),
                 "verify_sequences": len(sequences), "verify_seconds": round(verify_seconds, 3),
                 "imatrix": imatrix_info, "smoothing": smoothing.summary() if smoothing else None,
                 "generation": generation, "files": [f for q, f in files.items() if q != "base+lora"],
                 # apart from "files": a consumer of those (the bundle) takes each as a whole model on its own
                 "base_lora": files.get("base+lora"),
                 "threads": cfg.threads, "timings": {**timer.seconds,
                                                     "stage total": round(time.perf_counter() - run_started, 3)}}
        write_text(model_card(name=cfg.model_name, base=str(inputs.base_model), stats=stats, eval_md=eval_md,
                              has_loss_plot=has_loss, modelfile=modelfile), out / "README.md")
        write_json(stats, out / "export.json")
        if failures:
            raise StageError("export verification failed: " + " | ".join(failures),
                             fix=f"read the model card in {out}: a file beyond its KLD gate is damaged or too coarse for "
                                 "this model (pick a larger type); a tokenizer or generation failure is a GGUF metadata "
                                 "problem of the exporter (train/gguf_export.py)")
        return {"merge_max_abs_logit_diff": merge_diff, "verify_tokens": stats["verify_tokens"],
                **{f"{label(f)}:kld": round(f["verify"]["kld_mean"], 6) for f in files.values()},
                **{f"{label(f)}:top1": round(f["verify"]["top1"], 4) for f in files.values()}}

    def summary(self, stats):
        return [(k, str(v)) for k, v in stats.items() if k.endswith((":kld", ":top1")) or k == "verify_tokens"]
