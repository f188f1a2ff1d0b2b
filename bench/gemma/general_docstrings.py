"""Write data/eval/general_docstrings.jsonl: general technical prose (not PostgreSQL) to check forgetting on.

data/eval/general_text.jsonl is the forgetting target's text (reported, never used to choose); the replay corpus's
validation texts are Debian fortunes, the genre the replay trains on, so their perplexity falls with training and
says nothing about forgetting. This file is a third set: the module docstrings of CPython's standard library
(PSF licence), expository English about programming, nothing about databases or SQL. Written once and committed, so
the set does not change with the Python version.

    python bench/gemma/general_docstrings.py [data/eval/general_docstrings.jsonl]
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

MODULES = ["argparse", "bisect", "calendar", "codecs", "collections", "contextlib", "copy", "csv", "dataclasses",
           "datetime", "decimal", "difflib", "email", "fractions", "functools", "getopt", "gettext", "glob", "heapq",
           "hmac", "html", "inspect", "locale", "logging", "mailbox", "numbers", "optparse", "pickle", "pprint",
           "queue", "random", "shlex", "shutil", "smtplib", "string", "subprocess", "tarfile", "tempfile",
           "textwrap", "threading", "timeit", "tokenize", "trace", "unittest", "uuid", "warnings", "zipfile"]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/eval/general_docstrings.jsonl")
    rows = []
    for name in MODULES:
        doc = inspect.cleandoc(importlib.import_module(name).__doc__ or "")
        if len(doc.split()) >= 30:  # a one-line docstring is not prose
            rows.append({"id": f"cpython-{name}", "source": f"CPython {sys.version.split()[0]} `{name}` module "
                         "docstring (PSF licence)", "text": doc})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} texts, {sum(len(r['text'].split()) for r in rows)} words -> {out}")


if __name__ == "__main__":
    main()
