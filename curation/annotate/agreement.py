"""Inter-annotator agreement: Cohen's kappa (two annotators) and Krippendorff's alpha (nominal, any number).

Pure Python, no dependencies; inputs are plain mappings so both the pull step and tests can use them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def cohen_kappa(a: list[object], b: list[object]) -> float | None:
    """Cohen's kappa for two aligned label lists; None when undefined (fewer than 1 pair).

    Returns 1.0 when both annotators always agree on a single label (chance agreement 1).
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs two lists of equal length, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha_nominal(units: Mapping[str, Mapping[str, object]]) -> float | None:
    """Krippendorff's alpha (nominal metric). ``units``: item id -> {annotator: label}.

    Items with fewer than two answers are not pairable and are ignored; None when nothing is pairable.
    """
    coincidence: Counter = Counter()
    for answers in units.values():
        values = [v for v in answers.values() if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, x in enumerate(values):
            for j, y in enumerate(values):
                if i != j:
                    coincidence[(x, y)] += 1.0 / (m - 1)
    n = sum(coincidence.values())
    if n <= 1:
        return None
    totals: Counter = Counter()
    for (x, _y), w in coincidence.items():
        totals[x] += w
    observed_disagreement = sum(w for (x, y), w in coincidence.items() if x != y)
    expected_disagreement = sum(totals[x] * totals[y] for x in totals for y in totals if x != y) / (n - 1)
    if expected_disagreement == 0:
        return 1.0
    return 1.0 - observed_disagreement / expected_disagreement


def agreement_report(units: Mapping[str, Mapping[str, object]]) -> dict[str, object]:
    """Per question summary: pairable items, alpha, and kappa for every annotator pair with ≥1 shared item."""
    annotators = sorted({a for answers in units.values() for a in answers})
    pairs: dict[str, float | None] = {}
    for i, a in enumerate(annotators):
        for b in annotators[i + 1 :]:
            shared = [k for k, ans in units.items() if a in ans and b in ans]
            if shared:
                pairs[f"{a}|{b}"] = cohen_kappa([units[k][a] for k in shared], [units[k][b] for k in shared])
    pairable = sum(1 for ans in units.values() if len(ans) >= 2)
    return {"items": len(units), "pairable": pairable, "alpha": krippendorff_alpha_nominal(units), "kappa": pairs}
