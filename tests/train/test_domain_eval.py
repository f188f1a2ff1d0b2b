"""train/domain_eval.py's target table against the shapes eval.json and export.json have today (pure functions)."""

from __future__ import annotations

import json

from train.domain_eval import card_section, verdicts


def _domain(base_ppl: float, tuned_ppl: float) -> dict:
    res = lambda ppl, acc: {"general_perplexity": ppl, "questions_keyword_accuracy": acc,  # noqa: E731
                            "questions_token_f1": 0.2, "by_group": {}}
    return {"results": {"base": res(base_ppl, 0.0), "tuned": res(tuned_ppl, 0.0625)}, "samples": []}


def test_verdicts_read_the_exports_llama_cpp_verification_and_judge_forgetting():
    eval_results = {"base": {"perplexity": 4.88, "token_f1": 0.063, "rouge_l": 0.043},
                    "tuned": {"perplexity": 2.45, "token_f1": 0.556, "rouge_l": 0.545}}
    # the Q8_0 entry as train/export.py writes it (abridged from a real export.json)
    export = {"files": [{"file": "m-Q8_0.gguf", "type": "Q8_0", "passed": True,
                         "gate": {"max_kld_mean": 0.01, "max_kld_p99": 0.1, "max_ppl_ratio": 1.02, "min_top1": 0.95},
                         "verify": {"kld_mean": 0.0033, "kld_p99": 0.0207, "top1": 0.9686, "tokens": 4234,
                                    "ppl_ratio": 1.0002}}]}
    rows = {r["metric"]: r for r in verdicts(eval_results, _domain(17.0, 18.2), json.loads(json.dumps(export)))}
    assert rows["held-out answer perplexity"]["met"] is True
    forgetting = rows["general-text perplexity (forgetting)"]
    assert forgetting["change"] == "+7.1%" and forgetting["met"] is True
    q8 = rows["Q8_0 GGUF vs merged: next-token top-1 on 4234 held-out tokens"]
    assert q8["tuned"] == 0.9686 and q8["met"] is True and "95%" in q8["target"] and "0.0033" in q8["change"]
    # an export whose gate failed is reported as not met; more than +10 % general perplexity fails its target
    export["files"][0]["passed"] = False
    rows = {r["metric"]: r for r in verdicts(None, _domain(17.0, 19.0), export)}
    assert rows["general-text perplexity (forgetting)"]["met"] is False
    assert rows["Q8_0 GGUF vs merged: next-token top-1 on 4234 held-out tokens"]["met"] is False
    assert "held-out answer perplexity" not in rows  # no eval.json: not measured, not invented
    section = card_section(list(rows.values()), _domain(17.0, 19.0), loss_png=None)
    assert "| general-text perplexity (forgetting) | 17.000 | 19.000 | +11.8% | rises <= 10% | **no** |" in section
