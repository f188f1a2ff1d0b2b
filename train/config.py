"""Stage configs of the train area: dataset splits, base model, LoRA/QLoRA SFT, eval, GGUF export.

Each class registers itself by its ``stage`` literal. Defaults are the usual LoRA SFT values
(rank 16, alpha 32, lr 2e-4, 3 epochs); no default model path exists (DESIGN §6.4).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.config import StageConfig, Strict, runtime
from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUANTS = ("F16", "Q8_0", "Q4_K_M")  # the default files of the export stage


class DatasetConfig(StageConfig):
    """EXAMPLES rows -> the same rows with ``split`` set (train/validation/test).

    Rows are grouped by source document (rows sharing any ``source_ids`` entry form one group) and
    whole groups are assigned to splits, so near-identical rows never straddle splits. The
    assignment is deterministic for a given seed. Rows without a usable conversation (no assistant
    turn, empty content, unknown role) are quarantined.
    """

    stage: Literal["dataset"] = "dataset"
    seed: int = Field(0, description="Seed of the split assignment (any integer).")
    validation_fraction: float = Field(0.1, ge=0, le=0.5, description="Share of source-document groups in validation, 0-0.5.")
    test_fraction: float = Field(0.1, ge=0, le=0.5, description="Share of source-document groups in the held-out test split, 0-0.5.")


class TinyModelConfig(Strict):
    """A tiny randomly initialised model plus a byte-level BPE tokenizer trained on upstream text (offline demos, tests)."""

    architecture: Literal["llama", "qwen2", "gemma3"] = Field(
        "llama",
        description="Model architecture of the tiny model. 'gemma3': Gemma 3 text (Gemma3ForCausalLM, tied embeddings, "
        "head_dim 256 as GGUF readers assume, every 6th layer full attention) with a Gemma-style tokenizer "
        "(sentencepiece-like BPE with byte fallback, <start_of_turn> template) - a small stand-in for Gemma 3 270M.",
    )
    vocab_size: int = Field(512, ge=300, le=65_536, description="Target BPE vocabulary size (tokens), incl. 256 bytes + specials.")
    hidden_size: int = Field(64, ge=32, le=4096, description="Hidden size; a multiple of 32 (GGUF quant blocks) and of num_heads.")
    intermediate_size: int = Field(128, ge=32, le=16_384, description="MLP width; a multiple of 32.")
    num_layers: int = Field(2, ge=1, le=48, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, le=64, description="Key/value heads (grouped-query attention); divides num_heads.")
    max_position_embeddings: int = Field(1024, ge=64, le=131_072, description="Context length in tokens.")
    sliding_window: int = Field(512, ge=1, le=131_072,
                                description="gemma3 only: tokens a sliding-attention layer sees (Gemma 3 270M: 512).")
    seed: int = Field(0, description="Seed of the weight initialisation.")
    pretrain_steps: int = Field(
        0, ge=0, le=100_000,
        description="Full-parameter causal-LM steps on the 'text' column of the inputs (documents, chunks) so the "
        "base is a language model rather than random weights; 0 = none. Never uses example messages (held-out rows).",
    )
    pretrain_learning_rate: float = Field(2e-3, gt=0, le=1, description="AdamW learning rate of the pretraining steps.")
    pretrain_block_size: int = Field(128, ge=16, le=8192, description="Tokens per pretraining sequence.")

    @model_validator(mode="after")
    def _shapes(self) -> TinyModelConfig:
        if self.hidden_size % 32 or self.intermediate_size % 32:
            raise ConfigError("tiny: hidden_size and intermediate_size must be multiples of 32 (GGUF Q8_0/Q4_0 block size)",
                              received=(self.hidden_size, self.intermediate_size), fix="use e.g. 64/128 or 128/256")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("tiny: num_heads must divide hidden_size and num_kv_heads must divide num_heads",
                              received=(self.hidden_size, self.num_heads, self.num_kv_heads), fix="use e.g. 64, 4, 2")
        if self.architecture != "gemma3" and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError("tiny: head size (hidden_size / num_heads) must be even for rotary embeddings",
                              received=self.hidden_size // self.num_heads, fix="change num_heads")
        return self


class BaseModelConfig(StageConfig):
    """The base model as an artifact folder ``model/`` (weights + tokenizer with the chat template).

    Either ``path`` (a local Hugging Face folder, copied) or ``tiny`` (built from a config; its
    tokenizer is trained on the text/messages of this step's inputs).
    """

    stage: Literal["base_model"] = "base_model"
    path: str | None = Field(None, description="Local Hugging Face model folder (config.json, weights, tokenizer).")
    tiny: TinyModelConfig | None = Field(None, description="Build a tiny model instead of reading 'path'.")
    gguf_file: str | None = Field(
        None,
        description="Name of a GGUF file inside 'path' (e.g. gemma-3-270m-q4_k_m.gguf): model and tokenizer are read with "
        "transformers' GGUF loader (weights dequantised to float32) and saved as a Hugging Face folder. None: 'path' "
        "is a Hugging Face folder.",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template replacing the tokenizer's; must wrap assistant content and the end-of-turn "
        "token in {% generation %}...{% endgeneration %}. None: keep the tokenizer's (tiny: the built-in ChatML one).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BaseModelConfig:
        if (self.path is None) == (self.tiny is None):
            raise ConfigError("base_model: set exactly one of 'path' or 'tiny'",
                              received={"path": self.path, "tiny": self.tiny is not None},
                              fix="write 'path: /models/my-model' or 'tiny: {}'")
        if self.gguf_file is not None and self.path is None:
            raise ConfigError("base_model: 'gguf_file' needs 'path' (the folder holding the GGUF file)",
                              received={"gguf_file": self.gguf_file}, fix="add 'path: /models/folder-with-the-gguf'")
        return self


class TrainConfig(StageConfig):
    """LoRA / QLoRA supervised fine-tuning on the train split (loss on assistant tokens only).

    Inputs: a ``dataset`` step (EXAMPLES with split) and a ``base_model`` step.
    """

    stage: Literal["train"] = "train"
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto",
        description="'auto': QLoRA (bitsandbytes 4-bit NF4) on CUDA, plain LoRA with a warning on CPU; 'none': LoRA; "
        "'nf4': 4-bit NF4 even on CPU (needs bitsandbytes; slow).",
    )
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank).")
    adapter_scale: float = Field(
        1.0, gt=0, le=1,
        description="Share of the trained LoRA update the saved adapter keeps (its lora_B weights x this): "
        "weight-space interpolation between base and fine-tune (WiSE-FT) trades domain gain for less forgetting. "
        "1: the trained adapter. Choose it on validation data (bench/raft/adapter_scale.py) without retraining; "
        "changing it here retrains.",
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout probability, 0-1.")
    target_modules: list[str] = Field(list(LORA_TARGETS), min_length=1, description="Module names that get LoRA adapters.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    epochs: float = Field(3.0, gt=0, le=100, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, le=1024, description="Sequences per device step.")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Device steps per optimizer step.")
    max_length: int = Field(1024, ge=16, le=131_072, description="Maximum tokens per training sequence; longer rows are truncated.")
    packing: bool = Field(False, description="Concatenate examples into max_length sequences (faster, but attention crosses examples).")
    seed: int = Field(0, description="Seed of LoRA init, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="'auto': bf16 on CUDA when supported, else fp32.")
    gradient_checkpointing: bool = runtime(False, description="Trade compute for memory (CUDA models).")
    save_steps: int = runtime(50, ge=1, description="Write a resumable checkpoint every this many optimizer steps.")
    logging_steps: int = Field(1, ge=1, description="Record the loss every this many optimizer steps (loss.json granularity).")
    threads: int | None = runtime(None, ge=1, le=512, description="torch CPU threads (None: torch's default).")
    max_validation_rows: int | None = Field(
        None, ge=1,
        description="Compute the validation loss on at most this many validation rows (first by id). None: all. "
        "Each row costs a forward pass with full-vocabulary logits, which adds up on CPU with large vocabularies.",
    )
    replay_path: str | None = Field(
        None,
        description="General (non-domain) text mixed into training against forgetting: a .jsonl or .parquet file with a "
        "'text' column, or a folder of .txt/.md files. Trained as plain language modelling (every token), no chat template.",
    )
    replay_fraction: float = Field(
        0.0, ge=0, le=0.9,
        description="Share of training sequences taken from replay_path (0.25: one replay sequence per three domain "
        "rows). 0: no replay.",
    )

    @model_validator(mode="after")
    def _replay(self) -> TrainConfig:
        if self.replay_fraction > 0 and not self.replay_path:
            raise ConfigError("train: 'replay_fraction' needs 'replay_path'", received={"replay_fraction": self.replay_fraction},
                              fix="add 'replay_path: corpora/general.jsonl' (a 'text' column) or set replay_fraction: 0")
        return self


class OpenBookConfig(Strict):
    """The four-way evaluation (train/eval_openbook.py): base vs tuned x closed-book vs open-book, on the held-out
    split's questions and on an optional question file; passages come from the index step among eval's inputs."""

    k: int = Field(4, ge=1, le=64, description="Passages retrieved per question for the open-book prompts (use synth's raft.k).")
    questions: str | None = Field(
        None, description="A JSON-lines question file (fields id, question; optional reference, keywords [[groups]], "
        "page or source), evaluated besides the held-out split, e.g. data/eval/postgres_questions.jsonl."
    )
    max_questions: int = Field(64, ge=1, le=100_000, description="At most this many questions of the question file (first in file order).")
    quote: bool = Field(False, description="Open-book answers quote a span of a passage and cite it (base and tuned "
                       "alike): the decoding a bundle with quote: true serves (train/copying.py).")
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat, description="The retrieval prompt format; must be the one the RAFT rows were "
        "rendered with (checked against the fingerprint the rows record)."
    )


class EvalConfig(StageConfig):
    """Base vs tuned on the held-out test split: loss/perplexity and exact match / token F1 / ROUGE-L; with
    ``open_book``, the four-way table base vs tuned x closed-book vs open-book.

    Inputs: the ``dataset``, ``base_model`` and ``train`` steps (and ``index`` with ``open_book``).
    """

    stage: Literal["eval"] = "eval"
    split: Literal["test", "validation"] = Field("test", description="Split evaluated.")
    max_examples: int = Field(64, ge=1, le=100_000, description="Evaluate at most this many rows of the split (first by id).")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Greedy generation length for answer metrics (tokens).")
    max_length: int = Field(1024, ge=16, le=131_072, description="Tokens per row for the loss (longer rows truncated).")
    batch_size: int = runtime(8, ge=1, le=1024, description="Rows per forward pass.")
    threads: int | None = runtime(None, ge=1, le=512, description="torch CPU threads (None: torch's default).")
    open_book: OpenBookConfig | None = Field(
        None, description="Four-way evaluation with retrieved passages (needs an index step among the inputs); None: "
        "base vs tuned on the held-out rows only."
    )


class KLDGate(Strict):
    """Thresholds one GGUF file must meet against the merged model over the held-out text (llama.cpp's
    ``perplexity --kl-divergence`` statistics, measured in llama.cpp)."""

    max_kld_mean: float = Field(..., ge=0, description="Highest mean KL divergence per token (nats), >= 0.")
    max_kld_p99: float = Field(..., ge=0, description="Highest 99th percentile of the per-token KL divergence (nats), >= 0.")
    min_top1: float = Field(..., ge=0, le=1, description="Lowest top-1 agreement with the merged model, 0-1 (llama.cpp's 'same top p').")
    max_ppl_ratio: float = Field(..., ge=1, description="Highest perplexity ratio PPL(file) / PPL(merged model), >= 1.")


#: Default gates. Bars: llama.cpp's published Llama-3-8B figures (Q8_0 KLD 0.0014 / top-1 97.7 %, Q6_K 0.0055 /
#: 96.0 %, Q5_K_M 0.0108, Q4_K_M 0.031 / 91.9 %, Q4_0 0.072) with a margin for small models, which lose more
#: to the same rounding; a damaged file (a scaled tensor, a missing BOS) is far beyond them (docs/train.md).
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "F16": {"max_kld_mean": 1e-3, "max_kld_p99": 1e-2, "min_top1": 0.99, "max_ppl_ratio": 1.01},
    "Q8_0": {"max_kld_mean": 0.01, "max_kld_p99": 0.1, "min_top1": 0.95, "max_ppl_ratio": 1.02},
    "Q6_K": {"max_kld_mean": 0.03, "max_kld_p99": 0.3, "min_top1": 0.92, "max_ppl_ratio": 1.05},
    "Q5_K_M": {"max_kld_mean": 0.05, "max_kld_p99": 0.5, "min_top1": 0.90, "max_ppl_ratio": 1.08},
    "Q4_K_M": {"max_kld_mean": 0.1, "max_kld_p99": 1.0, "min_top1": 0.85, "max_ppl_ratio": 1.15},
    "Q4_0": {"max_kld_mean": 0.2, "max_kld_p99": 2.0, "min_top1": 0.80, "max_ppl_ratio": 1.3},
}

Quant = Literal["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"]


class TensorTypes(Strict):
    """Tensor types llama.cpp's quantiser uses instead of its own mix for one file type (``llama-quantize
    --token-embedding-type`` / ``--tensor-type``). The file keeps its name; the model card lists the overrides
    and the file's size and bits per weight show their cost."""

    token_embedding_type: Literal["F32", "F16", "BF16", "Q8_0", "Q6_K"] | None = Field(
        None, description="Type of token_embd (with tied embeddings also the output projection); None: llama.cpp's.")
    tensor_types: dict[str, Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q5_0", "Q4_0"]] = Field(
        {}, description="Regular expression on GGUF tensor names (e.g. '\\.attn_[qk]\\.weight$') -> type.")


class ExportConfig(StageConfig):
    """Merge the adapter, write the F16 GGUF, quantise it with llama.cpp, and verify every file in llama.cpp.

    Inputs: ``dataset`` (held-out text for verification; its train split for the optional importance
    matrix), ``base_model`` and ``train``; optionally ``eval`` (its results go into the model card). A file
    that fails its tokenizer check or its KL-divergence gate fails the stage (after the model card is written).
    """

    stage: Literal["export"] = "export"
    quantizations: list[Quant] = Field(
        list(QUANTS), min_length=1,
        description="GGUF files to write, <model_name>-<TYPE>.gguf. F16 is written by slmforge; the others by "
        "llama.cpp's quantiser from it (the F16 file is kept only when listed).",
    )
    model_name: str = Field("slmforge-model", pattern=r"^[a-z0-9][a-z0-9._-]*$",
                            description="Name used in file names, the model card and the Ollama Modelfile.")
    ollama_quantization: Quant | Literal["base+lora"] = Field(
        "Q8_0", description="GGUF file the Modelfile points to; base+lora: the base GGUF (FROM) + the LoRA adapter "
        "GGUF (ADAPTER), written when base_gguf applies.")
    system_prompt: str | None = Field(None, description="Optional SYSTEM line of the Ollama Modelfile.")
    verify_tokens: int = Field(
        4096, ge=64, le=10_000_000,
        description="Held-out tokens (test split, else validation; whole conversations by id until this many) over "
        "which every file's logits are compared with the merged model's. Fewer when the split holds fewer.",
    )
    verify_max_length: int = Field(1024, ge=16, le=131_072,
                                   description="Tokens per held-out conversation in the comparison (longer ones are cut).")
    gates: dict[Quant, KLDGate] = Field(
        {k: KLDGate(**v) for k, v in DEFAULT_GATES.items()},
        description="Per file type: max mean KLD, max 99th-percentile KLD, min top-1 agreement, max perplexity ratio "
        "against the merged model. Types not given keep their default gate.",
    )
    tokenizer_samples: int = Field(
        32, ge=1, le=100_000,
        description="Held-out conversations whose rendering (full and prompt-only) and message texts must tokenize "
        "to the training ids in llama.cpp (BOS exactly once).",
    )
    generation_checks: int = Field(
        16, ge=0, le=10_000,
        description="Held-out conversations fed to the F16 file in llama.cpp up to the end of their last answer; where "
        "the merged model's greedy next token is the template's end-of-turn token, llama.cpp's greedy generation "
        "must end on it. 0 = none.")
    generation_max_tokens: int = Field(8, ge=1, le=4096,
                                       description="Tokens llama.cpp may generate in that check before it counts as not stopping.")
    imatrix: bool = Field(
        False,
        description="Compute llama.cpp's importance matrix from the dataset's train split in llama.cpp (written as "
        "<model_name>.imatrix.gguf) and quantise with it.",
    )
    imatrix_rows: int = Field(128, ge=1, le=100_000, description="Train-split conversations (first by id) for the importance matrix.")
    q4_0_method: Literal["gptq", "llama.cpp"] = Field(
        "gptq",
        description="How the Q4_0 file is rounded. gptq: GPTQ with full-precision targets on the train split's "
        "activations (train/q4_calibrate.py), written by slmforge in the standard Q4_0 format (token_embd/output "
        "Q8_0); measured on the Gemma-3-270M fine-tune: KLD 0.031 vs 0.86 for llama.cpp's Q4_0 and 0.47 for its "
        "Q4_K_M (docs/train.md). llama.cpp: llama.cpp's quantiser, like the other types (seconds instead of minutes).",
    )
    smooth: bool = Field(
        False,
        description="Rescale the merged model's channels exactly before writing the F16 file (SmoothQuant with a "
        "per-layer search, train/smooth.py), so llama.cpp's 8-bit rounding of weights and activations costs less; the "
        "scales are used only if a whole-model Q8_0 simulation on smooth_check_rows other train rows comes out closer, "
        "and every file is still judged against the unscaled merged model. Measured on the Gemma-3-270M fine-tune: "
        "Q8_0 KLD 0.0030 -> 0.0016, Q4_K_M 0.41 -> 0.046 (docs/train.md).",
    )
    smooth_rows: int = Field(16, ge=1, le=100_000,
                             description="smooth: train-split conversations (the first by id) whose activations choose the scales.")
    smooth_check_rows: int = Field(
        4, ge=0, le=10_000,
        description="smooth: the next train-split conversations, on which the whole model is simulated with Q8_0 "
        "rounding with and without the scales; the scales are used only if they bring it closer (0: no check).")
    smooth_tokens: int = Field(1024, ge=64, le=1_000_000,
                               description="smooth: evenly spaced positions per layer input kept for the search (memory: "
                               "layers x this x the layer's input widths x 4 bytes).")
    calibration_rows: int = Field(128, ge=1, le=100_000,
                                  description="gptq: train-split conversations (the first by id) whose activations calibrate Q4_0.")
    calibration_tokens: int | None = Field(
        16_384, ge=256, le=100_000_000,
        description="gptq: stop taking calibration conversations once their tokens reach this many (the "
        "calibration's time grows with it: long RAFT rows made 128 conversations 56k tokens and the Q4_0 file 6 min on "
        "2 cores); null: all calibration_rows.")
    calibration_max_length: int = Field(512, ge=16, le=131_072,
                                        description="gptq and smooth: tokens per calibration conversation (longer ones are cut).")
    calibration_damp: float = Field(
        0.01, gt=0, le=1,
        description="gptq: damping added to the diagonal of each layer's input second moment, as a fraction of its "
        "mean diagonal (GPTQ's 'percdamp').",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="dtype of the merged model (and of the reference logits the files are compared with). auto: bf16 "
        "on CUDA with bf16 support, else fp32 (a 16-bit reference's own rounding counts against every file).",
    )
    logits_memory_mb: int = Field(
        1024, ge=0, le=1_000_000,
        description="Memory for the adapter-applied model's logits kept for the merge check (merged vs adapter-applied, "
        "on the held-out conversations that fit, at least one).",
    )
    verify_group_mb: int = runtime(
        8192, ge=1, le=10_000_000,
        description="GGUF files compared side by side share one pass of the merged model; files are grouped so a "
        "group's sizes sum to at most this (MiB); each further group costs one more pass.",
    )
    keep_merged: bool = Field(True, description="Also write the merged Hugging Face model (safetensors) to merged/.")
    tensor_types: dict[Quant, TensorTypes] = Field(
        {}, description="Per file type, tensor types that override llama.cpp's mix (e.g. Q8_0 with token_embd in F16); "
        "not for F16 or a GPTQ Q4_0. Measured effects: docs/train.md.")
    base_gguf: bool = Field(
        False,
        description="When the base_model step read its model from a GGUF file (gguf_file:), also write "
        "<model_name>-base-<TYPE>.gguf (that file's tensors unchanged, TYPE its own, with this export's tokenizer and "
        "template metadata) and <model_name>-lora-F16.gguf (the LoRA adapter in llama.cpp's adapter format), verified "
        "together in llama.cpp against the merged model with adapter_gate. Keeps the fine-tune that re-quantising a "
        "base already on a 4-6-bit grid rounds away (docs/train.md). No effect for other bases.",
    )
    adapter_gate: KLDGate = Field(
        KLDGate(max_kld_mean=0.01, max_kld_p99=0.1, min_top1=0.95, max_ppl_ratio=1.02),
        description="Gate of the base GGUF + LoRA adapter pair; default Q8_0's (mean KLD 0.01, p99 0.1, top-1 0.95, PPL "
        "ratio 1.02): the pair computes the merged model up to the adapter's F16 rounding and llama.cpp's rounding of "
        "activations in quantised matrix products.",
    )
    threads: int | None = runtime(None, ge=1, le=512, description="torch and llama.cpp CPU threads (None: all cores).")

    @model_validator(mode="after")
    def _ollama_file_exported(self) -> ExportConfig:
        if self.ollama_quantization == "base+lora" and not self.base_gguf:
            raise ConfigError("export: ollama_quantization base+lora needs base_gguf: true", received=self.base_gguf,
                              fix="set base_gguf: true, or point the Modelfile at one of the quantizations")
        bad = [q for q in self.tensor_types if q == "F16" or (q == "Q4_0" and self.q4_0_method == "gptq")]
        if bad:
            raise ConfigError("export: tensor_types applies to files llama.cpp quantises", received=bad,
                              fix="remove them, or set q4_0_method: llama.cpp for Q4_0")
        if self.ollama_quantization != "base+lora" and self.ollama_quantization not in self.quantizations:
            raise ConfigError("export: ollama_quantization must be one of the exported quantizations",
                              received=self.ollama_quantization, expected=self.quantizations,
                              fix="add it to 'quantizations:' or pick one of them for 'ollama_quantization:'")
        self.gates = {**{k: KLDGate(**v) for k, v in DEFAULT_GATES.items()}, **self.gates}
        return self
