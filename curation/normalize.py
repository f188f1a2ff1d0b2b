"""Unicode and whitespace normalisation (a map stage) and the text keys used by dedup."""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa

from schemas.arrow import decisions
from curation.config import NormalizeConfig
from schemas.stage import ShardResult, Stage, StageContext

_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_PUNCT = re.compile(r"[^\w\s]+")
_WS = re.compile(r"\s+")


def normalize_text(
    text: str,
    *,
    unicode_form: str = "NFKC",
    strip_control: bool = True,
    collapse_spaces: bool = True,
    max_blank_lines: int = 1,
) -> str:
    """NFKC (or NFC), drop control/zero-width chars, unify newlines, tidy spaces and blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    if strip_control:
        text = _CONTROL.sub("", text)
    if collapse_spaces:
        lines = [_SPACES.sub(" ", line).strip() if line.strip() else "" for line in text.split("\n")]
        # keep leading indentation of code-like lines? No: collapse keeps content, strip only line ends
        text = "\n".join(lines)
    if max_blank_lines is not None:
        text = re.sub(r"\n{%d,}" % (max_blank_lines + 2), "\n" * (max_blank_lines + 1), text)
    return text.strip()


def dedup_key(text: str, *, casefold: bool = True, ignore_punctuation: bool = False) -> str:
    """The text as exact dedup compares it: normalised, whitespace-insensitive."""
    key = unicodedata.normalize("NFKC", text)
    if casefold:
        key = key.casefold()
    if ignore_punctuation:
        key = _PUNCT.sub(" ", key)
    return _WS.sub(" ", key).strip()


class NormalizeStage(Stage[NormalizeConfig]):
    kind = "map"
    version = "1"
    requires = {"id": pa.string(), "text": pa.large_string()}

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        c = self.config
        old = table.column("text").to_pylist()
        new = [
            normalize_text(
                t, unicode_form=c.unicode_form, strip_control=c.strip_control,
                collapse_spaces=c.collapse_spaces, max_blank_lines=c.max_blank_lines,
            )
            for t in old
        ]
        changed = [a != b for a, b in zip(old, new)]
        idx = table.schema.get_field_index("text")
        out = table.set_column(idx, table.schema.field("text"), pa.array(new, type=table.schema.field("text").type))
        dec = decisions(
            table.column("id"),
            stage=ctx.step,
            action=["modify" if ch else "keep" for ch in changed],
            reason=["normalized" if ch else "unchanged" for ch in changed],
            score=[float(len(a) - len(b)) for a, b in zip(old, new)],
        )
        ctx.progress(table.num_rows)
        from collections import Counter

        return ShardResult(out, dec, counters=Counter({"modified": sum(changed)}))
