"""The decoder-layer passes of the Q4_0 calibration (``train.q4_calibrate``), and what they avoid recomputing.

Calibrating a layer runs it several times over the calibration batches: once unrounded (``fp_pass``), then once
per group of linears up to that group's first linear (``run_layer`` with ``stop``, its inputs from the already
rounded model), then once whole (the rounded layer's output, the next layer's input). Done naively, every pass
recomputes the attention and the MLP from the start. Two things make most of that unnecessary, and neither
changes a value (the same operations on the same tensors, so the rounded weights are the same bytes):

* a child of the layer (``self_attn``, ``mlp``) whose linears are all rounded gives the same output for the
  same input in every later pass: its output is kept (``LayerState.outputs``) and returned instead of running it;
* a child whose output *is* its last linear's output (``o_proj`` of the attention, ``down_proj`` of the MLP:
  checked in the unrounded pass by identity, every batch) needs only that linear once it is rounded: its full
  input was recorded when the pass stopped there, so the child's output is that linear applied to it
  (``LayerState.tails``) -- the attention is not recomputed for the MLP's groups, nor the MLP's gate/up for the
  layer's output.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import StageError

#: Q4_0 block width (weights per scale); a linear is calibrated when its input width is a multiple of it
BLOCK = 32


class Stop(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are recorded."""


def calibrated_linears(module) -> list[tuple[str, Any]]:
    import torch

    return [(name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % BLOCK == 0]


class LayerState:
    """What the passes over one decoder layer share: the linears rounded so far, the children whose output is their
    last linear's (``tails``: child -> (linear, length of the output tuple or None for a tensor)), those linears'
    full inputs per batch (recorded where a pass stopped at them), and the finished children's outputs per batch."""

    def __init__(self, layer):
        self.layer = layer
        self.rounded: set = set()
        self.tails: dict[Any, tuple[Any, int | None]] = {}
        self.tail_inputs: dict[Any, list] = {}
        self.outputs: dict[Any, dict[int, Any]] = {}

    def finished(self) -> list:
        """The direct children whose calibrated linears are all rounded."""
        out = []
        for _, child in self.layer.named_children():
            linears = [m for _, m in calibrated_linears(child)]
            if linears and all(m in self.rounded for m in linears):
                out.append(child)
        return out


def capture(model, layers, batches: list[tuple[Any, Any]]) -> tuple[list[Any], list[list[dict]]]:
    """Layer-0 input per batch and the keyword arguments of every layer per batch, without running the
    layers (each layer's forward is replaced by a recorder for the duration)."""
    import torch

    first: list[Any] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(i: int):
        def forward(hidden_states, *args, **kw):
            if args:
                raise StageError("Q4_0 calibration: a decoder layer got positional arguments besides the hidden states",
                                 received=len(args), fix="set q4_0_method: llama.cpp on the export step")
            if i == 0:
                first.append(hidden_states)
            kwargs[i].append(kw)
            return hidden_states
        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        with torch.no_grad():
            for ids, mask in batches:
                model.model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
    finally:
        for layer in layers:
            del layer.forward
    return first, kwargs


def fp_pass(state: LayerState, hiddens, kwargs, valid) -> tuple[list[list[tuple[str, Any]]], dict[str, Any], list]:
    """One pass of the unrounded layer over every batch: its Q4_0-sized linears in call order, grouped by
    shared input tensor (from the first batch), the input of each group's first linear at the ``valid`` (not
    padding) positions (name -> tokens x in_features, float32, CPU), and the layer's outputs. Also finds the
    children whose output is their last linear's output in every batch (``state.tails``)."""
    import torch

    layer = state.layer
    linears = calibrated_linears(layer)
    groups: list[list[tuple[str, Any]]] = []
    rows: dict[str, list] = {}
    track: dict[str, Any] = {"batch": 0, "last": None}
    owner = {id(m): child for _, child in layer.named_children() for _, m in calibrated_linears(child)}
    last_out: dict[Any, tuple] = {}  # child -> (its last linear called, that linear's output, its version)
    tails: dict[Any, tuple[Any, int | None] | None] = {}  # None: not a tail child (some batch broke the rule)
    calls: dict[Any, int] = {}  # child -> calls in the current batch (a tail must be called once per batch)

    def hook(name, mod):
        def pre(_, args):
            x = args[0]
            if x is not track["last"]:  # a new input: a new group, whose first linear records it
                track["last"] = x
                rows.setdefault(name, []).append(x[track["valid"]].float().cpu())
                if track["batch"] == 0:
                    groups.append([])
            if track["batch"] == 0:
                groups[-1].append((name, mod))
        return pre

    def linear_out(mod):
        def post(_, args, output):
            last_out[owner[id(mod)]] = (mod, output, output._version)
        return post

    def child_out(child):
        def post(_, args, output):
            calls[child] = calls.get(child, 0) + 1
            mod, out, version = last_out.pop(child, (None, None, None))
            if out is None or out._version != version:  # none, or changed in place after the linear
                tails[child] = None
                return
            if isinstance(output, tuple) and output and output[0] is out and all(o is None for o in output[1:]):
                shape = len(output)
            elif output is out:
                shape = None
            else:
                tails[child] = None
                return
            if tails.setdefault(child, (mod, shape)) != (mod, shape):
                tails[child] = None
        return post

    handles = [mod.register_forward_pre_hook(hook(name, mod)) for name, mod in linears]
    handles += [mod.register_forward_hook(linear_out(mod)) for _, mod in linears if id(mod) in owner]
    handles += [child.register_forward_hook(child_out(child)) for child in set(owner.values())]
    outputs = []
    try:
        with torch.no_grad():
            for n, (h, kw, v) in enumerate(zip(hiddens, kwargs, valid)):
                track.update(batch=n, valid=v, last=None)
                last_out.clear()
                calls.clear()
                outputs.append(layer(h, **kw))
                for child in owner.values():
                    if calls.get(child, 0) != 1:
                        tails[child] = None
    finally:
        for handle in handles:
            handle.remove()
    leaders = {g[0][0] for g in groups}
    if set(rows) != leaders or any(len(r) != len(hiddens) for r in rows.values()):
        raise StageError("Q4_0 calibration: a decoder layer calls its linears differently from batch to batch",
                         received=sorted(rows), expected=sorted(leaders), fix="set q4_0_method: llama.cpp on the export step")
    lead_modules = {id(g[0][1]) for g in groups}
    # a tail is replayed from its recorded input, which is recorded only where a pass stops: a group's first linear
    state.tails = {c: t for c, t in tails.items() if t is not None and id(t[0]) in lead_modules}
    return groups, {name: torch.cat(r) for name, r in rows.items()}, outputs


def _clone(output):
    """``output`` (a tensor, or a tuple of tensors and ``None``) with its tensors copied."""
    if isinstance(output, tuple):
        return tuple(_clone(o) for o in output)
    return output.clone() if hasattr(output, "clone") else output


def run_layer(state: LayerState, hiddens, kwargs, valid, record: dict[str, Any], *,
              stop: bool = False) -> tuple[dict[str, Any], list]:
    """Run the layer (weights as they are now) on every batch, recording the inputs of the ``record`` modules at the
    ``valid`` (not padding) positions (name -> tokens x in_features, float32, CPU); returns them and the layer's
    outputs. ``stop``: end each pass at the (single) recorded module, nothing after it is needed (no outputs then).

    A finished child (``LayerState.finished``) is not run when its outputs are kept or it is a tail whose linear's
    inputs are recorded: its output is returned instead (computed from the tail once, then kept); otherwise it runs
    and its outputs are kept for the later passes."""
    import torch

    rows: dict[str, list] = {name: [] for name in record}
    current: list = [None, 0]
    n_batches = len(hiddens)
    replay, fresh = [], {}
    for child in state.finished():
        kept = state.outputs.get(child, {})
        tail = state.tails.get(child)
        if len(kept) == n_batches or (tail and len(state.tail_inputs.get(tail[0], ())) == n_batches):
            replay.append(child)
        else:
            fresh[child] = {}
    tails_recorded = {id(t[0]) for t in state.tails.values()}

    def hook(name):
        def pre(mod, args):
            rows[name].append(args[0][current[0]].float().cpu())
            if id(mod) in tails_recorded and mod not in state.rounded:
                state.tail_inputs.setdefault(mod, []).append(args[0])
            if stop:
                raise Stop
        return pre

    def keep(child):
        def post(mod, args, output):
            outs = fresh[child]
            # a child called twice in a batch is never replayed (one output per batch is kept)
            outs[current[1]] = output if current[1] not in outs else None
        return post

    def replayed(child):
        def forward(*args, **kw):
            kept = state.outputs.setdefault(child, {})
            n = current[1]
            if n not in kept:
                linear, shape = state.tails[child]
                out = linear(state.tail_inputs[linear][n])
                kept[n] = out if shape is None else (out, *[None] * (shape - 1))
            return _clone(kept[n])
        return forward

    for name, mod in record.items():
        if id(mod) in tails_recorded:
            state.tail_inputs.pop(mod, None)  # recorded afresh by this pass
    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in record.items()]
    handles += [child.register_forward_hook(keep(child)) for child in fresh]
    for child in replay:
        child.forward = replayed(child)
    outputs = []
    try:
        with torch.no_grad():
            for n, (h, kw, v) in enumerate(zip(hiddens, kwargs, valid)):
                current[:] = [v, n]
                try:
                    outputs.append(state.layer(h, **kw))
                except Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
        for child in replay:
            del child.forward
    # kept only when the child ran exactly once per batch (a pass that stopped before or inside it keeps nothing)
    state.outputs.update({child: outs for child, outs in fresh.items()
                          if len(outs) == n_batches and all(o is not None for o in outs.values())})
    return {name: torch.cat(r) for name, r in rows.items()}, outputs
