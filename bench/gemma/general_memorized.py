"""Write excerpts of licence texts that language models know nearly by heart, to check forgetting of memorised text.

data/eval/general_text.jsonl's largest text is the Zen of Python, which the base Gemma-3-270M reproduces almost
verbatim (perplexity 7.9 where ordinary prose is 15-40); a fine-tune disturbs such memorised text first. These
excerpts are a validation set of the same kind, read from Debian's /usr/share/common-licenses (package base-files,
on every Debian machine) at run time, so no licence text is copied into the repository.

    python bench/gemma/general_memorized.py workspace/corpora/general-memorized.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SOURCE = Path("/usr/share/common-licenses")
#: (id, file, the sentence the excerpt starts at); about 900 characters each, cut at a full stop
EXCERPTS = [("gpl-3-preamble", "GPL-3", "The GNU General Public License is a free, copyleft license"),
            ("apache-2-terms", "Apache-2.0", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"),
            ("gpl-2-preamble", "GPL-2", "The licenses for most software are designed to take away your"),
            ("bsd-3", "BSD", "Redistribution and use in source and binary forms"),
            ("artistic-preamble", "Artistic", "The intent of this document is to state the conditions"),
            ("mpl-2-definitions", "MPL-2.0", "1. Definitions")]


def excerpt(text: str, start: str, chars: int = 900) -> str:
    at = text.find(start)
    if at < 0:
        raise SystemExit(f"'{start}' not found: a different licence file version? (fix EXCERPTS)")
    cut = text[at:at + chars]
    return re.sub(r"[ \t]+", " ", cut[:cut.rfind(".") + 1])


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i, "source": f"{SOURCE / name} (Debian base-files)",
             "text": excerpt((SOURCE / name).read_text(), start)} for i, name, start in EXCERPTS]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} texts, {sum(len(r['text'].split()) for r in rows)} words -> {out}")


if __name__ == "__main__":
    main()
