"""The served path's base arm: a copy of a bundle that also holds the BASE model's GGUF, so
``slmforge ask --gguf base-<TYPE>`` answers with the untuned model through the same index, prompt format,
chat template and llama.cpp settings as the tuned model (the four-way table's base rows, served).

The bundle's files are hard-linked (no copy of the index or the tuned GGUF); the base GGUF is linked in as
``<model>-base-<TYPE>.gguf`` and listed in the manifest with its sha256, so ``open_bundle`` verifies it like any file.

    python bench/raft/base_arm_bundle.py --bundle WS/bundle/<fp>/bundle \\
        --base-gguf workspace/models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf --type Q4_K_M --out /tmp/base-bundle
    slmforge ask -b /tmp/base-bundle --gguf base-Q4_K_M --questions Q.jsonl -o base_open.jsonl --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--base-gguf", type=Path, required=True)
    ap.add_argument("--type", required=True, help="the base file's type, e.g. Q4_K_M")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from train.bundle import MANIFEST, open_bundle, sha256

    bundle = open_bundle(args.bundle)  # verified before anything is linked
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.bundle, args.out, copy_function=os.link)
    manifest = json.loads((args.out / MANIFEST).read_text())
    stem = manifest["default_gguf"].rsplit("-", 1)[0]
    name = f"{stem}-base-{args.type}.gguf"
    os.link(args.base_gguf.resolve(), args.out / name)
    manifest["ggufs"] = list(manifest["ggufs"]) + [name]
    manifest["files"][name] = {"sha256": sha256(args.out / name), "bytes": (args.out / name).stat().st_size}
    (args.out / MANIFEST).unlink()  # a hard link to the original: replace, never write through
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    open_bundle(args.out).model(f"base-{args.type}")
    print(json.dumps({"bundle": str(args.out), "base_gguf": name, "tuned_default": bundle.manifest["default_gguf"]}))


if __name__ == "__main__":
    main()
