"""Answer metrics shared by eval (train/evaluate.py), open-book eval (train/eval_openbook.py) and
train/domain_eval.py: SQuAD-normalised exact match, token F1, ROUGE-L, and keyword-group hits. Pure Python."""

from __future__ import annotations

import re
import string
from collections import Counter


def normalize_answer(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalised tokens (longest common subsequence)."""
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def keyword_hit(answer: str, groups: list[list[str]]) -> bool:
    """True when every keyword group has one alternative (``a|b``) in the answer (case-insensitive)."""
    low = answer.lower()
    return all(any(alt.strip().lower() in low for alt in "|".join(g).split("|")) for g in groups)


__all__ = ["normalize_answer", "exact_match", "token_f1", "rouge_l", "keyword_hit"]
