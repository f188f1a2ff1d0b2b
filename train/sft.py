"""LoRA / QLoRA supervised fine-tuning.

Read top to bottom: pick the device and precision -> tokenize the train/validation rows with the
chat template (labels only on assistant tokens) -> check the end-of-turn token is trained ->
load the base model (4-bit NF4 for QLoRA) -> wrap it with LoRA -> train with the transformers
Trainer (checkpoints in ``ctx.work_dir`` so a killed run resumes) -> save the adapter, the loss
curve (JSON + PNG) and the stats.

We use ``transformers.Trainer`` with our own tokenization rather than trl's SFTTrainer: the
assistant mask comes from the same ``apply_chat_template(..., return_assistant_tokens_mask=True)``
call trl uses for ``assistant_only_loss``, and owning it lets us check the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.config import TrainConfig
from schemas.errors import ConfigError, StageError, require
from schemas.io import write_json
from schemas.stage import Stage, StageContext
from train.inputs import EXAMPLE_COLUMNS
from train.answer_head import trainer_class
from train.chat import check_end_of_turn_trained, check_template, encode_example, end_of_turn_id
from train.inputs import find_inputs, load_tokenizer, read_examples, torch_setup

CPU_QLORA_WARNING = (
    "no CUDA device: training plain LoRA (fp32) instead of QLoRA; 4-bit NF4 needs CUDA to be worthwhile "
    "(set quantization: nf4 to force CPU 4-bit, or quantization: none to silence this warning)"
)


def scale_lora_update(model, scale: float) -> int:
    """Multiply every LoRA B matrix by ``scale``: the adapter's update ``(α/r)·B·A`` becomes ``scale`` times it.
    Returns how many matrices were scaled."""
    import torch

    scaled = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.mul_(scale)
                scaled += 1
    if not scaled:
        raise StageError("train: adapter_scale found no LoRA B matrices to scale", received=type(model).__name__,
                         fix="set adapter_scale: 1 (this model has no LoRA layers)")
    return scaled


def pack(encoded: list[dict[str, Any]], *, max_length: int) -> list[dict[str, Any]]:
    """Greedily concatenate examples into sequences of at most ``max_length`` tokens."""
    packed: list[dict[str, Any]] = []
    cur = {"input_ids": [], "labels": []}
    for row in encoded:
        if cur["input_ids"] and len(cur["input_ids"]) + len(row["input_ids"]) > max_length:
            packed.append(cur)
            cur = {"input_ids": [], "labels": []}
        cur["input_ids"] = cur["input_ids"] + row["input_ids"]
        cur["labels"] = cur["labels"] + row["labels"]
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def collate(rows: list[dict[str, Any]], *, pad_id: int):
    """Right-pad a batch; padded positions get label -100 and attention 0."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def disable_avx512bf16_cpu_path(model) -> int:
    """bitsandbytes 0.50.2 on CPUs with AVX512-BF16 silently computes wrong LoRA gradients after any
    eval-mode forward through its bf16 CPU kernel. Turning that path off on every ``Linear4bit``
    before the first forward avoids it; returns how many layers were changed."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base_for_training(model_dir: Path, *, quantize_4bit: bool, dtype):
    """The base model, in 4-bit NF4 (QLoRA) or in ``dtype``, ready for LoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    if not quantize_4bit:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        return model.to("cuda") if torch.cuda.is_available() else model
    require("bitsandbytes", extra="train", purpose="QLoRA (4-bit NF4)")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=bnb_config, dtype=dtype,
                                                 device_map=device_map)
    disable_avx512bf16_cpu_path(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if missing:
        raise ConfigError("train: target_modules not found in the model", received=missing,
                          expected=f"names among {sorted(p for p in present if p.endswith('proj'))}",
                          fix="set 'target_modules:' to module names of this architecture")
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


def plot_loss(history: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Training (and validation) loss against optimizer step, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def pick_precision(cfg_precision: str):
    import torch

    cuda = torch.cuda.is_available()
    if cfg_precision == "auto":
        cfg_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return cfg_precision, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg_precision]


class TrainStage(Stage[TrainConfig]):
    kind = "artifact"
    needs = ("examples", "base_model")
    provides = "adapter"
    version = "1"
    #: checked at plan time when the dataset step is listed first in inputs
    requires = EXAMPLE_COLUMNS

    def fingerprint_extra(self) -> dict[str, Any]:
        if self.config.replay_fraction <= 0:
            return {}
        from train.replay import manifest

        return {"replay": manifest(self.config.replay_path)}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        torch = torch_setup(self.config.threads)
        from transformers import TrainerCallback, TrainingArguments, set_seed
        from transformers.trainer_callback import PrinterCallback
        from transformers.trainer_utils import get_last_checkpoint

        cfg = self.config
        inputs = find_inputs(ctx.inputs)
        inputs.need("examples", "base_model", where=ctx.step)
        out = Path(ctx.out_dir)
        warnings: list[str] = []

        # 1. device, precision, quantization
        cuda = torch.cuda.is_available()
        quantize_4bit = cfg.quantization == "nf4" or (cfg.quantization == "auto" and cuda)
        if cfg.quantization == "auto" and not cuda:
            warnings.append(CPU_QLORA_WARNING)
            ctx.log.warning(CPU_QLORA_WARNING)
        precision, dtype = pick_precision(cfg.precision)
        if not cuda and precision != "fp32":
            raise ConfigError(f"train: precision {precision} needs CUDA", received=precision, fix="use precision: auto")

        # 2. tokenize: labels only on assistant tokens; the end-of-turn token must be trained
        tokenizer = load_tokenizer(inputs.base_model)
        check_template(tokenizer, where=ctx.step)
        eot = end_of_turn_id(tokenizer)
        splits = {s: read_examples(inputs.examples, split=s) for s in ("train", "validation")}
        if not splits["train"]:
            raise StageError("train: the train split is empty", received=str(inputs.examples),
                             fix="check the dataset step's fractions and its quarantine.parquet")
        encoded = {s: [encode_example(tokenizer, r["messages"], max_length=cfg.max_length) for r in rows]
                   for s, rows in splits.items()}
        checked = check_end_of_turn_trained(encoded["train"], eot_id=eot, tokenizer=tokenizer)
        for s in encoded:  # a row whose assistant turn was truncated away teaches nothing
            encoded[s] = [r for r in encoded[s] if any(t != -100 for t in r["labels"])]
        truncated = sum(r["truncated"] for r in encoded["train"])
        rows = {s: [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in enc] for s, enc in encoded.items()}
        if cfg.packing:
            rows["train"] = pack(rows["train"], max_length=cfg.max_length)
        trained_tokens = sum(sum(t != -100 for t in r["labels"]) for r in rows["train"])
        replay: list[dict[str, Any]] = []
        if cfg.replay_fraction > 0:  # general text against forgetting, shuffled in with the domain rows
            from train.replay import read_replay_texts, replay_count, replay_rows

            replay = replay_rows(tokenizer, read_replay_texts(cfg.replay_path),
                                 count=replay_count(len(rows["train"]), cfg.replay_fraction),
                                 max_length=cfg.max_length, seed=cfg.seed)
            rows["train"] = rows["train"] + replay

        # 3. model + LoRA
        set_seed(cfg.seed)
        model = load_base_for_training(inputs.base_model, quantize_4bit=quantize_4bit, dtype=dtype)
        model = add_lora(model, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        # 4. train (resumable)
        ckpt_dir = Path(ctx.work_dir) / "checkpoints"

        class Progress(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                ctx.progress(1)

        if cfg.max_validation_rows is not None:  # the validation loss needs every row's full-vocabulary logits
            rows["validation"] = rows["validation"][:cfg.max_validation_rows]
        has_val = bool(rows["validation"])
        args = TrainingArguments(
            output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation,
            learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
            eval_strategy="epoch" if has_val else "no", seed=cfg.seed, data_seed=cfg.seed,
            prediction_loss_only=True,  # validation needs the loss only; logits of a 262k vocabulary would pile up
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda, report_to=[],
            disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
            activation_checkpointing=cfg.gradient_checkpointing, save_only_model=False,
        )
        trainer = trainer_class()(  # the output layer runs on trained positions only (train/answer_head.py)
            model=model, args=args, train_dataset=rows["train"], eval_dataset=rows["validation"] if has_val else None,
            data_collator=lambda batch: collate(batch, pad_id=tokenizer.pad_token_id
                                                if tokenizer.pad_token_id is not None else eot),
            callbacks=[Progress()],
        )
        trainer.remove_callback(PrinterCallback)  # library code never prints
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        result = trainer.train(resume_from_checkpoint=last)
        # the Trainer evaluates at the end of an epoch, and when max_steps ends training; never twice
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        final_eval = done[-1] if done else trainer.evaluate() if has_val else {}

        trained_eval = final_eval
        if cfg.adapter_scale != 1.0:  # keep that share of the update; the saved adapter is what every later step uses
            scale_lora_update(model, cfg.adapter_scale)
            final_eval = trainer.evaluate() if has_val else {}

        # 5. artifacts
        model.save_pretrained(str(out / "adapter"))
        tokenizer.save_pretrained(str(out / "adapter"))
        history = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
        write_json({"history": history}, out / "loss.json")
        plot_loss(history, out / "loss.png", title=f"{ctx.step}: LoRA r={cfg.rank}")
        losses = [h["loss"] for h in history if "loss" in h]
        stats = {
            "device": "cuda" if cuda else "cpu", "method": "qlora" if quantize_4bit else "lora", "precision": precision,
            "warnings": warnings, "train_rows": len(splits["train"]), "validation_rows": len(rows["validation"]),
            "train_sequences": len(rows["train"]), "trained_tokens": trained_tokens, "truncated_rows": truncated,
            "replay_sequences": len(replay), "replay_tokens": sum(len(r["input_ids"]) - 1 for r in replay),
            "end_of_turn_token": tokenizer.convert_ids_to_tokens([eot])[0], "end_of_turn_checked_rows": checked,
            "trainable_parameters": trainable, "steps": trainer.state.global_step,
            "resumed_from": Path(last).name if last else None,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
            "validation_loss": final_eval.get("eval_loss"),
            "adapter_scale": cfg.adapter_scale, "validation_loss_trained": trained_eval.get("eval_loss"),
        }
        write_json(stats, out / "train_stats.json")
        return stats

    def summary(self, stats):
        rows = [("method", f"{stats.get('method')} on {stats.get('device')}"),
                ("loss", f"{stats.get('first_loss')} -> {stats.get('last_loss')}")]
        if stats.get("replay_sequences"):
            rows.append(("replay", f"{stats['replay_sequences']} general-text sequences of {stats.get('train_sequences')}"))
        if stats.get("adapter_scale", 1.0) != 1.0:
            rows.append(("adapter scale", f"{stats['adapter_scale']} of the update kept: validation loss "
                         f"{stats.get('validation_loss_trained')} -> {stats.get('validation_loss')}"))
        rows += [("warning", w) for w in stats.get("warnings", [])]
        return rows
