"""Verification of GGUF files in llama.cpp against the merged Hugging Face model.

* ``KLDStats``: the statistics llama.cpp's ``perplexity --kl-divergence`` reports (tools/perplexity), over
  every position of held-out token sequences whose next token is known: mean KL divergence
  ``Σ p_ref (log p_ref - log p_file)`` (and its 99th percentile and maximum, percentiles interpolated as
  llama.cpp does), top-1 agreement ("same top p"), and the perplexity ratio ``PPL(file) / PPL(reference)``
  (``exp`` of the mean difference of the next token's negative log-likelihoods). Computed in float32 from
  both sides' full logits (llama.cpp stores its reference as 16-bit log-probabilities; we do not need to).
* ``verify_files``: the reference model runs once per held-out sequence and every file loaded beside it
  is compared on the same token ids, ``n_batch`` positions at a time, so memory holds one sequence of
  reference logits and ``n_batch`` positions of each file's, never all logits (a 262k vocabulary makes
  one 150-token sequence 157 MB). Files whose sizes sum to more than ``group_bytes`` are split into groups,
  each group costing one more reference pass.
* ``tokenizer_check``: the rendered training conversations and plain text tokenize to the same ids in
  llama.cpp as in training (BOS exactly once), and the template's end-of-turn token ends generation in
  llama.cpp; ``generation_check``: llama.cpp's greedy generation stops at that token wherever the merged
  model's does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from train.chat import PARITY_PROBES
from train.llama_cpp import GGUFModel


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile (tools/perplexity): linear interpolation between the two nearest ranks."""
    if len(sorted_values) == 0:
        return float("nan")
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    j = min(i + 1, len(sorted_values) - 1)
    return float((1 - (p - i)) * sorted_values[i] + (p - i) * sorted_values[j])


class RefBlock:
    """What every file's comparison needs from the reference on a block of positions, computed once:
    log-probabilities and probabilities, the top token, the next tokens' negative log-likelihood."""

    def __init__(self, ref_logp, targets: Sequence[int]):
        import torch

        self.logp, self.p = ref_logp, ref_logp.exp()
        self.top = ref_logp.argmax(-1)
        idx = torch.tensor(list(targets), dtype=torch.long)[:, None]
        self.nll = -float(ref_logp.gather(-1, idx).double().sum())


class KLDStats:
    """KL divergence, top-1 agreement and perplexity ratio of a file against the reference, accumulated a
    block of positions at a time (``add``)."""

    def __init__(self, *, scratch: dict | None = None):
        """``scratch``: where ``add`` keeps its scratch array between calls; pass one dict to every ``KLDStats`` of
        files compared side by side so they share a single array."""
        self.kld: list[np.ndarray] = []
        self.sum_nll = self.sum_nll_ref = 0.0
        self.same_top = self.count = 0
        self._scratch = {} if scratch is None else scratch

    def add(self, ref, logits: np.ndarray, targets: Sequence[int]) -> None:
        """``ref``: the reference's log-probabilities (torch, positions x vocabulary) or their ``RefBlock``
        (computed once when several files are compared on the same positions); ``logits``: the file's logits
        at the same positions (float32; overwritten: the maths runs in place in that buffer, so a 262k
        vocabulary needs no second positions x vocabulary array); ``targets``: the next token at each position.

        Passes over the positions x vocabulary values: row maximum and top token together, log-sum-exp (into a
        scratch array kept between calls: a fresh one costs page faults each time), log-probabilities, then
        ``Σ p_ref (log p_ref - log p_file)`` per row, all in float32."""
        import torch

        ref = ref if isinstance(ref, RefBlock) else RefBlock(ref, targets)
        x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        n, vocab = x.shape
        idx = torch.tensor(list(targets), dtype=torch.long)[:, None]
        t = self._scratch.get("rows")
        if t is None or t.shape[1] != vocab or t.shape[0] < n:
            t = self._scratch["rows"] = torch.empty(n, vocab, dtype=torch.float32)
        t = t[:n]
        top, arg = x.max(-1, keepdim=True)
        self.same_top += int((arg[:, 0] == ref.top).sum())
        torch.sub(x, top, out=t).exp_()
        x.sub_(t.sum(-1, keepdim=True).log_().add_(top))  # log p_file
        nll = -float(x.gather(-1, idx).double().sum())
        torch.sub(ref.logp, x, out=t).mul_(ref.p)  # p_ref (log p_ref - log p_file)
        kld = t.sum(-1)
        self.sum_nll += nll
        self.sum_nll_ref += ref.nll
        self.count += len(targets)
        self.kld.append(kld.numpy().astype(np.float64))

    def result(self) -> dict[str, Any]:
        k = np.sort(np.concatenate(self.kld)) if self.kld else np.zeros(0)
        n = max(self.count, 1)
        top1 = self.same_top / n
        ln_ratio = (self.sum_nll - self.sum_nll_ref) / n
        return {
            "tokens": self.count,
            "kld_mean": float(k.mean()) if len(k) else float("nan"),
            "kld_mean_se": float(k.std(ddof=1) / np.sqrt(len(k))) if len(k) > 1 else float("nan"),
            "kld_median": percentile(k, 0.5), "kld_p99": percentile(k, 0.99), "kld_max": float(k[-1]) if len(k) else float("nan"),
            "top1": top1, "top1_se": float(np.sqrt(top1 * (1 - top1) / max(self.count - 1, 1))),
            "ppl_reference": float(np.exp(self.sum_nll_ref / n)), "ppl": float(np.exp(self.sum_nll / n)),
            "ln_ppl_ratio": ln_ratio, "ppl_ratio": float(np.exp(ln_ratio)),
        }


def reference_logp(model, ids: Sequence[int]):
    """The reference model's log-probabilities (float32, CPU) at every position of ``ids``."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu()


#: a file to verify: a GGUF path, or (base GGUF, LoRA adapter GGUF) run together
Entry = Path | tuple[Path, Path]


def entry_name(entry: Entry) -> str:
    """``m-Q8_0.gguf``; ``m-base-Q4_K_M.gguf + m-lora-F16.gguf`` for a base + adapter pair."""
    return " + ".join(p.name for p in entry) if isinstance(entry, tuple) else entry.name


def _entry_bytes(entry: Entry) -> int:
    return sum(p.stat().st_size for p in entry) if isinstance(entry, tuple) else entry.stat().st_size


def file_groups(paths: Sequence[Entry], *, group_bytes: int) -> list[list[Entry]]:
    """Consecutive groups of ``paths`` whose sizes sum to at most ``group_bytes`` (a larger file alone)."""
    groups: list[list[Entry]] = []
    used = 0
    for p in paths:
        size = _entry_bytes(p)
        if not groups or used + size > group_bytes:
            groups.append([])
            used = 0
        groups[-1].append(p)
        used += size
    return groups


def _open(entry: Entry, *, n_ctx: int, n_batch: int, threads: int | None) -> GGUFModel:
    if isinstance(entry, tuple):
        return GGUFModel(entry[0], n_ctx=n_ctx, n_batch=n_batch, threads=threads, lora=entry[1])
    return GGUFModel(entry, n_ctx=n_ctx, n_batch=n_batch, threads=threads)


def verify_files(reference, sequences: Sequence[Sequence[int]], paths: Sequence[Entry], *, threads: int | None,
                 n_batch: int = 256, group_bytes: int = 8 << 30, reference_logits: Sequence[Any] = (),
                 progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """``KLDStats`` of every GGUF in ``paths`` (or base + LoRA pair) against ``reference`` over every position of
    ``sequences``, keyed by ``entry_name``; each result's ``timing`` says where its time went (llama.cpp's evaluation and the
    statistics of that file; the reference's pass, shared by the files of a group). ``reference_logits``: the
    reference's logits of the first sequences when already computed (the export's merge check), used as they are."""
    import torch

    n_ctx = max(len(s) for s in sequences)
    n_batch = min(n_batch, n_ctx)
    results: dict[str, dict[str, Any]] = {}
    for group in file_groups(paths, group_bytes=group_bytes):
        models = [_open(p, n_ctx=n_ctx, n_batch=n_batch, threads=threads) for p in group]
        try:
            scratch: dict = {}
            stats = [KLDStats(scratch=scratch) for _ in models]
            eval_s, stats_s, ref_s = [0.0] * len(models), [0.0] * len(models), 0.0
            for n, seq in enumerate(sequences):
                t0 = time.perf_counter()
                ref = (torch.log_softmax(reference_logits[n].float(), dim=-1) if n < len(reference_logits)
                       else reference_logp(reference, seq))
                ref_s += time.perf_counter() - t0
                streams = [model.logits(seq, copy=False) for model in models]
                for start in range(0, len(seq), n_batch):  # the files side by side, a block at a time
                    end = min(start + n_batch, len(seq) - 1)  # the last position has no next token
                    t0 = time.perf_counter()
                    block_ref = RefBlock(ref[start:end], seq[start + 1:end + 1]) if end > start else None
                    ref_s += time.perf_counter() - t0
                    for i, (st, stream) in enumerate(zip(stats, streams)):
                        t0 = time.perf_counter()
                        block = next(stream)
                        t1 = time.perf_counter()
                        if block_ref is not None:
                            st.add(block_ref, block[:end - start], seq[start + 1:end + 1])
                        eval_s[i] += t1 - t0
                        stats_s[i] += time.perf_counter() - t1
                if progress is not None:
                    progress(0)
            for i, (p, model, st) in enumerate(zip(group, models, stats)):
                adapter_bytes = p[1].stat().st_size if isinstance(p, tuple) else 0
                results[entry_name(p)] = {
                    **st.result(), "n_params": int(model.lib.llama_model_n_params(model.model)),
                    "tensor_bytes": int(model.lib.llama_model_size(model.model)) + adapter_bytes,
                    "timing": {"llama_cpp_seconds": round(eval_s[i], 3), "stats_seconds": round(stats_s[i], 3),
                               "reference_seconds": round(ref_s, 3), "n_batch": n_batch}}
        finally:
            for m in models:
                m.close()
    return results


def turn_end_ids(tokenizer) -> list[int]:
    """The special tokens the template trains at the end of an assistant turn, in order (ChatML:
    ``<|im_end|>``; Gemma: ``<end_of_turn>``, ``<eos>``). The first one is where generation must stop."""
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    enc = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    special = set(tokenizer.all_special_ids)
    return [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m and t in special]


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def tokenizer_check(model: GGUFModel, tokenizer, conversations: Sequence[Sequence[dict[str, str]]]) -> dict[str, Any]:
    """Token ids in llama.cpp vs in training, for every conversation plus ``PARITY_PROBES`` (unicode, tabs,
    braces; rendered in full, and its prompt with the generation prompt) and for the text of every message as
    plain text (training: BOS + the text's ids, as replay and pretraining feed it; llama.cpp: the text
    tokenized with the file's own special tokens).

    Returns counts, the first differences and ``failed`` (0 when everything matches)."""
    bos = tokenizer.bos_token_id
    failures: list[str] = []
    checked = {"chat": 0, "text": 0}

    def compare(kind: str, expected: list[int], got: list[int], what: str) -> None:
        checked[kind] += 1
        if bos is not None and got.count(bos) != 1:
            failures.append(f"{kind} {what}: BOS {got.count(bos)} times in llama.cpp's ids (expected once)")
        elif expected != got:
            at = _first_difference(expected, got)
            failures.append(f"{kind} {what}: from position {at} training has {expected[at:at + 6]}, llama.cpp {got[at:at + 6]}")

    for n, conv in enumerate([*conversations, *PARITY_PROBES]):
        variants = [(list(conv), False)]
        if conv and conv[-1]["role"] == "assistant":
            variants.append((list(conv[:-1]), True))
        for msgs, gen in variants:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            ids = list(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)["input_ids"])
            compare("chat", ids, model.chat_ids(text), f"conversation {n}{' (prompt)' if gen else ''}")
        for m in conv:
            expected = ([bos] if bos is not None else []) + tokenizer(m["content"], add_special_tokens=False)["input_ids"]
            compare("text", expected, model.tokenize(m["content"], add_special=True, parse_special=False),
                    f"{m['role']} text of conversation {n}")
    ends = turn_end_ids(tokenizer)
    eot = ends[0] if ends else tokenizer.eos_token_id
    if eot is None or not model.is_eog(eot):
        failures.append(f"the template's end-of-turn token {tokenizer.convert_ids_to_tokens([eot])[0] if eot is not None else None!r} "
                        "is not an end-of-generation token in llama.cpp, so llama.cpp would not stop there")
    summary = ([f"tokenizer: {len(failures)} of {checked['chat'] + checked['text'] + 1} checks differ in llama.cpp, "
                f"first: {failures[0]}"] if failures else [])
    return {"chat_renderings": checked["chat"], "texts": checked["text"], "add_bos": model.add_bos,
            "end_of_turn": tokenizer.convert_ids_to_tokens([eot])[0] if eot is not None else None,
            "differences": failures[:5], "failed": len(failures), "failures": summary}


def answer_end(tokenizer, conv: Sequence[dict[str, str]], eot: int) -> list[int] | None:
    """Training ids of ``conv`` up to (not including) the end-of-turn token that closes its last assistant turn."""
    enc = tokenizer.apply_chat_template(list(conv), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ends = [i for i, (t, m) in enumerate(zip(enc["input_ids"], enc["assistant_masks"])) if m and t == eot]
    return list(enc["input_ids"][:ends[-1]]) if ends else None


def next_token(model, ids: Sequence[int]) -> int:
    """The merged model's greedy next token after ``ids``."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return int(model(input_ids=torch.tensor([list(ids)], device=device), logits_to_keep=1).logits[0, -1].argmax())


def generation_check(model: GGUFModel, reference, tokenizer, conversations: Sequence[Sequence[dict[str, str]]], *,
                     max_new_tokens: int) -> dict[str, Any]:
    """Greedy generation in llama.cpp stops at the template's end-of-turn token. Each held-out conversation is
    fed (training ids) up to the end of its last answer; where the merged model's greedy next token there is the
    end-of-turn token, llama.cpp's greedy continuation must end on that token within ``max_new_tokens``."""
    ends = turn_end_ids(tokenizer)
    eot = ends[0] if ends else tokenizer.eos_token_id
    checked = stopped = 0
    failures = []
    for n, conv in enumerate(conversations):
        prefix = answer_end(tokenizer, conv, eot)
        if not prefix or next_token(reference, prefix) != eot:
            continue
        checked += 1
        got = model.generate(prefix, max_new_tokens=max_new_tokens)
        if got and got[-1] == eot:
            stopped += 1
        else:
            failures.append(f"conversation {n}: the merged model ends its answer, llama.cpp "
                            f"{'ran to the limit' if len(got) >= max_new_tokens else 'ended on ' + repr(model.token_text(got[-1]))} "
                            f"({model.detokenize(got[:24], special=True)!r}...)")
    return {"conversations": len(conversations), "checked": checked, "stopped_at_end_of_turn": stopped,
            "end_of_turn": model.token_text(eot), "max_new_tokens": max_new_tokens, "failures": failures[:5],
            "failed": len(failures)}
