"""The training loss with the output layer run only where a label is.

A causal LM's loss needs logits at the positions whose next token is trained; a RAFT row trains about
55 answer tokens after a ~450-token prompt of passages, yet the model's own ``forward(labels=...)`` computes
logits for every position. For Gemma 3 (262k-token vocabulary) the output layer is about two thirds of a
token's compute, so most of a CPU training step went into logits that were thrown away. Here the decoder
runs on every position (the prompt is context), the output layer only on the labelled ones; the loss is the
same sum of cross-entropies, normalised the way ``transformers`` normalises it (by the number of trained
tokens in the whole accumulated batch when the Trainer passes it, else a mean). tests/train/test_answer_head.py
checks loss and gradients against ``model(labels=...)`` for Llama and Gemma 3.
"""

from __future__ import annotations

from typing import Any


def causal_lm_parts(model) -> tuple[Any, Any, float | None] | None:
    """(decoder, output layer, final-logit softcap) of a (PEFT-wrapped) causal LM, or None when the model does
    not have that standard shape (then the model's own loss is used)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or head is None or decoder is base:
        return None
    cfg = getattr(base.config, "get_text_config", lambda: base.config)()
    return decoder, head, getattr(cfg, "final_logit_softcapping", None)


def labelled_loss(parts, inputs: dict[str, Any], num_items_in_batch=None):
    """Sum of next-token cross-entropies over labelled positions / ``num_items_in_batch`` (or their count)."""
    import torch
    import torch.nn.functional as F

    decoder, head, softcap = parts
    labels = inputs["labels"]
    hidden = decoder(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                     use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = head(hidden[:, :-1][keep]).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    total = F.cross_entropy(logits, target[keep], reduction="sum")
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / keep.sum().clamp(min=1)


def trainer_class():
    """``transformers.Trainer`` whose loss runs the output layer on labelled positions only."""
    from transformers import Trainer

    class LabelledHeadTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._parts = causal_lm_parts(self.model)
            if self._parts is not None:  # our loss is normalised by num_items_in_batch when the Trainer gives it
                self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._parts is None or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            loss = labelled_loss(self._parts, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    return LabelledHeadTrainer
