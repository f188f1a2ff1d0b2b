"""The Ollama Modelfile written beside the GGUF files, derived from the model's own chat template.

Nothing is written per architecture: the chat template is rendered (with transformers, as in training)
for conversations whose contents are sentinels, and the text around each message is read off: what
starts the conversation, each role's prefix and suffix, and the generation prompt. The result is checked
by composing those pieces for other conversations (with and without a system turn, several turns, with
and without a generation prompt) and comparing with the template's own rendering; only a template that
passes is turned into a Go ``TEMPLATE`` (every literal written as a quoted Go string, so no whitespace
rule of Go templates can change it). Stop tokens are the special tokens that end an assistant turn.

BOS: when the GGUF sets ``add_bos_token`` (``train.gguf_tokenizer.starts_with_bos``), Ollama adds BOS
itself, so the TEMPLATE leaves the template's leading BOS out -- BOS once, as in training.

A template that does not decompose per message (a system prompt folded into the first user turn, turns
that depend on their position) gets no TEMPLATE line and a comment saying why; Ollama then falls back to
the template stored in the GGUF. Go templates cannot trim text: when the chat template trims message
content, the Modelfile says so (send trimmed messages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ConfigError
from train.gguf_tokenizer import starts_with_bos

ROLES = ("system", "user", "assistant")


@dataclass
class TemplateParts:
    begin: str  #: text before the first message (the leading BOS left out when llama.cpp adds it)
    prefix: dict[str, str] = field(default_factory=dict)
    suffix: dict[str, str] = field(default_factory=dict)
    generation: str = ""  #: appended after the last message when a reply is asked for
    trims_content: bool = False

    def render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return self.begin + body + (self.generation if generation_prompt else "")


class NotDerivable(ConfigError):
    pass


def _sentinel(role: str, i: int) -> str:
    return f"zq{role[0]}{i}sentinelzq"


def _render(tokenizer: Any, template: str, messages: list[dict[str, str]], *, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)


def _pieces(text: str, contents: list[str]) -> list[str]:
    """The text around each content, in order (len(contents) + 1 pieces)."""
    out, rest = [], text
    for c in contents:
        if c not in rest:
            raise NotDerivable("Modelfile: the chat template changes message content", received=c,
                               fix="see docs/train.md (Ollama)")
        head, rest = rest.split(c, 1)
        out.append(head)
    return out + [rest]


def _strip_end(text: str, tail: str, what: str) -> str:
    if not text.endswith(tail):
        raise NotDerivable(f"Modelfile: the chat template's {what} depends on its neighbours", received=text,
                           expected=f"... ending with {tail!r}")
    return text[: len(text) - len(tail)]


def _strip_start(text: str, head: str, what: str) -> str:
    if not text.startswith(head):
        raise NotDerivable(f"Modelfile: the chat template's {what} depends on its neighbours", received=text,
                           expected=f"{head!r} ...")
    return text[len(head):]


def _conv(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "content": _sentinel(r, i)} for i, r in enumerate(roles)]


#: conversations the derived pieces must reproduce exactly (with and without the generation prompt)
CHECKS = [("user",), ("system", "user"), ("user", "assistant", "user"), ("system", "user", "assistant", "user"),
          ("user", "assistant", "user", "assistant"), ("system", "user", "assistant", "user", "assistant", "user")]


def derive_template(tokenizer: Any, template: str | None = None) -> TemplateParts:
    """The per-message pieces of the chat template, checked against its own rendering (``NotDerivable`` if not)."""
    template = template if template is not None else tokenizer.chat_template
    if not template:
        raise NotDerivable("Modelfile: the tokenizer has no chat template")
    render = lambda roles, gen: _render(tokenizer, template, _conv(*roles), gen=gen)  # noqa: E731
    try:
        r0, suffix_user = _pieces(render(("user",), False), [_sentinel("user", 0)])
        full = _pieces(render(("system", "user", "assistant", "user", "assistant"), False),
                       [m["content"] for m in _conv("system", "user", "assistant", "user", "assistant")])
        gen_tail = _pieces(render(("user",), True), [_sentinel("user", 0)])[1]
    except NotDerivable:
        raise
    except Exception as exc:  # a template that refuses these conversations (e.g. raise_exception on roles)
        raise NotDerivable("Modelfile: the chat template does not render plain system/user/assistant turns",
                           received=f"{type(exc).__name__}: {exc}") from exc
    bos = tokenizer.bos_token or ""
    begin = bos if bos and r0.startswith(bos) else ""
    prefix_user = r0[len(begin):]
    parts = TemplateParts(begin=begin)
    parts.prefix["user"] = prefix_user
    parts.suffix["user"] = suffix_user
    parts.prefix["system"] = _strip_start(full[0], begin, "start")
    parts.suffix["system"] = _strip_end(full[1], prefix_user, "system turn")
    parts.prefix["assistant"] = _strip_start(full[2], suffix_user, "assistant turn")
    parts.suffix["assistant"] = _strip_end(full[3], prefix_user, "assistant turn")
    parts.generation = _strip_start(gen_tail, suffix_user, "generation prompt")
    for roles in CHECKS:
        for gen in (False, True):
            want = render(roles, gen)
            if parts.render(_conv(*roles), generation_prompt=gen) != want:
                raise NotDerivable("Modelfile: the chat template does not decompose into per-message pieces",
                                   received=f"roles {roles}, generation prompt {gen}: {want[:200]!r}")
    padded = [{"role": r, "content": f"  {_sentinel(r, i)} "} for i, r in enumerate(("system", "user", "assistant"))]
    text = _render(tokenizer, template, padded, gen=False)
    parts.trims_content = any(m["content"] not in text for m in padded)
    if starts_with_bos(tokenizer, template) and parts.begin.startswith(bos):
        parts.begin = parts.begin[len(bos):]  # llama.cpp / Ollama add BOS (tokenizer.ggml.add_bos_token)
    return parts


def _go(text: str) -> str:
    """A Go template action printing ``text`` exactly (a quoted Go string; JSON's escapes are Go's)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(parts: TemplateParts) -> str:
    """The Ollama TEMPLATE: ``.Messages`` rendered with the derived pieces, then the generation prompt."""
    branches = []
    for role in ROLES:
        keyword = "if" if not branches else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_go(parts.prefix[role])}{{{{ .Content }}}}'
                        f"{_go(parts.suffix[role])}")
    return _go(parts.begin) + "{{ range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + _go(parts.generation)


def stop_tokens(tokenizer: Any, parts: TemplateParts) -> list[str]:
    """The special tokens that end an assistant turn (its suffix), in order; else the EOS token."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer(parts.suffix["assistant"], add_special_tokens=False)["input_ids"] if i in special]
    names = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(ids)))
    return names or ([tokenizer.eos_token] if tokenizer.eos_token else [])


def ollama_modelfile(*, gguf_name: str, tokenizer: Any, system: str | None, template: str | None = None,
                     adapter_name: str | None = None) -> str:
    """``adapter_name``: a LoRA adapter GGUF Ollama applies on top of ``gguf_name`` (``ADAPTER``)."""
    lines = [f"FROM ./{gguf_name}", *([f"ADAPTER ./{adapter_name}"] if adapter_name else []), ""]
    try:
        parts = derive_template(tokenizer, template)
    except NotDerivable as exc:
        lines += [f"# No TEMPLATE: {exc.message} -- Ollama reads the chat template stored in the GGUF "
                  "(tokenizer.chat_template)."]
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    else:
        if parts.trims_content:
            lines.append("# The chat template trims message content; a Go TEMPLATE cannot: send trimmed messages.")
        lines += ['TEMPLATE """' + go_template(parts) + '"""']
        stops = stop_tokens(tokenizer, parts)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
