"""The bundle: one self-contained folder with everything ``slmforge ask`` / ``serve`` need, and its loader.

Layout (``<workspace>/bundle/<fingerprint>/bundle/``)::

    bundle.json            manifest: every file with sha256 and bytes, the default GGUF, llama.cpp settings,
                           the prompt format's fingerprint, whether an index is present
    <name>-<TYPE>.gguf     the GGUF files the export wrote (hard links or copies)
    index/                 the retrieval index (absent: the bundle answers closed-book only)
    prompt_format.json     the retrieval prompt format (schemas/prompt_format.py) with its fingerprint
    chat_template.jinja    the chat template, as stored in the default GGUF (what llama.cpp sees)
    README.md              the export's model card with a "Bundle" section
    Modelfile, *.png       the export's Ollama Modelfile and the card's plots

Top to bottom: find the export (and the index) among the inputs -> copy/link -> read the chat template and
context length from the GGUF -> write the prompt format, the card and the manifest -> load the finished
folder exactly as ``ask`` will (``open_bundle``: every file's sha256, the prompt format's fingerprint, the
index opens and answers a search).
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
FORMAT_VERSION = 1
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


def find_export_and_index(inputs: dict[str, Path], *, where: str) -> tuple[Path, Path | None]:
    """The export folder (holds export.json) and the optional index folder among a step's inputs."""
    exports = [Path(p) for p in inputs.values() if (Path(p) / "export.json").is_file()]
    others = [Path(p) for p in inputs.values() if not (Path(p) / "export.json").is_file()]
    if len(exports) != 1:
        raise ConfigError(f"{where}: needs exactly one export step among its inputs", received=[str(p) for p in inputs.values()],
                          expected="one folder holding export.json (an export step)",
                          fix="list the export step (and optionally the index step) in 'inputs:'")
    if len(others) > 1:
        raise ConfigError(f"{where}: at most one index among the inputs", received=[str(p) for p in others],
                          fix="list one index step in 'inputs:'")
    return exports[0], (others[0] if others else None)


def export_ggufs(export: Path) -> list[str]:
    """File names of the GGUF models the export wrote, in its order (the importance matrix is no model)."""
    meta = json.loads((export / "export.json").read_text())
    names = [f["file"] for f in meta.get("files", []) if str(f.get("file", "")).endswith(".gguf")]
    names = [n for n in names if (export / n).is_file()]
    if not names:
        raise StageError("bundle: the export step holds no GGUF file", received=str(export),
                         fix="run the export step again (it writes <name>-<TYPE>.gguf)")
    return names


def pick_default(names: list[str], wanted: str | None) -> str:
    if wanted is not None:
        match = [n for n in names if n.endswith(f"-{wanted}.gguf")]
        if not match:
            raise ConfigError(f"bundle: default_gguf {wanted!r} was not exported", received=wanted,
                              expected=", ".join(names), fix="pick one of the exported types or add it to the export")
        return match[0]
    q8 = [n for n in names if n.endswith("-Q8_0.gguf")]
    return q8[0] if q8 else names[0]


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
    index = manifest["index"]
    lines = ["", "## Bundle", "",
             f"Default GGUF: `{manifest['default_gguf']}` (llama.cpp, n_ctx {manifest['llama']['n_ctx']}, greedy, "
             f"at most {manifest['llama']['max_new_tokens']} new tokens).",
             f"Prompt format fingerprint: `{manifest['prompt_format']['fingerprint']}` "
             f"(version {manifest['prompt_format']['version']}).",
             (f"Retrieval: the index in `index/`, {manifest['retrieval']['k']} passages per question."
              if index else "Retrieval: **none** -- this bundle has no index and answers closed-book only."),
             "", "```", "slmforge ask --bundle . \"your question\"", "slmforge serve --bundle .", "```", ""]
    return card.rstrip() + "\n" + "\n".join(lines)


class BundleStage(Stage[BundleConfig]):
    kind = "artifact"
    version = "1"
    #: plan() checks an export step is among the inputs (an index step is optional)
    needs = ("export",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        export, index = find_export_and_index(dict(ctx.inputs), where=ctx.step)
        out = Path(ctx.out_dir) / "bundle"
        out.mkdir(parents=True, exist_ok=True)

        names = export_ggufs(export)
        default = pick_default(names, cfg.default_gguf)
        for name in names:
            _place(export / name, out / name, link=cfg.link)
            ctx.progress(1)
        for name in EXPORT_EXTRAS:
            if (export / name).is_file():
                shutil.copy2(export / name, out / name)
        if index is not None:
            shutil.copytree(index_folder(index), out / "index",
                            ignore=lambda d, entries: [e for e in entries if e in STEP_FILES])

        info = gguf_info(out / default)
        if not info["chat_template"]:
            raise StageError(f"bundle: {default} has no chat template (tokenizer.chat_template)",
                             fix="export from a base model whose tokenizer has a chat template")
        write_text(info["chat_template"], out / TEMPLATE_FILE)
        trained_ctx = int(info["context_length"] or 4096)
        n_ctx = cfg.n_ctx or min(trained_ctx, 4096)
        fmt: PromptFormat = cfg.prompt_format
        fmt.save(out / PROMPT_FILE)

        manifest = {
            "format_version": FORMAT_VERSION,
            "model_name": default.rsplit("-", 1)[0],
            "default_gguf": default,
            "ggufs": names,
            "index": "index" if index is not None else None,
            "retrieval": {"k": cfg.k} if index is not None else None,
            "prompt_format": {"file": PROMPT_FILE, "fingerprint": fmt.fingerprint(), "version": fmt.version},
            "chat_template": {"file": TEMPLATE_FILE, "bos_token": info["bos_token"], "eos_token": info["eos_token"]},
            "llama": {"n_ctx": n_ctx, "trained_context_length": trained_ctx, "max_new_tokens": cfg.max_new_tokens,
                      "temperature": 0.0},
        }
        card = (export / "README.md").read_text() if (export / "README.md").is_file() else f"# {manifest['model_name']}\n"
        write_text(bundle_card(card, manifest=manifest), out / "README.md")
        manifest["files"] = {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                             for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}
        write_json(manifest, out / MANIFEST)

        bundle = open_bundle(out)  # the finished folder loads exactly as ask/serve load it
        chunks = check_index(bundle.index) if bundle.index is not None else None
        outside = outside_model(out / "index") if index is not None else None
        return {**({"warning": f"the index needs its embedding model folder {outside}, which is not in the bundle: "
                               "it must exist at that path wherever the bundle runs"} if outside else {}),"default_gguf": default, "files": len(manifest["files"]),
                "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                "index": "yes" if index is not None else "none (closed-book only)",
                **({"index_chunks": chunks} if chunks is not None else {}),
                "prompt_format": fmt.fingerprint()[:16], "n_ctx": n_ctx}

    def summary(self, stats):
        return [(k, str(stats[k])) for k in ("default_gguf", "index", "prompt_format", "n_ctx", "warning") if k in stats]


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

    def gguf(self, quant: str | None = None) -> Path:
        """The GGUF file of type ``quant`` (e.g. 'Q4_K_M'; None: the bundle's default)."""
        if quant is None:
            return self.path / self.manifest["default_gguf"]
        names = [n for n in self.manifest["ggufs"] if n.endswith(f"-{quant}.gguf") or n == quant]
        if not names:
            types = [n.rsplit("-", 1)[-1].removesuffix(".gguf") for n in self.manifest["ggufs"]]
            raise ConfigError(f"--gguf {quant}: the bundle has no such file", received=quant,
                              expected="one of " + ", ".join(types), fix="pick a type the bundle holds")
        return self.path / names[0]


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
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise _bundle_error(f"{MANIFEST} is not a bundle manifest of version {FORMAT_VERSION}", path,
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

