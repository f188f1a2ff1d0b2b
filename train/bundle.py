"""The bundle: one self-contained folder with everything ``slmforge ask`` / ``serve`` need, and its loader.

Layout (``<workspace>/bundle/<fingerprint>/bundle/``)::

    bundle.json            manifest: every file with sha256 and bytes, the default GGUF, llama.cpp settings
                           (context, generation controls), the prompt format's fingerprint, the index
    <name>-<TYPE>.gguf     the GGUF files the export wrote (hard links or copies)
    <name>-base-<TYPE>.gguf + <name>-lora-F16.gguf
                           the base GGUF + LoRA adapter pair, when the export wrote one (``base_gguf: true``);
                           ask/serve load it with ``--gguf pair`` (or ``default_gguf: pair``)
    index/                 the retrieval index (absent: the bundle answers closed-book only)
    prompt_format.json     the retrieval prompt format (schemas/prompt_format.py) with its fingerprint
    chat_template.jinja    the chat template, as stored in the default GGUF (what llama.cpp sees)
    README.md              the export's model card with a "Bundle" section
    Modelfile, *.png       the export's Ollama Modelfile and the card's plots

Top to bottom: find the export (and the index, and the dataset) among the inputs -> copy/link -> read the chat
template and context length from the GGUF -> size the answer length from the training answers -> write the
prompt format, the card and the manifest -> load the finished folder exactly as ``ask`` will (``open_bundle``:
every file's sha256, the prompt format's fingerprint, the index opens and answers a search).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, StageError
from schemas.io import write_json, write_text
from schemas.prompt_format import FILE_NAME as PROMPT_FILE
from schemas.prompt_format import PromptFormat
from schemas.stage import Stage, StageContext
from train.bundle_config import BundleConfig

MANIFEST = "bundle.json"
TEMPLATE_FILE = "chat_template.jinja"
FORMAT_VERSION = 2
#: manifests this version reads (1: no generation controls, no pair; their defaults apply)
READS_VERSIONS = (1, 2)
#: the name ask/serve/default_gguf give the base GGUF + LoRA adapter pair
PAIR = "pair"
#: answer length when no dataset is among the inputs to size it from
FALLBACK_MAX_NEW_TOKENS = 256
#: files of the export step that go into the bundle besides the GGUF files
EXPORT_EXTRAS = ("Modelfile", "eval.png", "loss.png")
#: runner bookkeeping inside a step folder that is not part of an index
STEP_FILES = {"_SUCCESS", "_work", "_shards", "_out", "decisions.parquet", "quarantine.parquet"}


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def gguf_info(path: Path) -> dict[str, Any]:
    """Chat template, BOS/EOS token text and training context length stored in a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    tokens = reader.fields.get("tokenizer.ggml.tokens")

    def token(key: str) -> str | None:
        idx = value(key)
        return None if idx is None or tokens is None else str(tokens.contents(int(idx)))

    return {"architecture": arch, "chat_template": value("tokenizer.chat_template"),
            "context_length": value(f"{arch}.context_length") if arch else None,
            "bos_token": token("tokenizer.ggml.bos_token_id"), "eos_token": token("tokenizer.ggml.eos_token_id")}


def _place(src: Path, dst: Path, *, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(src, dst)


@dataclass
class BundleInputs:
    export: Path
    index: Path | None = None
    #: a dataset step (examples with messages): the training answers size max_new_tokens
    dataset: Path | None = None


def find_bundle_inputs(inputs: dict[str, Path], *, where: str) -> BundleInputs:
    """The export folder (holds export.json), the optional dataset (part-*.parquet with messages) and the optional
    index folder (anything else) among a step's inputs."""
    from train.inputs import find_inputs

    exports = [Path(p) for p in inputs.values() if (Path(p) / "export.json").is_file()]
    datasets = [Path(p) for p in inputs.values() if Path(p) not in exports and find_inputs({"x": Path(p)}).examples]
    others = [Path(p) for p in inputs.values() if Path(p) not in exports and Path(p) not in datasets]
    if len(exports) != 1:
        raise ConfigError(f"{where}: needs exactly one export step among its inputs", received=[str(p) for p in inputs.values()],
                          expected="one folder holding export.json (an export step)",
                          fix="list the export step (and optionally the index and dataset steps) in 'inputs:'")
    for kind, found in (("index", others), ("dataset", datasets)):
        if len(found) > 1:
            raise ConfigError(f"{where}: at most one {kind} among the inputs", received=[str(p) for p in found],
                              fix=f"list one {kind} step in 'inputs:'")
    return BundleInputs(export=exports[0], index=others[0] if others else None, dataset=datasets[0] if datasets else None)


def export_ggufs(export: Path) -> list[str]:
    """File names of the GGUF models the export wrote, in its order (the importance matrix is no model)."""
    meta = json.loads((export / "export.json").read_text())
    names = [f["file"] for f in meta.get("files", []) if str(f.get("file", "")).endswith(".gguf")]
    names = [n for n in names if (export / n).is_file()]
    if not names:
        raise StageError("bundle: the export step holds no GGUF file", received=str(export),
                         fix="run the export step again (it writes <name>-<TYPE>.gguf)")
    return names


def export_pair(export: Path) -> dict[str, str] | None:
    """``{base, adapter, type}`` of the base GGUF + LoRA adapter pair the export wrote (``base_gguf: true``), or
    None. A pair the export lists but whose files are gone is an error (the bundle would silently lack it)."""
    pair = json.loads((export / "export.json").read_text()).get("base_lora")
    if not pair:
        return None
    missing = [pair[k] for k in ("file", "adapter") if not (export / pair[k]).is_file()]
    if missing:
        raise StageError("bundle: the export lists a base + LoRA pair whose files are missing", received=missing,
                         fix="run the export step again")
    return {"base": pair["file"], "adapter": pair["adapter"], "type": pair.get("type", "base + LoRA")}


def pick_default(names: list[str], wanted: str | None, *, pair: dict[str, str] | None = None) -> str:
    """The default model: a GGUF file name, or :data:`PAIR` for the base + adapter pair."""
    if wanted == PAIR:
        if pair is None:
            raise ConfigError("bundle: default_gguf 'pair', but the export wrote no base GGUF + LoRA adapter pair",
                              received=wanted, expected=", ".join(names),
                              fix="set base_gguf: true on the export step (a base model read from a GGUF), or pick "
                                  "one of the exported types")
        return PAIR
    if wanted is not None:
        match = [n for n in names if n.endswith(f"-{wanted}.gguf")]
        if not match:
            raise ConfigError(f"bundle: default_gguf {wanted!r} was not exported", received=wanted,
                              expected=", ".join(names + ([PAIR] if pair else [])),
                              fix="pick one of the exported types or add it to the export")
        return match[0]
    q8 = [n for n in names if n.endswith("-Q8_0.gguf")]
    return q8[0] if q8 else names[0]


def training_answer_lengths(dataset: Path, model: Path) -> list[int]:
    """Generated-token lengths (train.generation.answer_lengths) of the last assistant message of every training
    row (the train split; all rows when the dataset has no split), tokenized by ``model``'s vocabulary in
    llama.cpp."""
    from schemas.errors import require
    from train.generation import answer_lengths
    from train.inputs import read_examples

    llama_cpp = require("llama_cpp", extra="llama", purpose="sizing the answer length from the training answers")
    rows = read_examples(dataset)
    if any(r.get("split") for r in rows):
        rows = [r for r in rows if r.get("split") == "train"]
    answers = [m["content"] for r in rows for m in r["messages"][-1:] if m["role"] == "assistant"]
    if not answers:
        raise StageError("bundle: the dataset input holds no training answers", received=str(dataset),
                         fix="list the dataset step the model was trained on in 'inputs:' (or set max_new_tokens)")
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return answer_lengths(answers, lambda t: vocab.tokenize(t.encode("utf-8"), add_bos=False, special=False))
    finally:
        vocab.close()


def index_folder(step: Path) -> Path:
    """The self-contained index folder inside an index step's folder (the reader resolves it)."""
    from curation.index import open_index

    return Path(getattr(open_index(step), "path", step))


def check_index(path: Path) -> int | None:
    """Open the index as ``ask`` will and run one search: a copy that does not open fails the stage here."""
    from curation.index import open_index

    try:
        index = open_index(path)
        hits = index.search("a", 1)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign reader is reported with its cause
        raise StageError(f"bundle: the index copied to {path} does not open", received=f"{type(exc).__name__}: {exc}",
                         fix="rebuild the index step (slmforge run RECIPE) and then the bundle") from exc
    return len(index) if hasattr(index, "__len__") else len(hits)


def outside_model(index: Path) -> str | None:
    """The embedding model folder a dense or hybrid index reads at search time (outside the bundle), if any."""
    meta = index / "index.json"
    return json.loads(meta.read_text()).get("embedding_model") if meta.is_file() else None


def bundle_card(card: str, *, manifest: dict[str, Any]) -> str:
    index, llama, pair = manifest["index"], manifest["llama"], manifest.get("pair")
    sized = llama.get("max_new_tokens_from") or {}
    length = (f"at most {llama['max_new_tokens']} new tokens"
              + (f" (the {sized['quantile']:g} quantile of the {sized['answers']} training answers' lengths; "
                 f"median {sized['median']}, longest {sized['max']})" if sized.get("answers") else ""))
    guard = (f"a repeat of {llama['loop_ngram']} tokens ends the answer" if llama.get("loop_ngram")
             else "no loop guard")
    default = (f"`{pair['base']}` + adapter `{pair['adapter']}` ({pair['type']})" if manifest["default_gguf"] == PAIR
               else f"`{manifest['default_gguf']}`")
    lines = ["", "## Bundle", "",
             f"Default GGUF: {default} (llama.cpp, n_ctx {llama['n_ctx']}, greedy, {length}; stops at the end of "
             f"turn; repeat penalty {llama.get('repeat_penalty', 1.0):g}; {guard}"
             + ("; open-book answers quote a span of a passage and cite it" if llama.get("quote") else "") + ").",
             *([f"Also carried: the base GGUF + LoRA adapter pair `{pair['base']}` + `{pair['adapter']}` "
                f"(`--gguf {PAIR}`)."] if pair and manifest["default_gguf"] != PAIR else []),
             f"Prompt format fingerprint: `{manifest['prompt_format']['fingerprint']}` "
             f"(version {manifest['prompt_format']['version']}).",
             (f"Retrieval: the index in `index/`, {manifest['retrieval']['k']} passages per question."
              if index else "Retrieval: **none** -- this bundle has no index and answers closed-book only."),
             "", "```", "slmforge ask --bundle . \"your question\"", "slmforge serve --bundle .", "```", ""]
    return card.rstrip() + "\n" + "\n".join(lines)


def answer_budget(cfg: BundleConfig, dataset: Path | None, model: Path) -> tuple[int, dict[str, Any]]:
    """``max_new_tokens`` and where it came from: the config's value, else the ``answer_quantile`` of the training
    answers' token lengths, else (no dataset among the inputs) :data:`FALLBACK_MAX_NEW_TOKENS`."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens, {"source": "config"}
    if dataset is None:
        return FALLBACK_MAX_NEW_TOKENS, {"source": "fallback: no dataset among the inputs"}
    from train.generation import quantile

    lengths = training_answer_lengths(dataset, model)
    return quantile(lengths, cfg.answer_quantile), {
        "source": "training answers", "quantile": cfg.answer_quantile, "answers": len(lengths),
        "median": quantile(lengths, 0.5), "max": max(lengths)}


class BundleStage(Stage[BundleConfig]):
    kind = "artifact"
    version = "2"
    #: plan() checks an export step is among the inputs (index and dataset steps are optional)
    needs = ("export",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        found = find_bundle_inputs(dict(ctx.inputs), where=ctx.step)
        export, index = found.export, found.index
        out = Path(ctx.out_dir) / "bundle"
        out.mkdir(parents=True, exist_ok=True)

        names, pair = export_ggufs(export), export_pair(export)
        default = pick_default(names, cfg.default_gguf, pair=pair)
        for name in names + ([pair["base"], pair["adapter"]] if pair else []):
            _place(export / name, out / name, link=cfg.link)
            ctx.progress(1)
        for name in EXPORT_EXTRAS:
            if (export / name).is_file():
                shutil.copy2(export / name, out / name)
        if index is not None:
            shutil.copytree(index_folder(index), out / "index",
                            ignore=lambda d, entries: [e for e in entries if e in STEP_FILES])

        model = out / (pair["base"] if default == PAIR else default)
        info = gguf_info(model)
        if not info["chat_template"]:
            raise StageError(f"bundle: {model.name} has no chat template (tokenizer.chat_template)",
                             fix="export from a base model whose tokenizer has a chat template")
        write_text(info["chat_template"], out / TEMPLATE_FILE)
        trained_ctx = int(info["context_length"] or 4096)
        n_ctx = cfg.n_ctx or min(trained_ctx, 4096)
        max_new, sized = answer_budget(cfg, found.dataset, model)
        fmt: PromptFormat = cfg.prompt_format
        fmt.save(out / PROMPT_FILE)

        manifest = {
            "format_version": FORMAT_VERSION,
            "model_name": names[0].rsplit("-", 1)[0],
            "default_gguf": default,
            "ggufs": names,
            "pair": pair,
            "index": "index" if index is not None else None,
            "retrieval": {"k": cfg.k} if index is not None else None,
            "prompt_format": {"file": PROMPT_FILE, "fingerprint": fmt.fingerprint(), "version": fmt.version},
            "chat_template": {"file": TEMPLATE_FILE, "bos_token": info["bos_token"], "eos_token": info["eos_token"]},
            "llama": {"n_ctx": n_ctx, "trained_context_length": trained_ctx, "temperature": 0.0,
                      "max_new_tokens": max_new, "max_new_tokens_from": sized, "repeat_penalty": cfg.repeat_penalty,
                      "loop_ngram": cfg.loop_ngram, "quote": cfg.quote},
        }
        card = (export / "README.md").read_text() if (export / "README.md").is_file() else f"# {manifest['model_name']}\n"
        write_text(bundle_card(card, manifest=manifest), out / "README.md")
        manifest["files"] = {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                             for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}
        write_json(manifest, out / MANIFEST)

        bundle = open_bundle(out)  # the finished folder loads exactly as ask/serve load it
        chunks = check_index(bundle.index) if bundle.index is not None else None
        outside = outside_model(out / "index") if index is not None else None
        warnings = ([f"the index needs its embedding model folder {outside}, which is not in the bundle: it must "
                     "exist at that path wherever the bundle runs"] if outside else []) + (
                    [f"max_new_tokens {max_new}: no dataset among the inputs to size it from the training answers "
                     "(add the dataset step to 'inputs:' or set max_new_tokens)"]
                    if sized["source"].startswith("fallback") else [])
        return {**({"warning": "; ".join(warnings)} if warnings else {}), "default_gguf": default,
                "files": len(manifest["files"]), "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                "index": "yes" if index is not None else "none (closed-book only)",
                **({"index_chunks": chunks} if chunks is not None else {}),
                "prompt_format": fmt.fingerprint()[:16], "n_ctx": n_ctx, "max_new_tokens": max_new,
                "pair": f"{pair['base']} + {pair['adapter']}" if pair else "none"}

    def summary(self, stats):
        return [(k, str(stats[k])) for k in ("default_gguf", "pair", "index", "prompt_format", "n_ctx", "max_new_tokens",
                                              "warning") if k in stats]


# --- loading -------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A verified bundle folder: every file present with its recorded sha256, the prompt format matching the
    fingerprint the bundle records."""

    path: Path
    manifest: dict[str, Any]
    prompt_format: PromptFormat
    chat_template: str

    @property
    def index(self) -> Path | None:
        return None if self.manifest["index"] is None else self.path / self.manifest["index"]

    @property
    def pair(self) -> dict[str, str] | None:
        return self.manifest.get("pair")

    def types(self) -> list[str]:
        """What ``--gguf`` accepts: the quantization types of the GGUF files, and ``pair`` when carried."""
        return [n.rsplit("-", 1)[-1].removesuffix(".gguf") for n in self.manifest["ggufs"]] + ([PAIR] if self.pair else [])

    def model(self, choice: str | None = None) -> tuple[Path, Path | None]:
        """(GGUF, LoRA adapter GGUF or None) of ``choice``: a type such as 'Q4_K_M', a file name, ``pair`` (the
        base GGUF + adapter), or None (the bundle's default)."""
        choice = choice or self.manifest["default_gguf"]
        if choice == PAIR:
            if not self.pair:
                raise ConfigError("--gguf pair: this bundle carries no base GGUF + LoRA adapter pair", received=choice,
                                  expected="one of " + ", ".join(self.types()),
                                  fix="rebuild the bundle from an export with base_gguf: true, or pick another type")
            return self.path / self.pair["base"], self.path / self.pair["adapter"]
        names = [n for n in self.manifest["ggufs"] if n.endswith(f"-{choice}.gguf") or n == choice]
        if not names:
            raise ConfigError(f"--gguf {choice}: the bundle has no such file", received=choice,
                              expected="one of " + ", ".join(self.types()), fix="pick a type the bundle holds")
        return self.path / names[0], None


def _bundle_error(message: str, path: Path, **kw: Any) -> ConfigError:
    return ConfigError(f"bundle {path}: {message}", **kw)


def open_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle folder (every listed file present, right size and sha256)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise _bundle_error(f"no {MANIFEST}", path, fix="pass the folder a bundle step wrote (…/bundle/<fingerprint>/bundle) "
                            "or -w WORKSPACE for the last run's bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bundle_error(f"{MANIFEST} is not readable JSON: {exc}", path, fix="rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READS_VERSIONS:
        raise _bundle_error(f"{MANIFEST} is not a bundle manifest of version {' or '.join(map(str, READS_VERSIONS))}", path,
                            received=manifest.get("format_version") if isinstance(manifest, dict) else type(manifest).__name__,
                            fix="rebuild the bundle with this version of slmforge")
    for rel, rec in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise _bundle_error(f"file {rel} is missing", path, expected=f"{rec['bytes']} bytes, sha256 {rec['sha256']}",
                                fix="copy the whole bundle folder again (or rebuild it)")
        size = f.stat().st_size
        if size != rec["bytes"] or sha256(f) != rec["sha256"]:
            raise _bundle_error(f"file {rel} was changed (sha256 mismatch)", path,
                                received=f"{size} bytes" if size != rec["bytes"] else "different bytes",
                                expected=f"{rec['bytes']} bytes, sha256 {rec['sha256']}",
                                fix="restore the file from the original bundle (or rebuild it)")
    fmt = PromptFormat.load(path / manifest["prompt_format"]["file"],
                            expected_fingerprint=manifest["prompt_format"]["fingerprint"])
    template = (path / manifest["chat_template"]["file"]).read_text()
    return Bundle(path=path, manifest=manifest, prompt_format=fmt, chat_template=template)

